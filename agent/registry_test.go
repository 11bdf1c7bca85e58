package agent

import (
	"errors"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"testing"
)

func newPoolAgent(t *testing.T) *Agent {
	t.Helper()
	c, err := LoadConfig("../examples/trunkline.yaml")
	if err != nil {
		t.Fatal(err)
	}
	c.RegistryFile = filepath.Join(t.TempDir(), "state", "registry.json")
	a, err := New(c, Options{})
	if err != nil {
		t.Fatal(err)
	}
	a.reg.path = c.RegistryFile
	if err := a.reg.load(); err != nil {
		t.Fatal(err)
	}
	return a
}

func TestAllocateIsIdempotentAndBounded(t *testing.T) {
	a := newPoolAgent(t)
	first, err := a.Allocate("c1", "eth0", "/var/run/netns/c1")
	if err != nil {
		t.Fatal(err)
	}
	if first.VLAN != 2001 || first.IP != "10.100.200.1/32" || first.Gateway != "10.100.0.1" || first.State != StateAllocated {
		t.Errorf("first registration: %+v", first)
	}
	if int(first.ID) < len(a.s.pods) {
		t.Errorf("ID %d collides with the static pods' 0..%d", first.ID, len(a.s.pods)-1)
	}
	again, err := a.Allocate("c1", "eth0", "/var/run/netns/c1")
	if err != nil || again != first {
		t.Fatalf("ADD repeated: %+v, %v; want %+v", again, err, first)
	}
	second, err := a.Allocate("c2", "eth0", "")
	if err != nil || second.VLAN == first.VLAN || second.ID == first.ID {
		t.Fatalf("second pod: %+v, %v", second, err)
	}
	if _, err := a.Allocate("c3", "eth0", ""); !errors.Is(err, ErrPoolEmpty) {
		t.Fatalf("third pod on a pool of two: %v, want ErrPoolEmpty", err)
	}
	if _, err := a.Allocate("", "eth0", ""); err == nil {
		t.Error("a registration without a container ID was accepted")
	}
}

func TestRegistryPersistsAtomically(t *testing.T) {
	a := newPoolAgent(t)
	g, err := a.Allocate("c1", "eth0", "")
	if err != nil {
		t.Fatal(err)
	}
	// A restarted agent reads the same registration back.
	b := newPoolAgent(t)
	b.reg.path = a.reg.path
	if err := b.reg.load(); err != nil {
		t.Fatal(err)
	}
	got, err := b.Allocate("c1", "eth0", "")
	if err != nil || got != g {
		t.Fatalf("after a restart: %+v, %v; want %+v", got, err, g)
	}
	// No temporary file is left next to it.
	ents, _ := os.ReadDir(filepath.Dir(a.reg.path))
	if len(ents) != 1 {
		t.Errorf("registry dir holds %d files, want 1", len(ents))
	}
	// Release frees the branch for another pod.
	if err := a.Release("c1", "eth0"); err != nil {
		t.Fatal(err)
	}
	if err := a.Release("c1", "eth0"); err != nil {
		t.Fatalf("second release: %v", err)
	}
	if g2, err := a.Allocate("c9", "eth0", ""); err != nil || g2.VLAN != g.VLAN {
		t.Fatalf("after release: %+v, %v; want VLAN %d again", g2, err, g.VLAN)
	}
}

func TestDamagedRegistryIsAClearError(t *testing.T) {
	a := newPoolAgent(t)
	os.MkdirAll(filepath.Dir(a.reg.path), 0o700)
	os.WriteFile(a.reg.path, []byte("{not json"), 0o600)
	if err := a.reg.load(); err == nil {
		t.Fatal("a damaged registry loaded")
	}
}

func TestNotReadyUntilRunning(t *testing.T) {
	a := newPoolAgent(t)
	rec := httptest.NewRecorder()
	a.handleReadyz(rec, httptest.NewRequest("GET", "/readyz", nil))
	if rec.Code != http.StatusServiceUnavailable {
		t.Errorf("/readyz before Run: %d, want 503", rec.Code)
	}
}
