# Ballena. `make demo` is the first thing to run; `make test` is what CI runs.
GO      ?= go
BIN     := bin/ballena
PKGS    := ./...
export CGO_ENABLED := 0

.PHONY: build test test-short demo run clean bench-verify bench-launch bench-swarm sim ui-screenshots

build: ## static binary at bin/ballena
	$(GO) build -trimpath -ldflags='-s -w' -o $(BIN) ./cmd/ballena
	@! readelf -lW $(BIN) | grep -q INTERP || { echo "$(BIN) is not static"; exit 1; }

# The concurrent packages run under the race detector. It needs cgo, for this test
# run only: the shipped binary (build) stays static.
# The swarm's tests run alone first: their transfers have deadlines (a ban, a
# stall), and on two cores shared with the launcher's and the CLI's suites under
# the race detector they were starved past them.
RACE_SOLO := ./swarm/...
RACE_PKGS := ./launcher/... ./placement/... ./cmd/...
# Root is needed for cgroup, namespace and runc tests; they skip with a reason otherwise.
test: build ## every test, fuzz seed corpora included; go.mod must be tidy
	$(GO) mod tidy -diff
	$(GO) vet $(PKGS)
	$(GO) test -count=1 -timeout 15m $$($(GO) list $(PKGS) | grep -v -e /swarm -e /launcher -e /placement -e /cmd/)
	CGO_ENABLED=1 $(GO) test -race -count=1 -timeout 15m $(RACE_SOLO)
	CGO_ENABLED=1 $(GO) test -race -count=1 -timeout 15m $(RACE_PKGS)

test-short:
	$(GO) test -count=1 -short $(PKGS)

# The demo runs in a throwaway dir: a key, the sample whale (testdata/hello) built
# static, published, inspected and verified against a trust policy.
DEMO := .demo
demo: build ## build, make a key, publish the sample whale, verify it
	rm -rf $(DEMO) && mkdir -p $(DEMO)
	$(GO) build -trimpath -o $(DEMO)/hello ./testdata/hello
	cd $(DEMO) && export BALLENA_DATA=$$PWD/data && B=../$(BIN) && \
	$$B key generate release && \
	$$B publish --key release.key --name hello --version 1.0.0 ./hello && \
	printf 'keys:\n  - path: release.pub\n    names: ["hello"]\n' > trust.yaml && \
	$$B ls && $$B inspect hello@1.0.0 && \
	$$B verify --trust trust.yaml hello@1.0.0 && \
	$$B sign --key release.key --name hello --version 1.0.0 ./hello && \
	$$B verify --pub release.pub --envelope hello.dsse.json ./hello

bench-verify: ## sha256 + signature verification throughput on a 1 GiB blob
	$(GO) test -run '^$$' -bench BenchmarkVerify1GiB -benchtime 3x ./artifact/

bench-launch: ## launch latency p50/p99 of a whale (200 launches) beside runc run of the same binary; root
	$(GO) test -run '^$$' -bench BenchmarkLaunch -benchtime 1x -timeout 30m ./launcher/

# First one seed → one leecher, 1 GiB, no caps, with and without --psk: each role's
# CPU-seconds per GiB and throughput, beside one plain HTTP server, aria2c fetching
# from the seed's --bt-listen and libtorrent (if python3-libtorrent is installed).
# Flags: BENCH_SINGLE_FLAGS='-size 1024 -psk both -perf DIR' (add -perf-stat for perf stat's counts instead of samples).
# Then one seed and N leechers as separate processes on loopback, each capped at U MiB/s
# up and down, spreading one F MiB artifact; against the fluid bound and one HTTP server.
# Flags: BENCH_SWARM_FLAGS='-n 16 -size 256 -cap 16 -json'.
# Every node is a `ballena node` process; the seed publishes, leechers run `ballena fetch`.
bench-swarm: build ## swarm CPU per GiB and spread time vs the fluid bound, HTTP, aria2c, libtorrent
	$(GO) build -o bin/benchswarm ./swarm/benchswarm
	bin/benchswarm -ballena $(BIN) -single -size 1024 $(BENCH_SINGLE_FLAGS)
	bin/benchswarm -ballena $(BIN) $(BENCH_SWARM_FLAGS)

