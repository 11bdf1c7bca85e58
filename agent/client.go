package agent

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net"
	"net/http"
	"time"
)

// Client talks to an agent's local API over its unix socket.
type Client struct {
	socket string
	hc     *http.Client
}

// NewClient makes a client for the agent serving socket.
func NewClient(socket string) *Client {
	tr := &http.Transport{DialContext: func(ctx context.Context, _, _ string) (net.Conn, error) {
		var d net.Dialer
		return d.DialContext(ctx, "unix", socket)
	}}
	return &Client{socket: socket, hc: &http.Client{Transport: tr, Timeout: 5 * time.Second}}
}

func (c *Client) get(ctx context.Context, path string, v any) error {
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, "http://trunkline"+path, nil)
	if err != nil {
		return err
	}
	return c.do(req, v)
}

func (c *Client) do(req *http.Request, v any) error {
	resp, err := c.hc.Do(req)
	if err != nil {
		return fmt.Errorf("agent API at %s: %w (is the agent running?)", c.socket, err)
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		b, _ := io.ReadAll(io.LimitReader(resp.Body, 4096))
		return fmt.Errorf("agent API %s %s: %s: %s", req.Method, req.URL.Path, resp.Status, b)
	}
	if v == nil {
		return nil
	}
	return json.NewDecoder(resp.Body).Decode(v)
}

// UpdateServices replaces the agent's Services.
func (c *Client) UpdateServices(ctx context.Context, svcs []ServiceConfig) (ServicesUpdate, error) {
	body, err := json.Marshal(ServicesBody{Services: svcs})
	if err != nil {
		return ServicesUpdate{}, err
	}
	req, err := http.NewRequestWithContext(ctx, http.MethodPut, "http://trunkline/"+APIVersion+"/services", bytes.NewReader(body))
	if err != nil {
		return ServicesUpdate{}, err
	}
	var res ServicesUpdate
	return res, c.do(req, &res)
}

// Services fetches the Services the agent serves.
func (c *Client) Services(ctx context.Context) ([]ServiceConfig, error) {
	var body ServicesBody
	err := c.get(ctx, "/"+APIVersion+"/services", &body)
	return body.Services, err
}

// Conntrack lists tracked flows; query is the URL query (vip=, pod=,
// proto=, limit=).
func (c *Client) Conntrack(ctx context.Context, query string) (ConntrackList, error) {
	var l ConntrackList
	path := "/" + APIVersion + "/conntrack"
	if query != "" {
		path += "?" + query
	}
	err := c.get(ctx, path, &l)
	return l, err
}

// Stats fetches every counter.
func (c *Client) Stats(ctx context.Context) (Stats, error) {
	var s Stats
	err := c.get(ctx, "/"+APIVersion+"/stats", &s)
	return s, err
}

// Status fetches what the agent runs.
func (c *Client) Status(ctx context.Context) (Status, error) {
	var s Status
	err := c.get(ctx, "/"+APIVersion+"/status", &s)
	return s, err
}

// Ready reports whether /readyz answers 200.
func (c *Client) Ready(ctx context.Context) bool {
	return c.get(ctx, "/readyz", nil) == nil
}
