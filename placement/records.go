package placement

import (
	"encoding/binary"
	"encoding/json"
	"errors"
	"fmt"
	"maps"
	"reflect"
	"slices"
	"time"

	recordjson "github.com/segmentio/encoding/json"
)

// Record encodings of allocations and tasks, the bulk of what every server
// writes: one of each per placement, in the Raft entry and in badger (where
// task records go by chunks of a job's tasks, taskchunks.go).
//
// An allocation is stored normalized, as Nomad does since 0.9: the record
// carries the allocation's own fields (IDs, job version, machine, statuses)
// and every server fills the task spec (artifact, resources, args, env,
// restart, isolation, check, band) in from the job's record of that version,
// which it holds already (the current version or one of Job.History). That
// spec is fixed per version (specEqual decides when a submission makes a new
// one). An allocation whose version the job no longer holds, or whose spec
// differs from it, is stored whole, as JSON; when a version leaves a job's
// history, its remaining allocations are written again (keepAllocsDecodable),
// so that badger never holds a normalized allocation its job cannot fill in.
//
// Tasks are stored in binary. JSON records (the format before this one) are
// still read: a value starting with '{' is JSON.
const (
	recAllocNormalized = 0xA1
	recTaskBinary      = 0xB1
)

// allocSpecMatches says whether a's spec (what fillSpec sets) is job version j's.
func allocSpecMatches(a *Alloc, j *Job) bool {
	return a.Band == j.Priority && a.Artifact == j.Artifact && a.Digest == j.Digest &&
		a.Resources == j.Resources && a.Restart == j.Restart && a.Isolation == j.Isolation &&
		slices.Equal(a.Args, j.Args) && maps.Equal(a.Env, j.Env) &&
		(a.Check == j.Check || a.Check != nil && j.Check != nil && reflect.DeepEqual(*a.Check, *j.Check))
}

// fillSpec sets an allocation's spec from its job version (shared, as newAlloc
// shares them: nothing changes them in place).
func fillSpec(a *Alloc, j *Job) {
	a.Band, a.Artifact, a.Digest, a.Resources = j.Priority, j.Artifact, j.Digest, j.Resources
	a.Args, a.Env, a.Restart, a.Isolation, a.Check = j.Args, j.Env, j.Restart, j.Isolation, j.Check
}

func appendString(b []byte, s string) []byte {
	return append(binary.AppendUvarint(b, uint64(len(s))), s...)
}

// Flags of a normalized allocation.
const (
	afAllowRollback = 1 << iota
	afOOMKilled
	afExitCode
	afHealthy
	afHealthyTrue
)

// appendAlloc encodes a as a record: normalized when spec, the job version
// it names, holds its spec, else JSON.
func appendAlloc(b []byte, a *Alloc, spec *Job) ([]byte, error) {
	if spec == nil || spec.Version != a.JobVersion || !allocSpecMatches(a, spec) {
		js, err := json.Marshal(a)
		if err != nil {
			return nil, err
		}
		return append(b, js...), nil
	}
	b = append(b, recAllocNormalized)
	b = appendString(b, a.ID)
	b = appendString(b, a.Job)
	b = binary.AppendUvarint(b, uint64(a.TaskIndex))
	b = binary.AppendUvarint(b, a.JobVersion)
	b = appendString(b, a.NodeID)
	b = binary.AppendVarint(b, int64(a.MinHealthyTime))
	b = binary.AppendVarint(b, int64(a.HealthyDeadline))
	var flags byte
	if a.AllowRollback {
		flags |= afAllowRollback
	}
	if a.OOMKilled {
		flags |= afOOMKilled
	}
	if a.ExitCode != nil {
		flags |= afExitCode
	}
	if a.Healthy != nil {
		flags |= afHealthy
		if *a.Healthy {
			flags |= afHealthyTrue
		}
	}
	b = append(b, flags)
	if a.ExitCode != nil {
		b = binary.AppendVarint(b, int64(*a.ExitCode))
	}
	b = appendString(b, a.DesiredStatus)
	b = appendString(b, a.DesiredDescription)
	b = appendString(b, a.ClientStatus)
	b = appendString(b, a.Message)
	b = binary.AppendUvarint(b, uint64(a.Restarts))
	b = appendString(b, a.Health)
	b = appendString(b, a.Replaces)
	// MarshalBinary keeps the zone offset, as JSON does.
	ts, err := a.CreatedAt.MarshalBinary()
	if err != nil {
		return nil, fmt.Errorf("allocation %s: %w", a.ID, err)
	}
	b = appendBytes(b, ts)
	b = binary.AppendUvarint(b, a.CreateIndex)
	b = binary.AppendUvarint(b, a.ModifyIndex)
	return b, nil
}

// specLookup finds version v of a job, nil when it is not held.
type specLookup func(job string, v uint64) *Job

// cellSpec looks versions up in a cell's jobs.
func cellSpec(c *Cell) specLookup {
	return func(job string, v uint64) *Job {
		if js := c.jobs[job]; js != nil {
			return js.version(v)
		}
		return nil
	}
}

