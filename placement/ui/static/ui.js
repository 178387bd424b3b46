// Ballena web UI: follow the events stream, list each event in the "Live"
// panel, and refresh the page's <main> from the server when something changes.
// Every page is complete without this script.
(function () {
  "use strict";
  var body = document.body;
  var job = body.dataset.job || "";
  var page = body.dataset.page || "";
  var status = document.getElementById("live-status");
  var index = document.getElementById("cell-index");
  var logs = [document.getElementById("live-log"), document.getElementById("event-log")];
  var types = ["job", "task", "alloc", "node", "release"];
  var timer = null;    // a refresh is scheduled
  var fetching = false; // a refresh is in flight
  var again = false;    // something changed while it was
  var server = "";
  var es = new EventSource("/ui/events/stream" + (job ? "?job=" + encodeURIComponent(job) : ""));

  function say(text) { if (status) { status.textContent = text; } }

  // At most one refresh in flight and one every half second, however busy the
  // cell: a change during a refresh schedules one more.
  function schedule() {
    if (fetching) { again = true; return; }
    if (timer === null) { timer = setTimeout(refresh, 500); }
  }

  function refresh() {
    timer = null;
    fetching = true;
    fetch(location.href, { credentials: "same-origin" }).then(function (r) {
      if (!r.ok) { throw new Error("HTTP " + r.status); }
      return r.text();
    }).then(function (html) {
      var doc = new DOMParser().parseFromString(html, "text/html");
      var fresh = doc.querySelector("main");
      var old = document.querySelector("main");
      if (fresh && old) { old.replaceWith(fresh); }
      if (server) { say("live from server " + server); }
      logs[1] = document.getElementById("event-log");
    }).catch(function (err) { say("refresh failed: " + err.message); }).finally(function () {
      fetching = false;
      if (again) { again = false; schedule(); }
    });
  }

  function add(ev) {
    logs.forEach(function (log) {
      if (!log) { return; }
      var li = document.createElement("li");
      li.className = "ev ev-" + ev.type;
      var t = document.createElement("time");
      t.textContent = new Date(ev.time).toLocaleTimeString();
      li.appendChild(t);
      li.appendChild(document.createTextNode(" " + ev.summary));
      log.insertBefore(li, log.firstChild);
      while (log.children.length > (log.id === "event-log" ? 500 : 40)) { log.removeChild(log.lastChild); }
    });
  }

  es.addEventListener("ready", function (m) {
    var ev = JSON.parse(m.data);
    server = ev.key;
    say("live from server " + server);
    body.dataset.live = "yes";
  });
  types.forEach(function (type) {
    es.addEventListener(type, function (m) {
      var ev = JSON.parse(m.data);
      add(ev);
      if (index) { index.textContent = ev.index; }
      if (page !== "events") { schedule(); }
    });
  });
  es.addEventListener("lost", function () { say("fell behind; reconnecting"); schedule(); });
  es.onerror = function () {
    body.dataset.live = "no";
    say(es.readyState === EventSource.CLOSED ? "disconnected: reload the page" : "reconnecting…");
  };
})();
