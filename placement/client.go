package placement

import (
	"bytes"
	"context"
	"crypto/ed25519"
	"crypto/tls"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/url"
	"strconv"
	"strings"
	"sync/atomic"
	"time"
)

// Client talks to a placement server: as an admin (NewClient) or as a machine's
// launcher (NewNodeClient), which signs every request with the node key.
type Client struct {
	servers []string // base URLs; the client moves along the list on failure
	cur     atomic.Int32
	hc      *http.Client
	token   string // admin token, or join token for a node client
	nodeKey ed25519.PrivateKey
	nodeID  string
	// Now is the clock used to sign node requests; time.Now if nil.
	Now func() time.Time
	// FailoverWait bounds how long a request keeps trying the servers of the list
	// while none answers or none knows a leader (default 15s; the context may end
	// it sooner).
	FailoverWait time.Duration
}

// ClientOption configures a Client.
type ClientOption func(*Client)

// WithTLS makes the client verify the servers with cfg (the cell CA; see
// cellca.ClientConfig).
func WithTLS(cfg *tls.Config) ClientOption {
	return func(c *Client) {
		c.hc.Transport = &http.Transport{TLSClientConfig: cfg, ForceAttemptHTTP2: true,
			Proxy: nil, DialContext: (&net.Dialer{Timeout: 5 * time.Second}).DialContext,
			TLSHandshakeTimeout: 5 * time.Second, IdleConnTimeout: 90 * time.Second, MaxIdleConnsPerHost: 8}
	}
}

// ParseServers splits a comma-separated list of server URLs and checks each.
func ParseServers(list string) ([]string, error) {
	var out []string
	for _, s := range strings.Split(list, ",") {
		s = strings.TrimSpace(s)
		if s == "" {
			continue
		}
		u, err := url.Parse(s)
		if err != nil || (u.Scheme != "http" && u.Scheme != "https") || u.Host == "" {
			return nil, fmt.Errorf("server URL %q: want https://host:port", s)
		}
		out = append(out, strings.TrimRight(s, "/"))
	}
	if len(out) == 0 {
		return nil, errors.New("no placement server URL given")
	}
	return out, nil
}

// APIError is an error answer from the server.
type APIError struct {
	Status  int
	Message string
}

func (e *APIError) Error() string { return e.Message }

// IsNotFound reports whether err is the server saying a job, node or allocation
// does not exist.
func IsNotFound(err error) bool {
	var ae *APIError
	return errors.As(err, &ae) && ae.Status == http.StatusNotFound
}

// IsUnauthorized reports whether the server refused the credentials.
func IsUnauthorized(err error) bool {
	var ae *APIError
	return errors.As(err, &ae) && (ae.Status == http.StatusUnauthorized || ae.Status == http.StatusForbidden)
}

// NewClient returns an admin client of the servers in serverURLs (comma-separated:
// it moves to the next one when a server is unreachable or knows no leader).
func NewClient(serverURLs, adminToken string, opts ...ClientOption) (*Client, error) {
	servers, err := ParseServers(serverURLs)
	if err != nil {
		return nil, err
	}
	// Admin calls are short; a node client's long-polls are bounded by their wait
	// and its context instead.
	c := &Client{servers: servers, hc: &http.Client{Timeout: 2 * time.Minute}, token: adminToken}
	for _, o := range opts {
		o(c)
	}
	return c, nil
}

// NewNodeClient returns the client a launcher uses: it registers with joinToken
// and signs every request with nodeKey, whose libp2p peer ID is the node's ID.
func NewNodeClient(serverURLs, joinToken string, nodeKey ed25519.PrivateKey, opts ...ClientOption) (*Client, error) {
	c, err := NewClient(serverURLs, joinToken, opts...)
	if err != nil {
		return nil, err
	}
	if len(nodeKey) != ed25519.PrivateKeySize {
		return nil, errors.New("node key: not an ed25519 private key")
	}
	id, err := NodeID(nodeKey.Public().(ed25519.PublicKey))
	if err != nil {
		return nil, err
	}
	c.nodeKey, c.nodeID = nodeKey, id
	c.hc.Timeout = 0
	return c, nil
}

// NodeID is the node client's ID (the libp2p peer ID of its key).
func (c *Client) NodeID() string { return c.nodeID }

func (c *Client) now() time.Time {
	if c.Now != nil {
		return c.Now()
	}
	return time.Now()
}

