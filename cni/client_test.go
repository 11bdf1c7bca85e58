package cni

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/netip"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"
)

// fakeAgent serves the agent's registration API from memory, over a Unix
// socket, and records what it was sent.
type fakeAgent struct {
	socket string

	mu sync.Mutex // guards the fields below
	// regs by containerID + "/" + ifname.
	regs map[string]*Registration
	// next is the number of the next attachment handed out (VLAN 200+next,
	// IP 10.100.2.next); free is how many are left.
	next, free int
	ready      bool
	// fail makes a route ("PUT", "POST", …) answer with that status.
	fail map[string]int
	// delay holds every answer back.
	delay time.Duration
	// requests are "METHOD path body" in order.
	requests []string
}

// newFakeAgent starts a fake agent with free attachments; it stops when the
// test ends.
func newFakeAgent(t *testing.T, free int) *fakeAgent {
	t.Helper()
	f := &fakeAgent{
		socket: filepath.Join(shortTempDir(t), "agent.sock"),
		regs:   map[string]*Registration{}, next: 1, free: free, ready: true, fail: map[string]int{},
	}
	l, err := net.Listen("unix", f.socket)
	if err != nil {
		t.Fatal(err)
	}
	srv := &http.Server{Handler: f.handler()}
	go srv.Serve(l)
	t.Cleanup(func() { srv.Close() })
	return f
}

// shortTempDir is a temporary directory with a path short enough for a Unix
// socket (t.TempDir's has the test's name in it).
func shortTempDir(t *testing.T) string {
	t.Helper()
	dir, err := os.MkdirTemp("", "tlcni")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(dir) })
	return dir
}

func (f *fakeAgent) handler() http.Handler {
	mux := http.NewServeMux()
	mux.HandleFunc("GET /readyz", func(w http.ResponseWriter, r *http.Request) {
		if !f.ready {
			http.Error(w, "not ready", http.StatusServiceUnavailable)
			return
		}
		io.WriteString(w, "ok\n")
	})
	mux.HandleFunc("POST /v1/attachments", func(w http.ResponseWriter, r *http.Request) {
		var in struct{ ContainerID, Ifname, Netns string }
		if err := json.NewDecoder(r.Body).Decode(&in); err != nil || in.ContainerID == "" || in.Ifname == "" {
			http.Error(w, "containerID and ifname are required", http.StatusBadRequest)
			return
		}
		if reg, ok := f.regs[in.ContainerID+"/"+in.Ifname]; ok {
			writeJSONTest(w, reg)
			return
		}
		if f.free == 0 {
			http.Error(w, "branch pool exhausted (0 of 4 free)", http.StatusServiceUnavailable)
			return
		}
		n := f.next
		f.next++
		f.free--
		reg := &Registration{
			ContainerID: in.ContainerID, Ifname: in.Ifname, Netns: in.Netns,
			VLAN:    uint16(200 + n),
			IP:      netip.PrefixFrom(netip.AddrFrom4([4]byte{10, 100, 2, byte(n)}), 32),
			MAC:     fmt.Sprintf("02:00:0a:64:02:%02x", n),
			Gateway: netip.MustParseAddr("10.100.0.1"),
			State:   StateAllocated,
		}
		f.regs[in.ContainerID+"/"+in.Ifname] = reg
		writeJSONTest(w, reg)
	})
	mux.HandleFunc("PUT /v1/attachments/{cid}/{ifname}", func(w http.ResponseWriter, r *http.Request) {
		reg, ok := f.regs[r.PathValue("cid")+"/"+r.PathValue("ifname")]
		if !ok {
			http.Error(w, "not allocated", http.StatusNotFound)
			return
		}
		var in struct{ HostVeth string }
		if err := json.NewDecoder(r.Body).Decode(&in); err != nil || in.HostVeth == "" {
			http.Error(w, "hostVeth is required", http.StatusBadRequest)
			return
		}
		reg.HostVeth, reg.State = in.HostVeth, StateAttached
		writeJSONTest(w, reg)
	})
	mux.HandleFunc("DELETE /v1/attachments/{cid}/{ifname}", func(w http.ResponseWriter, r *http.Request) {
		if _, ok := f.regs[r.PathValue("cid")+"/"+r.PathValue("ifname")]; ok {
			delete(f.regs, r.PathValue("cid")+"/"+r.PathValue("ifname"))
			f.free++
		}
	})
	mux.HandleFunc("GET /v1/attachments/{cid}/{ifname}", func(w http.ResponseWriter, r *http.Request) {
		reg, ok := f.regs[r.PathValue("cid")+"/"+r.PathValue("ifname")]
		if !ok {
			http.Error(w, "not found", http.StatusNotFound)
			return
		}
		writeJSONTest(w, reg)
	})
	mux.HandleFunc("GET /v1/attachments", func(w http.ResponseWriter, r *http.Request) {
		var all []*Registration
		for _, reg := range f.regs {
			all = append(all, reg)
		}
		writeJSONTest(w, map[string]any{"attachments": all})
	})
	mux.HandleFunc("POST /v1/attachments/gc", func(w http.ResponseWriter, r *http.Request) {
		var in struct{ Valid []AttachmentKey }
		if err := json.NewDecoder(r.Body).Decode(&in); err != nil {
			http.Error(w, err.Error(), http.StatusBadRequest)
			return
		}
		keep := map[string]bool{}
		for _, k := range in.Valid {
			keep[k.ContainerID+"/"+k.Ifname] = true
		}
		n := 0
		for k := range f.regs {
			if !keep[k] {
				delete(f.regs, k)
				f.free++
				n++
			}
		}
		writeJSONTest(w, map[string]int{"released": n})
	})
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		body, _ := io.ReadAll(r.Body)
		r.Body = io.NopCloser(strings.NewReader(string(body)))
		f.mu.Lock()
		defer f.mu.Unlock()
		f.requests = append(f.requests, strings.TrimSpace(r.Method+" "+r.URL.EscapedPath()+" "+string(body)))
		if f.delay > 0 {
			time.Sleep(f.delay)
		}
		if code := f.fail[r.Method]; code != 0 {
			http.Error(w, "injected failure", code)
			return
		}
		mux.ServeHTTP(w, r)
	})
}

