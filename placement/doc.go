// Package placement decides which machine runs which task, Borg style: it keeps the
// cell's state (machines, jobs, tasks, allocations, evaluations) in badger, checks
// feasibility, ranks machines, reconciles what should run with what does, and serves
// an HTTP/JSON API under /v1/ for admins and for the launchers on each machine.
//
// Files: cell.go holds the in-memory state and the free-resource index;
// feasible.go the feasibility checks; rank.go the scoring; schedule.go the
// placement of tasks and preemption; reconcile.go what to stop and what to place
// for a job; ops.go the operations (submit, stop, register, heartbeat, drain,
// node loss, revocation); store.go badger; replicate.go what a Raft entry carries
// and how every server applies it (to badger and its Cell) and snapshots it;
// records.go the encoding of allocations (normalized: the spec comes from the
// job version) and tasks; taskchunks.go task records in badger, 64 per key;
// raft.go Raft (mutual-TLS transport, joining and bootstrapping a cell, the
// state machine); server.go opening and closing a server; commit.go the leader's
// write path (operations computed on its working state, group-committed, many per
// entry); plan.go plans (read-only, against the state) and their application
// (checked again against the latest state); broker.go the queue of evaluations;
// worker.go the workers and the plan applier; leader.go leadership and the heartbeat TTLs held in the leader's memory;
// api_http.go the HTTP server, routes, forwarding to the leader and answers;
// api_guards.go the credentials each route needs; api_jobs.go, api_nodes.go and
// api_cell.go the endpoints; client.go the client, which moves along a list of
// servers. cellca/ is the cell's CA.
//
// Endpoints (errors are {"error": "..."} with a meaningful status; 503 when no
// leader or no quorum can be reached, 413 over the 8 MiB body cap):
//
//	GET    /v1/status                                    admin token; this server's view
//	GET    /v1/jobs, /v1/jobs/{name}                     admin token
//	POST   /v1/jobs[?index=N]                            admin token; N: compare-and-set on the job's modify index
//	DELETE /v1/jobs/{name}                               admin token
//	GET    /v1/nodes                                     admin token
//	POST   /v1/nodes/{id}/drain        {"enable": bool}  admin token
//	POST   /v1/nodes/{id}/revoke                         admin token
//	POST   /v1/nodes/register                            join token and signed by the node key
//	POST   /v1/nodes/{id}/heartbeat                      signed by node {id}
//	GET    /v1/nodes/{id}/allocations?index=N&wait=30s   signed by node {id}; long-poll; served by any server
//	POST   /v1/nodes/{id}/allocations/{alloc}/state      signed by node {id}
//	GET    /v1/cell/self, /v1/cell/members               admin token
//	POST   /v1/cell/remove             {"name": "s3"}    admin token
//	GET    /v1/cell/backup                               admin token; the committed state, snapshot format
//
// Every request is authenticated, from anywhere, before its body is read. Writes
// and reads of jobs and nodes run on the leader (a follower forwards them); the
// leader answers only with committed state. Node signatures are described beside
// HeaderSignature.
package placement
