package cni

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/netip"
	"net/url"
	"strings"
	"time"
)

// DefaultClientTimeout bounds each call a [Client] makes when its context
// has no earlier deadline.
const DefaultClientTimeout = 5 * time.Second

// Errors a [Client] returns, wrapped with what it was doing and what to do.
var (
	// ErrAgentUnreachable: nothing answers on the agent's socket.
	ErrAgentUnreachable = errors.New("trunkline agent not reachable")
	// ErrAgentTimeout: the agent accepted the call but did not answer in time.
	ErrAgentTimeout = errors.New("trunkline agent did not answer in time")
	// ErrPoolExhausted: the agent has no branch attachment left (503 on
	// allocate).
	ErrPoolExhausted = errors.New("no branch attachment left on this node")
	// ErrRejected: the agent refused the request as invalid (400).
	ErrRejected = errors.New("trunkline agent rejected the request")
	// ErrNotRegistered: the agent knows no attachment for the container and
	// interface (404).
	ErrNotRegistered = errors.New("no attachment registered")
	// ErrNotReady: the agent answers but /readyz is not 200.
	ErrNotReady = errors.New("trunkline agent not ready")
	// ErrAgentFailed: any other answer than the API promises.
	ErrAgentFailed = errors.New("trunkline agent failed")
)

// Registration states the agent reports.
const (
	// StateAllocated: the attachment is reserved for the pod interface; the
	// agent does not forward for it yet.
	StateAllocated = "allocated"
	// StateAttached: the agent has opened its AF_XDP socket on the host veth
	// and forwards the pod's traffic.
	StateAttached = "attached"
)

// Registration is the agent's record of one pod interface, as its API
// sends it.
type Registration struct {
	ContainerID string       `json:"containerID"`
	Ifname      string       `json:"ifname"`
	Netns       string       `json:"netns"`
	VLAN        uint16       `json:"vlan"`
	IP          netip.Prefix `json:"ip"`
	MAC         string       `json:"mac"`
	Gateway     netip.Addr   `json:"gateway"`
	// HostVeth is empty until the plugin attaches the interface.
	HostVeth string `json:"hostVeth"`
	State    string `json:"state"`
}

// Attachment converts r into what [SetupPod] and [CheckPod] take.
func (r Registration) Attachment() (Attachment, error) {
	mac, err := net.ParseMAC(r.MAC)
	if err != nil {
		return Attachment{}, fmt.Errorf("%w: registration of %s/%s has MAC %q: %v", ErrAgentFailed, r.ContainerID, r.Ifname, r.MAC, err)
	}
	return Attachment{VLAN: r.VLAN, IP: r.IP, MAC: mac, Gateway: r.Gateway}, nil
}

// AttachmentKey names one pod interface, as CNI GC lists them.
type AttachmentKey struct {
	ContainerID string `json:"containerID"`
	Ifname      string `json:"ifname"`
}

// Client calls the agent's registration API over its Unix socket. It is
// safe for concurrent use.
type Client struct {
	socket string
	// Timeout bounds each call; DefaultClientTimeout unless changed before
	// the first call.
	Timeout time.Duration
	hc      *http.Client
}

// NewClient returns a client for the agent listening on socket.
func NewClient(socket string) *Client {
	tr := &http.Transport{
		DialContext: func(ctx context.Context, _, _ string) (net.Conn, error) {
			var d net.Dialer
			return d.DialContext(ctx, "unix", socket)
		},
		DisableKeepAlives: true, // one plugin run, a few calls
	}
	return &Client{socket: socket, Timeout: DefaultClientTimeout, hc: &http.Client{Transport: tr}}
}

// Allocate asks for the attachment of a pod interface; the same containerID
// and ifname get the same attachment back.
func (c *Client) Allocate(ctx context.Context, containerID, ifname, netns string) (Registration, error) {
	return c.AllocateAddress(ctx, containerID, ifname, netns, "")
}

// AllocateAddress is Allocate for a pod whose address a chained IPAM
// plugin chose: the agent still supplies the VLAN.
func (c *Client) AllocateAddress(ctx context.Context, containerID, ifname, netns, ip string) (Registration, error) {
	var r Registration
	body := struct {
		ContainerID string `json:"containerID"`
		Ifname      string `json:"ifname"`
		Netns       string `json:"netns"`
		IP          string `json:"ip,omitempty"`
	}{containerID, ifname, netns, ip}
	return r, c.call(ctx, http.MethodPost, "/v1/attachments", body, &r)
}

// Attach tells the agent the pod interface is wired to hostVeth; it returns
// once the agent forwards for it.
func (c *Client) Attach(ctx context.Context, containerID, ifname, hostVeth string) (Registration, error) {
	var r Registration
	body := struct {
		HostVeth string `json:"hostVeth"`
	}{hostVeth}
	return r, c.call(ctx, http.MethodPut, attachmentPath(containerID, ifname), body, &r)
}

// Release gives the attachment back; releasing an unknown one is not an
// error.
func (c *Client) Release(ctx context.Context, containerID, ifname string) error {
	return c.call(ctx, http.MethodDelete, attachmentPath(containerID, ifname), nil, nil)
}