func writeJSONTest(w http.ResponseWriter, v any) {
	w.Header().Set("Content-Type", "application/json")
	json.NewEncoder(w).Encode(v)
}

func (f *fakeAgent) set(fn func(f *fakeAgent)) {
	f.mu.Lock()
	defer f.mu.Unlock()
	fn(f)
}

func (f *fakeAgent) lastRequest() string {
	f.mu.Lock()
	defer f.mu.Unlock()
	if len(f.requests) == 0 {
		return ""
	}
	return f.requests[len(f.requests)-1]
}

func (f *fakeAgent) registered(containerID, ifname string) bool {
	f.mu.Lock()
	defer f.mu.Unlock()
	_, ok := f.regs[containerID+"/"+ifname]
	return ok
}

func TestClientWireFormat(t *testing.T) {
	f := newFakeAgent(t, 4)
	c := NewClient(f.socket)
	ctx := t.Context()

	reg, err := c.Allocate(ctx, "c1", "eth0", "/var/run/netns/x")
	if err != nil {
		t.Fatal(err)
	}
	if got, want := f.lastRequest(), `POST /v1/attachments {"containerID":"c1","ifname":"eth0","netns":"/var/run/netns/x"}`; got != want {
		t.Errorf("request = %s\nwant      %s", got, want)
	}
	want := Registration{ContainerID: "c1", Ifname: "eth0", Netns: "/var/run/netns/x", VLAN: 201,
		IP: netip.MustParsePrefix("10.100.2.1/32"), MAC: "02:00:0a:64:02:01", Gateway: netip.MustParseAddr("10.100.0.1"), State: StateAllocated}
	if reg != want {
		t.Errorf("Allocate = %+v\nwant       %+v", reg, want)
	}
	a, err := reg.Attachment()
	if err != nil {
		t.Fatal(err)
	}
	if a.VLAN != 201 || a.IP != want.IP || a.MAC.String() != "02:00:0a:64:02:01" || a.Gateway != want.Gateway {
		t.Errorf("Attachment = %+v", a)
	}
	if again, err := c.Allocate(ctx, "c1", "eth0", "/var/run/netns/x"); err != nil || again != reg {
		t.Errorf("second Allocate = %+v, %v; want the same attachment", again, err)
	}

	reg, err = c.Attach(ctx, "c1", "eth0", "tl0123456789a")
	if err != nil {
		t.Fatal(err)
	}
	if got, want := f.lastRequest(), `PUT /v1/attachments/c1/eth0 {"hostVeth":"tl0123456789a"}`; got != want {
		t.Errorf("request = %s\nwant      %s", got, want)
	}
	if reg.State != StateAttached || reg.HostVeth != "tl0123456789a" {
		t.Errorf("Attach = %+v", reg)
	}
	if got, err := c.Get(ctx, "c1", "eth0"); err != nil || got != reg {
		t.Errorf("Get = %+v, %v; want %+v", got, err, reg)
	}
	if _, err := c.Allocate(ctx, "c2", "net1", ""); err != nil {
		t.Fatal(err)
	}
	if all, err := c.List(ctx); err != nil || len(all) != 2 {
		t.Errorf("List = %+v, %v; want 2 registrations", all, err)
	}

	n, err := c.GC(ctx, []AttachmentKey{{ContainerID: "c1", Ifname: "eth0"}})
	if err != nil || n != 1 {
		t.Errorf("GC = %d, %v; want 1 released", n, err)
	}
	if got, want := f.lastRequest(), `POST /v1/attachments/gc {"valid":[{"containerID":"c1","ifname":"eth0"}]}`; got != want {
		t.Errorf("request = %s\nwant      %s", got, want)
	}
	if _, err := c.GC(ctx, nil); err != nil {
		t.Fatal(err)
	}
	if got, want := f.lastRequest(), `POST /v1/attachments/gc {"valid":[]}`; got != want {
		t.Errorf("request = %s\nwant      %s", got, want)
	}

	if err := c.Release(ctx, "c1", "eth0"); err != nil {
		t.Fatal(err)
	}
	if got, want := f.lastRequest(), `DELETE /v1/attachments/c1/eth0`; got != want {
		t.Errorf("request = %s\nwant      %s", got, want)
	}
	if err := c.Release(ctx, "c1", "eth0"); err != nil {
		t.Errorf("second Release: %v", err)
	}
	if _, err := c.Get(ctx, "c1", "eth0"); !errors.Is(err, ErrNotRegistered) {
		t.Errorf("Get after Release: %v; want ErrNotRegistered", err)
	}
	if _, err := c.Attach(ctx, "c1", "eth0", "tl0123456789a"); !errors.Is(err, ErrNotRegistered) {
		t.Errorf("Attach without Allocate: %v; want ErrNotRegistered", err)
	}
}