// decodeAlloc reads an allocation record, either encoding.
func decodeAlloc(raw []byte, spec specLookup) (*Alloc, error) {
	a := &Alloc{}
	if len(raw) == 0 || raw[0] != recAllocNormalized {
		if err := recordjson.Unmarshal(raw, a); err != nil {
			return nil, err
		}
		return a, nil
	}
	r := &reader{b: raw[1:]}
	a.ID = string(r.bytes())
	job := r.bytes()
	a.TaskIndex = int(r.uvarint())
	a.JobVersion = r.uvarint()
	var j *Job
	if r.err == nil {
		j = spec(string(job), a.JobVersion)
	}
	if j == nil {
		if r.err != nil {
			return nil, r.err
		}
		return nil, fmt.Errorf("allocation %s: job %s has no version %d to fill it in from", a.ID, job, a.JobVersion)
	}
	a.Job = j.Name
	fillSpec(a, j)
	a.NodeID = string(r.bytes())
	a.MinHealthyTime = time.Duration(r.varint())
	a.HealthyDeadline = time.Duration(r.varint())
	flags := r.byte()
	a.AllowRollback, a.OOMKilled = flags&afAllowRollback != 0, flags&afOOMKilled != 0
	if flags&afExitCode != 0 {
		code := int(r.varint())
		a.ExitCode = &code
	}
	if flags&afHealthy != 0 {
		v := flags&afHealthyTrue != 0
		a.Healthy = &v
	}
	a.DesiredStatus = intern(r.bytes())
	a.DesiredDescription = string(r.bytes())
	a.ClientStatus = intern(r.bytes())
	a.Message = string(r.bytes())
	a.Restarts = int(r.uvarint())
	a.Health = intern(r.bytes())
	a.Replaces = string(r.bytes())
	if ts := r.bytes(); r.err == nil {
		if err := a.CreatedAt.UnmarshalBinary(ts); err != nil {
			return nil, fmt.Errorf("allocation %s: created_at: %w", a.ID, err)
		}
	}
	a.CreateIndex = r.uvarint()
	a.ModifyIndex = r.uvarint()
	if r.err != nil {
		return nil, fmt.Errorf("allocation %s: %w", a.ID, r.err)
	}
	if len(r.b) != 0 {
		return nil, fmt.Errorf("allocation %s: %d bytes past the record", a.ID, len(r.b))
	}
	return a, nil
}

// intern returns the constant for the statuses a record repeats, sparing an
// allocation per field.
func intern(b []byte) string {
	switch string(b) {
	case "":
		return ""
	case DesiredRun:
		return DesiredRun
	case DesiredStop:
		return DesiredStop
	case ClientPending:
		return ClientPending
	case ClientRunning:
		return ClientRunning
	case ClientComplete:
		return ClientComplete
	case ClientFailed:
		return ClientFailed
	case HealthStarting:
		return HealthStarting
	case HealthHealthy:
		return HealthHealthy
	case HealthUnhealthy:
		return HealthUnhealthy
	case TaskPlaced:
		return TaskPlaced
	case TaskDone:
		return TaskDone
	}
	return string(b)
}

// appendTask encodes a task record in binary.
func appendTask(b []byte, t *Task) []byte {
	b = append(b, recTaskBinary)
	b = appendString(b, t.Job)
	b = binary.AppendUvarint(b, uint64(t.Index))
	b = appendString(b, t.State)
	b = appendString(b, t.AllocID)
	b = appendString(b, t.Reason)
	return binary.AppendUvarint(b, uint64(t.Failures))
}

// decodeTask reads a task record, either encoding. jobName, if it names the
// task's job, is used instead of a fresh copy of the name.
func decodeTask(raw []byte, jobName string) (*Task, error) {
	t := &Task{}
	if len(raw) == 0 || raw[0] != recTaskBinary {
		if err := recordjson.Unmarshal(raw, t); err != nil {
			return nil, err
		}
		return t, nil
	}
	r := &reader{b: raw[1:]}
	if job := r.bytes(); string(job) == jobName {
		t.Job = jobName
	} else {
		t.Job = string(job)
	}
	t.Index = int(r.uvarint())
	t.State = intern(r.bytes())
	t.AllocID = string(r.bytes())
	t.Reason = string(r.bytes())
	t.Failures = int(r.uvarint())
	if r.err != nil {
		return nil, r.err
	}
	if len(r.b) != 0 {
		return nil, errors.New("bytes past the task record")
	}
	return t, nil
}

// keepAllocsDecodable writes again, whole, the allocations of versions the job
// no longer holds (a new version pushed the oldest out of its history): their
// normalized records could no longer be filled in.
func (c *Cell) keepAllocsDecodable(js *jobState) {
	if c.ch == nil || len(js.History) < MaxHistory {
		return // nothing left the history
	}
	for _, a := range js.allocs {
		if js.version(a.JobVersion) == nil {
			c.ch.allocs[a.ID] = a
		}
	}
}
