package bench

import (
	"bytes"
	"context"
	"encoding/json"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"strings"
	"testing"
	"time"

	"github.com/trunkline/trunkline/internal/privtest"
)

// TestThroughputQuick runs the whole scenario briefly (64-byte frames, 1 s
// per path, one round): raw and kernel always, trunkline when the agent
// builds.
func TestThroughputQuick(t *testing.T) {
	privtest.Require(t)
	if runtime.NumCPU() < 2 {
		t.Skip("needs 2 CPUs (generator and forwarding on separate cores)")
	}
	agent := filepath.Join(t.TempDir(), "trunkline")
	build := exec.Command("go", "build", "-o", agent, "github.com/trunkline/trunkline/cmd/trunkline")
	if out, err := build.CombinedOutput(); err != nil {
		t.Logf("agent does not build; measuring raw and kernel only: %v\n%s", err, out)
		agent = ""
	}
	ctx, cancel := context.WithTimeout(context.Background(), 45*time.Second)
	defer cancel()
	var progress bytes.Buffer
	rep, err := Throughput(ctx, ThroughputOptions{Prefix: "tltput", AgentBinary: agent, Quick: true, Out: &progress})
	t.Logf("progress:\n%s", progress.String())
	if err != nil {
		t.Fatal(err)
	}
	var table bytes.Buffer
	if err := rep.WriteTable(&table); err != nil {
		t.Fatal(err)
	}
	t.Logf("\n%s", table.String())

	want := map[string]bool{"raw": true, "kernel": true}
	if agent != "" {
		want["trunkline shared-core"], want["trunkline own-core"] = true, true
	}
	for _, r := range rep.Results {
		name := r.Dataplane
		if r.Placement != nil {
			name += " " + *r.Placement
		}
		delete(want, name)
		if r.Error != "" {
			t.Errorf("%s: %s", name, r.Error)
			continue
		}
		if r.PPS == nil || *r.PPS <= 0 {
			t.Errorf("%s forwarded nothing", name)
			continue
		}
		if *r.OfferedPPS < *r.PPS {
			t.Errorf("%s: offered %.0f pps < forwarded %.0f pps", name, *r.OfferedPPS, *r.PPS)
		}
	}
	for name := range want {
		t.Errorf("no result for %s", name)
	}
	if !strings.Contains(table.String(), "saturation checks") {
		t.Error("the table has no saturation checks")
	}

	var js bytes.Buffer
	if err := rep.WriteJSON(&js); err != nil {
		t.Fatal(err)
	}
	var doc struct {
		Machine map[string]any   `json:"machine"`
		Results []map[string]any `json:"results"`
	}
	if err := json.Unmarshal(js.Bytes(), &doc); err != nil {
		t.Fatalf("JSON: %v\n%s", err, js.String())
	}
	if doc.Machine["kernel"] == "" || len(doc.Results) != len(rep.Results) {
		t.Errorf("JSON: %s", js.String())
	}
	for _, r := range doc.Results {
		for _, k := range []string{"scenario", "dataplane", "placement", "frame_bytes", "pps", "offered_pps", "drops"} {
			if _, ok := r[k]; !ok {
				t.Errorf("JSON result without %q: %v", k, r)
			}
		}
	}
	if _, err := os.Stat("/run/netns/tltput-raw"); err == nil {
		t.Error("the raw peer's namespace is still there")
	}
	if _, err := os.Stat("/run/netns/tltput-node"); err == nil {
		t.Error("the bed's node namespace is still there")
	}
}

func TestMedian(t *testing.T) {
	for _, c := range []struct {
		in   []float64
		want float64
	}{{[]float64{3}, 3}, {[]float64{3, 1, 2}, 2}, {[]float64{4, 1, 3, 2}, 2.5}} {
		if got := *median(c.in); got != c.want {
			t.Errorf("median(%v) = %v, want %v", c.in, got, c.want)
		}
	}
	if median(nil) != nil {
		t.Error("median(nil) is not nil")
	}
}