func TestClientEscapesPath(t *testing.T) {
	f := newFakeAgent(t, 4)
	c := NewClient(f.socket)
	c.Get(t.Context(), "a/b c", "eth0")
	if got, want := f.lastRequest(), "GET /v1/attachments/a%2Fb%20c/eth0"; got != want {
		t.Errorf("request = %s, want %s", got, want)
	}
}

func TestClientErrorsSayWhatToDo(t *testing.T) {
	ctx := t.Context()
	t.Run("no agent", func(t *testing.T) {
		sock := filepath.Join(shortTempDir(t), "none.sock")
		_, err := NewClient(sock).Allocate(ctx, "c", "eth0", "")
		if !errors.Is(err, ErrAgentUnreachable) {
			t.Fatalf("err = %v; want ErrAgentUnreachable", err)
		}
		if want := "trunkline agent not reachable at " + sock + ": is the DaemonSet running?"; !strings.HasPrefix(err.Error(), want) {
			t.Errorf("err = %q\nwant it to start with %q", err, want)
		}
		if err := NewClient(sock).Ready(ctx); !errors.Is(err, ErrAgentUnreachable) {
			t.Errorf("Ready = %v; want ErrAgentUnreachable", err)
		}
	})
	t.Run("pool exhausted", func(t *testing.T) {
		f := newFakeAgent(t, 0)
		_, err := NewClient(f.socket).Allocate(ctx, "c", "eth0", "")
		if !errors.Is(err, ErrPoolExhausted) || !strings.Contains(err.Error(), "branch pool exhausted (0 of 4 free)") {
			t.Errorf("err = %v; want ErrPoolExhausted with the agent's message", err)
		}
	})
	t.Run("bad input", func(t *testing.T) {
		f := newFakeAgent(t, 1)
		_, err := NewClient(f.socket).Allocate(ctx, "", "eth0", "")
		if !errors.Is(err, ErrRejected) || !strings.Contains(err.Error(), "containerID and ifname are required") {
			t.Errorf("err = %v; want ErrRejected with the agent's message", err)
		}
	})
	t.Run("server error", func(t *testing.T) {
		f := newFakeAgent(t, 1)
		f.set(func(f *fakeAgent) { f.fail["PUT"] = http.StatusInternalServerError })
		_, err := NewClient(f.socket).Attach(ctx, "c", "eth0", "tlx")
		if !errors.Is(err, ErrAgentFailed) || !strings.Contains(err.Error(), "500 injected failure") {
			t.Errorf("err = %v; want ErrAgentFailed with status and message", err)
		}
	})
	t.Run("not ready", func(t *testing.T) {
		f := newFakeAgent(t, 1)
		c := NewClient(f.socket)
		if err := c.Ready(ctx); err != nil {
			t.Errorf("Ready = %v", err)
		}
		f.set(func(f *fakeAgent) { f.ready = false })
		if err := c.Ready(ctx); !errors.Is(err, ErrNotReady) {
			t.Errorf("Ready = %v; want ErrNotReady", err)
		}
	})
	t.Run("timeout", func(t *testing.T) {
		f := newFakeAgent(t, 1)
		f.set(func(f *fakeAgent) { f.delay = 300 * time.Millisecond })
		c := NewClient(f.socket)
		c.Timeout = 50 * time.Millisecond
		start := time.Now()
		_, err := c.Allocate(context.Background(), "c", "eth0", "")
		if !errors.Is(err, ErrAgentTimeout) {
			t.Errorf("err = %v; want ErrAgentTimeout", err)
		}
		if d := time.Since(start); d > 250*time.Millisecond {
			t.Errorf("Allocate took %s with a 50ms timeout", d)
		}
	})
}

func TestRegistrationAttachmentBadMAC(t *testing.T) {
	_, err := Registration{ContainerID: "c", Ifname: "eth0", MAC: "nope"}.Attachment()
	if !errors.Is(err, ErrAgentFailed) || !strings.Contains(err.Error(), `"nope"`) {
		t.Errorf("err = %v", err)
	}
}
