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

	"github.com/santhosh-tekuri/jsonschema/v6"

	"github.com/trunkline/trunkline/internal/privtest"
)

// validate checks a report's JSON against JSONSchema.
func validate(t *testing.T, js []byte) {
	t.Helper()
	schemaDoc, err := jsonschema.UnmarshalJSON(bytes.NewReader(JSONSchema))
	if err != nil {
		t.Fatalf("schema.json: %v", err)
	}
	c := jsonschema.NewCompiler()
	if err := c.AddResource("schema.json", schemaDoc); err != nil {
		t.Fatal(err)
	}
	sch, err := c.Compile("schema.json")
	if err != nil {
		t.Fatalf("schema.json: %v", err)
	}
	doc, err := jsonschema.UnmarshalJSON(bytes.NewReader(js))
	if err != nil {
		t.Fatalf("report JSON: %v", err)
	}
	if err := sch.Validate(doc); err != nil {
		t.Errorf("report JSON does not validate against schema.json: %v", err)
	}
}

// fakeReport has a result of each kind: every metric, a failure, a point a
// dataplane cannot run.
func fakeReport() *Report {
	tl := &trunklinePeer{place: SharedCore, cpu: napiCPU}
	k := &kernelPeer{mode: Kernel}
	thr := testCase{scenario: Throughput, metric: metricPPS, direction: WireToPod, size: 64, flows: 64, services: 6, pods: 1}
	lat := testCase{scenario: Latency, metric: metricLatency, flows: 1, services: 6, pods: 1}
	cps := testCase{scenario: CPS, metric: metricCPS, services: 6, pods: 1}
	tcp := testCase{scenario: TCP, metric: metricGbps, flows: 1, services: 6, pods: 1}
	frames := func(fwd, off uint64) []sample {
		return []sample{{Forwarded: fwd, Offered: off, Window: time.Second, CPUBusy: 1, NAPIBusy: 0.5, AgentBusy: -1, WorkerCPUBusy: -1}}
	}
	tlFrames := frames(900000, 2000000)
	tlFrames[0].AgentBusy, tlFrames[0].WorkerCPUBusy, tlFrames[0].RSS = 0.9, 0.99, 80<<20
	rep := &Report{Machine: thisMachine(), Started: time.Unix(0, 0).UTC(), Rounds: 1, Duration: 1}
	rep.Results = []Result{
		newResult(&rawPeer{}, thr, frames(1800000, 2000000), nil, ""),
		newResult(k, thr, frames(1000000, 2000000), nil, ""),
		newResult(tl, thr, tlFrames, nil, ""),
		newResult(&rawPeer{}, lat, nil, nil, "one veth pair"),
		newResult(k, lat, []sample{{P50: 40 * time.Microsecond, P99: 90 * time.Microsecond, P999: 200 * time.Microsecond}}, nil, ""),
		newResult(tl, lat, []sample{{P50: 20 * time.Microsecond, P99: 60 * time.Microsecond, P999: 100 * time.Microsecond}}, nil, ""),
		newResult(k, cps, []sample{{CPS: 5000}}, nil, ""),
		newResult(tl, cps, nil, os.ErrDeadlineExceeded, ""),
		newResult(tl, tcp, []sample{{Gbps: 9.5}}, nil, ""),
	}
	rep.fillRatios()
	return rep
}

func TestReportJSONSchema(t *testing.T) {
	rep := fakeReport()
	var js bytes.Buffer
	if err := rep.WriteJSON(&js); err != nil {
		t.Fatal(err)
	}
	validate(t, js.Bytes())

	r := rep.Results[2] // trunkline throughput
	if r.RatioKernel == nil || *r.RatioKernel != 0.9 || *r.RatioRaw != 0.5 {
		t.Errorf("throughput ratios: kernel %v raw %v, want 0.9 and 0.5", r.RatioKernel, r.RatioRaw)
	}
	if r := rep.Results[5]; r.RatioKernel == nil || *r.RatioKernel != 2 {
		t.Errorf("latency ratio (kernel's p50 over trunkline's) = %v, want 2", r.RatioKernel)
	}
	if r := rep.Results[7]; r.Error == "" || r.CPS != nil || r.Verdict != "failed" {
		t.Errorf("failed result: %+v", r)
	}
	// A document missing a required key, or with a bad enum, is refused.
	var doc map[string]any
	json.Unmarshal(js.Bytes(), &doc)
	res := doc["results"].([]any)[0].(map[string]any)
	delete(res, "pps")
	res["dataplane"] = "dpdk"
	bad, _ := json.Marshal(doc)
	schemaDoc, _ := jsonschema.UnmarshalJSON(bytes.NewReader(JSONSchema))
	c := jsonschema.NewCompiler()
	c.AddResource("schema.json", schemaDoc)
	sch, _ := c.Compile("schema.json")
	inst, _ := jsonschema.UnmarshalJSON(bytes.NewReader(bad))
	if err := sch.Validate(inst); err == nil {
		t.Error("schema accepts a result without pps and with dataplane dpdk")
	}

	var table bytes.Buffer
	if err := rep.WriteTable(&table); err != nil {
		t.Fatal(err)
	}
	for _, want := range []string{"throughput: UDP frames", "0.900 Mpps", "latency: UDP request/response", "20.0 µs", "FAILED", "n/a", "performance targets:", "saturation checks"} {
		if !strings.Contains(table.String(), want) {
			t.Errorf("table lacks %q:\n%s", want, table.String())
		}
	}
	var svg bytes.Buffer
	if err := rep.WriteChart(&svg); err != nil || !strings.Contains(svg.String(), "</svg>") {
		t.Errorf("chart: %v", err)
	}
}