// Server is the URL the client currently talks to.
func (c *Client) Server() string { return c.servers[int(c.cur.Load())%len(c.servers)] }

// do sends a JSON request; signed requests carry the node signature, others the
// token. When a server cannot be reached, or answers that it knows no leader,
// the request goes to the next server of the list, round and round with a short
// pause, for up to FailoverWait.
func (c *Client) do(ctx context.Context, method, path string, in, out any, signed bool) error {
	var body []byte
	if in != nil {
		var err error
		if body, err = json.Marshal(in); err != nil {
			return err
		}
	}
	wait := c.FailoverWait
	if wait <= 0 {
		wait = 15 * time.Second
	}
	deadline := time.Now().Add(wait)
	pause := 100 * time.Millisecond
	var lastErr error
	for attempt := 0; ; attempt++ {
		i := int(c.cur.Load())
		base := c.servers[i%len(c.servers)]
		err, retry := c.once(ctx, base, method, path, body, in != nil, out, signed)
		if err == nil || !retry || ctx.Err() != nil {
			return err
		}
		lastErr = err
		c.cur.CompareAndSwap(int32(i), int32((i+1)%len(c.servers)))
		if time.Now().After(deadline) {
			return lastErr
		}
		if (attempt+1)%len(c.servers) == 0 {
			// Every server tried once: give an election a moment.
			select {
			case <-ctx.Done():
				return lastErr
			case <-time.After(pause):
			}
			pause = min(2*pause, time.Second)
		}
	}
}

// once sends the request to one server; retry says whether another server (or
// a later try) might do better.
func (c *Client) once(ctx context.Context, base, method, path string, body []byte, hasBody bool, out any, signed bool) (error, bool) {
	req, err := http.NewRequestWithContext(ctx, method, base+path, bytes.NewReader(body))
	if err != nil {
		return err, false
	}
	if hasBody {
		req.Header.Set("Content-Type", "application/json")
	}
	if signed {
		if c.nodeKey == nil {
			return errors.New("this request needs a node client (NewNodeClient)"), false
		}
		signRequest(req, c.nodeID, c.nodeKey, c.now(), body)
	}
	if c.token != "" && (!signed || path == "/v1/nodes/register") {
		req.Header.Set("Authorization", "Bearer "+c.token)
	}
	resp, err := c.hc.Do(req)
	if err != nil {
		var ce *tls.CertificateVerificationError
		return fmt.Errorf("placement server %s: %w", base, err), !errors.As(err, &ce)
	}
	defer resp.Body.Close()
	data, err := io.ReadAll(io.LimitReader(resp.Body, 64<<20))
	if err != nil {
		return fmt.Errorf("placement server %s: read answer: %w", base, err), true
	}
	if resp.StatusCode >= 300 {
		var ae apiError
		if json.Unmarshal(data, &ae) != nil || ae.Error == "" {
			ae.Error = strings.TrimSpace(string(data))
			if ae.Error == "" {
				ae.Error = resp.Status
			}
		}
		e := &APIError{Status: resp.StatusCode, Message: ae.Error}
		return e, resp.StatusCode == http.StatusServiceUnavailable || resp.StatusCode == http.StatusBadGateway
	}
	if out != nil {
		if err := json.Unmarshal(data, out); err != nil {
			return fmt.Errorf("placement server %s: decode answer: %w", base, err), false
		}
	}
	return nil, false
}

// Register joins the node to the cell (or rejoins after a restart). Its answer
// says how often to heartbeat, and which reported tasks to kill.
func (c *Client) Register(ctx context.Context, reg NodeRegistration) (*RegisterResponse, []string, error) {
	reg.PublicKey = c.nodeKey.Public().(ed25519.PublicKey)
	var out struct {
		RegisterResponse
		Stop []string `json:"stop"`
	}
	if err := c.do(ctx, http.MethodPost, "/v1/nodes/register", reg, &out, true); err != nil {
		return nil, nil, fmt.Errorf("register node %s: %w", c.nodeID, err)
	}
	return &out.RegisterResponse, out.Stop, nil
}

