// Package launcher starts verified artifacts as isolated tasks on this machine:
// whales in their own cgroup and namespaces through a re-executed init, images
// through runc. It watches them, restarts them by policy, keeps their logs,
// and adopts its running tasks again after it restarts itself.
//
// # How a task runs
//
// Start verifies the artifact (Verifier: blob re-hashed, envelope checked
// against the trust policy) before anything else exists; a refusal leaves
// no record, directory, cgroup or process behind. Then, for a whale:
//
//	launcher ──exec /proc/self/exe (shim mode, own session)──▶ shim
//	shim ──clone(NEWUSER|NEWPID|NEWNS|NEWUTS|NEWIPC[|NEWNET]) + exec self (init mode)──▶ init
//	shim: writes init's PID to the task cgroup's cgroup.procs, then sends
//	      init the run config and the verified whale's descriptor (a sealed
//	      memfd the launcher filled once per digest: staged.go) on the sync
//	      socket (SCM_RIGHTS)
//	init: uid 0 of its own user namespace (ids 0..65535 are a block of the
//	      node's subordinate range, one per running task: userns.go), makes
//	      mounts private, builds a read-only tmpfs root (/proc of the new PID
//	      namespace, null, zero, full, random, urandom, a private /tmp, /etc
//	      with hosts, resolv.conf and hostname: the host's, or loopback-only
//	      for network none; /proc/sys and friends read-only, kcore, keys and
//	      the like masked), pivot_root, hostname, rlimits, no_new_privs,
//	      empties the bounding/ambient/inheritable capability sets,
//	      setgroups/setgid/setuid, loads the default seccomp filter
//	      (seccomp.go: EPERM for Docker's deny list) and execveat(fd) of the
//	      verified whale. Start returns when the exec pipe closes (success)
//	      or carries init's error.
//
// One shim is kept warm, with its init already cloned into fresh namespaces
// and waiting, so a start pays for neither process start-up.
//
// An image is unpacked once per digest (from the descriptor that was hashed;
// mutate.Extract, through os.Root so nothing escapes the rootfs; fsynced; its
// tree digest recorded and checked before every start) and run by the shim
// as `runc create` + `runc start` with a generated config.json carrying the
// same limits, user namespace and seccomp filter. With a user namespace the
// shim runs in a mount namespace of its own and shows runc the image root
// idmapped into the task's ids (or a chowned copy where the kernel lacks
// idmapped mounts). The shim is a child subreaper, so the container's first
// process becomes its child.
//
// The shim is what survives the launcher: it is the task's parent, so it
// gets the real exit status, reads the memory cgroup's oom_kill counter, and
// writes both to exit.json; and it is the only writer of the task's log
// (stdout and stderr come on two pipes and are written as tagged lines of one
// file, so each stream can be read alone), so it rotates by size with renames
// (log, log.1, ...) and nothing is lost between a copy and a truncate. A
// launcher that is killed and restarted finds its tasks in badger (PID and
// start time of task and shim, so a reused PID is not mistaken for them),
// watches adopted shims through pidfds, and reads exit.json of those that
// ended meanwhile.
//
// # Health
//
// A task whose spec carries a HealthSpec (the agent gives every allocation
// one) has its check run every interval while it runs: an HTTP GET or a TCP
// connect to 127.0.0.1:PORT, from inside the task's network namespace when
// it has one (a thread that entered it makes the socket), or a command run
// inside the task (runc exec for images; nsenter and the static binary
// itself, dropping to the task's user and filter, for whales: see
// health_exec.go). PORT is fixed or read from an environment variable the
// launcher fills with a free port when the spec leaves it unset; it lives in
// the spec, so restarts and a restarted launcher keep it. Failures checks in
// a row make the run unhealthy: it is killed and its end counts as a
// failure for the restart policy. The one-time verdict Healthy (true after
// MinHealthyTime healthy, false on unhealthy, an end or a restart first, or
// past HealthyDeadline) is what the placement service's rollouts read.
//
// # Where things are
//
//	launcher.go   Config, New (defaults, reopening records), Close
//	task.go       what a task is: TaskSpec, Task, states, exit info
//	verify.go     Verifier: the artifact check before every start
//	start.go      Start: validate the spec, write run.json, start the shim
//	warmpool.go   the pool of warm shims whose init already waits in fresh namespaces
//	staged.go     the sealed memfd a whale runs from (a re-hashed copy on disk where memfds cannot be executed); Prune
//	image.go      images: unpack a layer stream into a rootfs
//	cgroup.go     the task's cgroup: limits, usage, oom_kill, kill all
//	supervise.go  watching a run, recording its end, restarting by policy; adopting after a restart
//	health.go     a run's health monitor: health states, the verdict, killing an unhealthy run
//	health_check.go HTTP and TCP checks (in the task's network namespace), check ports
//	health_exec.go exec checks inside the task: runc exec, or nsenter and the re-executed binary
//	control.go    Stop, Wait, Get, List, Remove
//	records.go    task records in badger, snapshots and events
//	logs.go       the log the shim writes with rotation, and reading it back
//	reexec.go     MaybeRunInit and run.json: what the launcher tells its re-executed self
//	shim.go       the shim: forks init, reports the task's PID, waits, writes exit.json
//	shim_oci.go   the shim's runc create + start for images, and the task root it mounts
//	bundle.go     config.json for runc, the unpack per digest and its tree digest
//	seccomp.go    the default seccomp filter, as BPF for whales and for runc
//	userns.go     user namespace id blocks, the kernel probe, idmapped mounts
//	user.go       an image's user by name, from its /etc/passwd and /etc/group
//	init.go       init: PID 1 of the task, drops privileges and execs the whale
//	rootfs.go     init's read-only root: mounts, masked /proc paths, pivot_root
//	proc.go       PID + start time, so that a reused PID is not taken for a task
//	stoprequest.go how a stop is asked for (signal, grace period); the local API that serves tasks is internal/daemon
//	agent.go      the placement agent: assignments in, task states out
package launcher