func TestPlan(t *testing.T) {
	o, err := Options{AgentBinary: "", Quick: true}.withDefaults()
	if err != nil {
		t.Fatal(err)
	}
	g := plan(o, 6)
	if len(g) != 1 || len(g[1]) != 3 { // throughput 64 B wire → pod; service 1 and many flows (latency needs the agent's servers)
		t.Errorf("quick plan without an agent: %v", g)
	}
	o, _ = Options{AgentBinary: "/bin/true"}.withDefaults()
	g = plan(o, 6)
	if len(g) != 3 || len(g[64]) != 2 || len(g[250]) != 2 {
		t.Errorf("full plan: groups %d, 64 pods %v, 250 pods %v", len(g), g[64], g[250])
	}
	if _, err := (Options{Scenarios: []string{"warp"}, Sizes: []int{10}, Repeat: -1}).withDefaults(); err == nil ||
		!strings.Contains(err.Error(), "warp") || !strings.Contains(err.Error(), "frame size 10") || !strings.Contains(err.Error(), "repeat -1") {
		t.Errorf("bad options: %v", err)
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

// TestQuick runs `trunkline bench --quick` as a user would, with the agent
// binary: it must finish in under a minute, measure every point on every
// dataplane that applies, write JSON that validates against the schema,
// and leave nothing behind.
func TestQuick(t *testing.T) {
	privtest.Require(t)
	if runtime.NumCPU() < 2 {
		t.Skip("needs 2 CPUs (generator and forwarding on separate cores)")
	}
	agent := filepath.Join(t.TempDir(), "trunkline")
	if out, err := exec.Command("go", "build", "-o", agent, "github.com/trunkline/trunkline/cmd/trunkline").CombinedOutput(); err != nil {
		t.Fatalf("build: %v\n%s", err, out)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	var progress bytes.Buffer
	rep, err := Run(ctx, Options{Prefix: "tlbq", AgentBinary: agent, Quick: true, Progress: &progress})
	t.Logf("progress:\n%s", progress.String())
	if err != nil {
		t.Fatal(err)
	}
	if rep.Seconds >= 60 {
		t.Errorf("the quick run took %.0f s, want under 60", rep.Seconds)
	}
	var table, js bytes.Buffer
	rep.WriteTable(&table)
	t.Logf("\n%s", table.String())
	if err := rep.WriteJSON(&js); err != nil {
		t.Fatal(err)
	}
	validate(t, js.Bytes())

	seen := map[string]bool{}
	for _, r := range rep.Results {
		seen[r.Scenario+" "+r.Name()] = true
		if r.NotApplicable != "" {
			continue
		}
		if r.Error != "" {
			t.Errorf("%s %s: %s", r.Scenario, r.Name(), r.Error)
			continue
		}
		if f := r.Figure(); f == nil || *f <= 0 {
			t.Errorf("%s %s %s: no figure", r.Scenario, r.Name(), pointText(r))
		}
		if r.Metric == metricPPS && *r.OfferedPPS < *r.PPS {
			t.Errorf("%s %s: offered %.0f pps < forwarded %.0f pps", r.Scenario, r.Name(), *r.OfferedPPS, *r.PPS)
		}
	}
	for _, sc := range []string{Throughput, Service, Latency} {
		for _, d := range []string{Raw, KernelRoute, Kernel, "trunkline shared-core", "trunkline own-core"} {
			if !seen[sc+" "+d] {
				t.Errorf("no %s result for %s (a dataplane that cannot run it is reported as not applicable)", sc, d)
			}
		}
	}
	for _, ns := range []string{"tlbq-raw", "tlbq-node", "tlbq-wire", "tlbq-pod1"} {
		if _, err := os.Stat("/run/netns/" + ns); err == nil {
			t.Errorf("namespace %s is still there", ns)
		}
	}
}