// Heartbeat reports what the node runs and holds; the answer lists allocations
// it must kill. A not-found error means the node must Register again.
func (c *Client) Heartbeat(ctx context.Context, hb Heartbeat) (*HeartbeatResponse, error) {
	var out HeartbeatResponse
	if err := c.do(ctx, http.MethodPost, "/v1/nodes/"+c.nodeID+"/heartbeat", hb, &out, true); err != nil {
		return nil, fmt.Errorf("heartbeat: %w", err)
	}
	return &out, nil
}

// WatchAllocations returns the node's allocations once their index passes index
// (at once for index 0), or after wait with the same index. Pass the returned
// Index to the next call.
func (c *Client) WatchAllocations(ctx context.Context, index uint64, wait time.Duration) (*AllocationList, error) {
	path := fmt.Sprintf("/v1/nodes/%s/allocations?index=%d&wait=%s", c.nodeID, index, wait)
	var out AllocationList
	if err := c.do(ctx, http.MethodGet, path, nil, &out, true); err != nil {
		return nil, fmt.Errorf("watch allocations: %w", err)
	}
	return &out, nil
}

// ReportTaskState reports one allocation's state at once (between heartbeats).
func (c *Client) ReportTaskState(ctx context.Context, st TaskState) error {
	path := "/v1/nodes/" + c.nodeID + "/allocations/" + url.PathEscape(st.AllocID) + "/state"
	if err := c.do(ctx, http.MethodPost, path, st, nil, true); err != nil {
		return fmt.Errorf("report %s: %w", st.AllocID, err)
	}
	return nil
}

// SubmitJob registers or updates a job and returns the evaluations it caused (the
// job's own first).
func (c *Client) SubmitJob(ctx context.Context, j *Job) (*SubmitResponse, error) {
	return c.submit(ctx, j, "")
}

// SubmitJobAt is SubmitJob that fails with a 409 conflict unless the job is still
// at modifyIndex (0: must not exist yet).
func (c *Client) SubmitJobAt(ctx context.Context, j *Job, modifyIndex uint64) (*SubmitResponse, error) {
	return c.submit(ctx, j, "?index="+strconv.FormatUint(modifyIndex, 10))
}

func (c *Client) submit(ctx context.Context, j *Job, q string) (*SubmitResponse, error) {
	var out SubmitResponse
	if err := c.do(ctx, http.MethodPost, "/v1/jobs"+q, j, &out, false); err != nil {
		return nil, fmt.Errorf("submit job %s: %w", j.Name, err)
	}
	return &out, nil
}

// JobStatus returns a job, its tasks and where they run.
func (c *Client) JobStatus(ctx context.Context, name string) (*JobStatus, error) {
	var out JobStatus
	if err := c.do(ctx, http.MethodGet, "/v1/jobs/"+url.PathEscape(name), nil, &out, false); err != nil {
		return nil, fmt.Errorf("job %s: %w", name, err)
	}
	return &out, nil
}

// Jobs lists the jobs.
func (c *Client) Jobs(ctx context.Context) ([]*Job, error) {
	var out []*Job
	if err := c.do(ctx, http.MethodGet, "/v1/jobs", nil, &out, false); err != nil {
		return nil, fmt.Errorf("list jobs: %w", err)
	}
	return out, nil
}

// StopJob stops every task of a job.
func (c *Client) StopJob(ctx context.Context, name string) (*SubmitResponse, error) {
	var out SubmitResponse
	if err := c.do(ctx, http.MethodDelete, "/v1/jobs/"+url.PathEscape(name), nil, &out, false); err != nil {
		return nil, fmt.Errorf("stop job %s: %w", name, err)
	}
	return &out, nil
}

// JobHistory lists a job's versions, the current one first, with their
// rollouts' outcomes.
func (c *Client) JobHistory(ctx context.Context, name string) ([]VersionInfo, error) {
	var out []VersionInfo
	if err := c.do(ctx, http.MethodGet, "/v1/jobs/"+url.PathEscape(name)+"/history", nil, &out, false); err != nil {
		return nil, fmt.Errorf("history of job %s: %w", name, err)
	}
	return out, nil
}

// PromoteJob lets a rollout waiting on its healthy canaries go on.
func (c *Client) PromoteJob(ctx context.Context, name string) (*SubmitResponse, error) {
	var out SubmitResponse
	if err := c.do(ctx, http.MethodPost, "/v1/jobs/"+url.PathEscape(name)+"/promote", struct{}{}, &out, false); err != nil {
		return nil, fmt.Errorf("promote job %s: %w", name, err)
	}
	return &out, nil
}