# The swarm simulator (swarm/sim, its README): every scenario of the README, one after
# another (about an hour on 2 cores; SIM_FLAGS='-only racks' runs one), its table on
# stdout and its PNG plots in swarm/sim/. One spread: bin/ballena-sim -n 1000 -size 1024 -up 119.2
sim: ## swarm simulator: the README's scenarios, their table and plots
	$(GO) build -o bin/ballena-sim ./cmd/ballena-sim
	bin/ballena-sim -scenarios -out swarm/sim $(SIM_FLAGS)

# The whole system on one machine: `ballena dev` (placement server + node), a key,
# the sample whale published, a job of 2 tasks placed, fetched, verified, started in
# cgroups, and both answering on their ports. Needs root for cgroups and namespaces.
RUN := .run
run: build ## the embedded cluster: publish, place and run the sample service
	@rm -rf $(RUN) && mkdir -p $(RUN)
	$(GO) build -trimpath -o $(RUN)/hello ./testdata/hello
	@set -e; cd $(RUN); B=../$(BIN); export BALLENA_DATA=$$PWD/dev/node BALLENA_SERVER=https://127.0.0.1:7480 BALLENA_CA=$$PWD/dev/server/ca.pem; \
	$$B dev --dir $$PWD/dev --metrics-listen 127.0.0.1:9465 > dev.log 2>&1 & DEV=$$!; trap 'kill $$DEV 2>/dev/null; wait $$DEV 2>/dev/null' EXIT; \
	for i in $$(seq 100); do [ -S dev/node/ballena.sock ] && break; sleep 0.1; done; \
	export BALLENA_TOKEN=$$(cat dev/server/admin.token); \
	grep -E "^ballena dev:|^point the other|^  export " dev.log; \
	$$B key generate release; \
	printf 'keys:\n  - path: %s/release.pub\n    names: ["hello"]\n' "$$PWD" > dev/node/trust.yaml; \
	$$B publish --key release.key --name hello --version 1.0.0 ./hello; \
	for i in $$(seq 100); do $$B nodes --json 2>/dev/null | grep -q '"status": "ready"' && break; sleep 0.1; done; \
	$$B job run ../testdata/hello.yaml; \
	for i in $$(seq 100); do $$B job status --json hello | grep -q '"running": 2' && break; sleep 0.2; done; \
	$$B job status hello; $$B ps; \
	curl -fsS --retry 20 --retry-connrefused --retry-delay 1 --max-time 5 http://127.0.0.1:18080/ && curl -fsS --retry 20 --retry-connrefused --retry-delay 1 --max-time 5 http://127.0.0.1:18081/; \
	echo "metrics (Prometheus text format): http://127.0.0.1:9465/metrics"; \
	curl -fsS http://127.0.0.1:9465/metrics | grep -E '^ballena_(launcher_starts_total|placement_tasks\{band="prod",state="placed"\}|swarm_releases_held) '; \
	echo "web UI: a one-time login URL opens it (a fresh one from: ballena ui --url); checking one with curl:"; \
	curl -fsS --cacert dev/server/ca.pem -c ui.cookies -b ui.cookies -L "$$($$B ui --url)" | grep -Eo 'id="task-[0-9]+" class="state-[a-z]+"'; \
	echo "web UI login URL (works once, for 5 minutes; trust dev/server/ca.pem in the browser): $$($$B ui --url)"; \
	if [ -n "$(HOLD)" ]; then echo "HOLD is set: the cluster runs until Ctrl-C"; wait $$DEV || true; fi; \
	echo "make run: done; stopping the dev cluster (its log is $(RUN)/dev.log)"

# Screenshots of the web UI for the README, taken by the browser test (root, chromium).
ui-screenshots: ## docs/ui-*.png: the web UI of a real cell in headless Chromium
	BALLENA_UI_SCREENSHOTS=$(CURDIR)/docs $(GO) test -count=1 -timeout 5m -run 'TestUIInBrowser$$' ./cmd/ballena

clean:
	rm -rf bin .demo .run