// Get returns the registration of a pod interface, or an error wrapping
// ErrNotRegistered.
func (c *Client) Get(ctx context.Context, containerID, ifname string) (Registration, error) {
	var r Registration
	return r, c.call(ctx, http.MethodGet, attachmentPath(containerID, ifname), nil, &r)
}

// List returns every registration the agent holds.
func (c *Client) List(ctx context.Context) ([]Registration, error) {
	var body struct {
		Attachments []Registration `json:"attachments"`
	}
	err := c.call(ctx, http.MethodGet, "/v1/attachments", nil, &body)
	return body.Attachments, err
}

// GC releases every attachment not in valid and returns how many it
// released.
func (c *Client) GC(ctx context.Context, valid []AttachmentKey) (int, error) {
	if valid == nil {
		valid = []AttachmentKey{} // "valid": [] releases everything; never send null
	}
	body := struct {
		Valid []AttachmentKey `json:"valid"`
	}{valid}
	var res struct {
		Released int `json:"released"`
	}
	err := c.call(ctx, http.MethodPost, "/v1/attachments/gc", body, &res)
	return res.Released, err
}

// Ready returns nil when the agent answers /readyz with 200, and otherwise
// an error wrapping ErrNotReady, ErrAgentUnreachable or ErrAgentTimeout.
func (c *Client) Ready(ctx context.Context) error {
	err := c.call(ctx, http.MethodGet, "/readyz", nil, nil)
	if errors.Is(err, ErrAgentFailed) {
		return fmt.Errorf("%w: %w", ErrNotReady, err)
	}
	return err
}

func attachmentPath(containerID, ifname string) string {
	return "/v1/attachments/" + url.PathEscape(containerID) + "/" + url.PathEscape(ifname)
}

// call sends in (JSON, unless nil) and decodes a 200 answer into out
// (unless nil); any other outcome is an error wrapping one of the Err*
// sentinels.
func (c *Client) call(ctx context.Context, method, path string, in, out any) error {
	ctx, cancel := context.WithTimeout(ctx, c.Timeout)
	defer cancel()
	var body io.Reader
	if in != nil {
		b, err := json.Marshal(in)
		if err != nil {
			return fmt.Errorf("%s %s: %w", method, path, err)
		}
		body = bytes.NewReader(b)
	}
	req, err := http.NewRequestWithContext(ctx, method, "http://trunkline"+path, body)
	if err != nil {
		return fmt.Errorf("%s %s: %w", method, path, err)
	}
	if in != nil {
		req.Header.Set("Content-Type", "application/json")
	}
	resp, err := c.hc.Do(req)
	if err != nil {
		return c.transportError(ctx, method, path, err)
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		msg, _ := io.ReadAll(io.LimitReader(resp.Body, 4096))
		return c.statusError(method, path, resp.StatusCode, strings.TrimSpace(string(msg)))
	}
	if out == nil {
		return nil
	}
	if err := json.NewDecoder(io.LimitReader(resp.Body, 4<<20)).Decode(out); err != nil {
		if ctx.Err() != nil {
			return c.transportError(ctx, method, path, err)
		}
		return fmt.Errorf("%w: %s %s: cannot decode the answer: %v (is the agent the same version as the plugin?)", ErrAgentFailed, method, path, err)
	}
	return nil
}

func (c *Client) transportError(ctx context.Context, method, path string, err error) error {
	var op *net.OpError
	switch {
	case errors.As(err, &op) && op.Op == "dial":
		return fmt.Errorf("%w at %s: is the DaemonSet running? (%s %s: %v)", ErrAgentUnreachable, c.socket, method, path, op.Err)
	case errors.Is(ctx.Err(), context.DeadlineExceeded):
		return fmt.Errorf("%w at %s: %s %s got no answer within %s; check the agent's logs", ErrAgentTimeout, c.socket, method, path, c.Timeout)
	default:
		return fmt.Errorf("%w at %s: %s %s: %v", ErrAgentUnreachable, c.socket, method, path, err)
	}
}

func (c *Client) statusError(method, path string, code int, msg string) error {
	if msg == "" {
		msg = http.StatusText(code)
	}
	switch {
	case code == http.StatusServiceUnavailable && path == "/readyz":
		return fmt.Errorf("%w at %s: %s", ErrNotReady, c.socket, msg)
	case code == http.StatusServiceUnavailable && method == http.MethodPost && path == "/v1/attachments":
		return fmt.Errorf("%w (the agent at %s says: %s); delete pods on this node or grow its branch pool", ErrPoolExhausted, c.socket, msg)
	case code == http.StatusBadRequest:
		return fmt.Errorf("%w: %s %s: %s", ErrRejected, method, path, msg)
	case code == http.StatusNotFound:
		return fmt.Errorf("%w: %s %s: %s", ErrNotRegistered, method, path, msg)
	default:
		return fmt.Errorf("%w: %s %s: %d %s", ErrAgentFailed, method, path, code, msg)
	}
}