// RevertJob makes a new version of the job with version's spec and rolls it out.
func (c *Client) RevertJob(ctx context.Context, name string, version uint64) (*SubmitResponse, error) {
	var out SubmitResponse
	if err := c.do(ctx, http.MethodPost, "/v1/jobs/"+url.PathEscape(name)+"/revert", RevertRequest{Version: version}, &out, false); err != nil {
		return nil, fmt.Errorf("revert job %s to version %d: %w", name, version, err)
	}
	return &out, nil
}

// Nodes lists the machines.
func (c *Client) Nodes(ctx context.Context) ([]NodeInfo, error) {
	var out []NodeInfo
	if err := c.do(ctx, http.MethodGet, "/v1/nodes", nil, &out, false); err != nil {
		return nil, fmt.Errorf("list nodes: %w", err)
	}
	return out, nil
}

// Drain turns draining of a machine on or off; its tasks move a few at a time.
func (c *Client) Drain(ctx context.Context, nodeID string, enable bool) (*SubmitResponse, error) {
	var out SubmitResponse
	if err := c.do(ctx, http.MethodPost, "/v1/nodes/"+url.PathEscape(nodeID)+"/drain", DrainRequest{Enable: enable}, &out, false); err != nil {
		return nil, fmt.Errorf("drain %s: %w", nodeID, err)
	}
	return &out, nil
}

// Revoke takes a node's credentials away: it can no longer heartbeat or receive
// allocations, and its tasks move elsewhere.
func (c *Client) Revoke(ctx context.Context, nodeID string) (*SubmitResponse, error) {
	var out SubmitResponse
	if err := c.do(ctx, http.MethodPost, "/v1/nodes/"+url.PathEscape(nodeID)+"/revoke", nil, &out, false); err != nil {
		return nil, fmt.Errorf("revoke %s: %w", nodeID, err)
	}
	return &out, nil
}

// Members lists the cell's servers and how each is.
func (c *Client) Members(ctx context.Context) ([]Member, error) {
	var out []Member
	if err := c.do(ctx, http.MethodGet, "/v1/cell/members", nil, &out, false); err != nil {
		return nil, fmt.Errorf("list servers: %w", err)
	}
	return out, nil
}

// RemoveServer takes a server out of the cell's Raft configuration.
func (c *Client) RemoveServer(ctx context.Context, name string) error {
	if err := c.do(ctx, http.MethodPost, "/v1/cell/remove", RemoveRequest{Name: name}, nil, false); err != nil {
		return fmt.Errorf("remove server %s: %w", name, err)
	}
	return nil
}

// Status returns the server's summary of the cell (GET /v1/status).
func (c *Client) Status(ctx context.Context) (map[string]any, error) {
	var out map[string]any
	if err := c.do(ctx, http.MethodGet, "/v1/status", nil, &out, false); err != nil {
		return nil, fmt.Errorf("status: %w", err)
	}
	return out, nil
}

// Backup writes a consistent copy of the cell's committed state to w (see
// RestoreBackup), from the first server of the list that answers.
func (c *Client) Backup(ctx context.Context, w io.Writer) error {
	var lastErr error
	for range c.servers {
		base := c.Server()
		req, err := http.NewRequestWithContext(ctx, http.MethodGet, base+"/v1/cell/backup", nil)
		if err != nil {
			return err
		}
		req.Header.Set("Authorization", "Bearer "+c.token)
		resp, err := c.hc.Do(req)
		if err == nil && resp.StatusCode == http.StatusOK {
			_, err = io.Copy(w, resp.Body)
			resp.Body.Close()
			if err != nil {
				return fmt.Errorf("backup from %s: %w", base, err)
			}
			return nil
		}
		if err == nil {
			var ae apiError
			data, _ := io.ReadAll(io.LimitReader(resp.Body, 1<<20))
			resp.Body.Close()
			json.Unmarshal(data, &ae)
			err = &APIError{Status: resp.StatusCode, Message: ae.Error}
			if resp.StatusCode != http.StatusServiceUnavailable {
				return fmt.Errorf("backup: %w", err)
			}
		}
		lastErr = fmt.Errorf("backup from %s: %w", base, err)
		i := c.cur.Load()
		c.cur.CompareAndSwap(i, (i+1)%int32(len(c.servers)))
	}
	return lastErr
}
