// Package placement decides which machine runs which task, Borg style: it keeps the
// cell's state (machines, jobs, tasks, allocations, evaluations) in badger, checks
// feasibility, ranks machines, reconciles what should run with what does, and serves
// an HTTP/JSON API under /v1/ for admins and for the launchers on each machine.
//
// Files: cell.go holds the in-memory state and the free-resource index;
// feasible.go the feasibility checks; rank.go the scoring; schedule.go the
// placement of tasks and preemption; reconcile.go what to stop and what to place
// for a job; ops.go the operations (submit, stop, register, heartbeat, drain,
// node loss); store.go badger; server.go and client.go the API.
//
// Endpoints (errors are {"error": "..."} with a meaningful status):
//
//	GET    /v1/status                                    open on loopback
//	GET    /v1/jobs, /v1/jobs/{name}                     open on loopback
//	POST   /v1/jobs[?index=N]                            admin token; N: compare-and-set on the job's modify index
//	DELETE /v1/jobs/{name}                               admin token
//	GET    /v1/nodes                                     open on loopback
//	POST   /v1/nodes/{id}/drain        {"enable": bool}  admin token
//	POST   /v1/nodes/register                            join token and signed by the node key
//	POST   /v1/nodes/{id}/heartbeat                      signed by node {id}
//	GET    /v1/nodes/{id}/allocations?index=N&wait=30s   signed by node {id}; long-poll
//	POST   /v1/nodes/{id}/allocations/{alloc}/state      signed by node {id}
//
// Reads from other than loopback need the admin token. Node signatures are
// described beside HeaderSignature.
package placement
