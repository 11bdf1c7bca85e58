package e2e

import (
	"bufio"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"net/netip"
	"os"
	"os/exec"
	"regexp"
	"strings"
	"testing"
	"time"

	dto "github.com/prometheus/client_model/go"
	"github.com/prometheus/common/expfmt"
	"github.com/prometheus/common/model"

	"github.com/trunkline/trunkline/agent"
	"github.com/trunkline/trunkline/bench/bed"
)

// scrape fetches the agent's /metrics from inside the node namespace.
func scrape(t *testing.T, netns string) (raw string, families map[string]*dto.MetricFamily) {
	t.Helper()
	c := dial(t, netns, "tcp", netip.MustParseAddrPort(agent.DefaultMetricsAddr))
	defer c.Close()
	c.SetDeadline(time.Now().Add(3 * time.Second))
	fmt.Fprintf(c, "GET /metrics HTTP/1.1\r\nHost: x\r\nAccept: text/plain\r\nConnection: close\r\n\r\n")
	resp, err := http.ReadResponse(bufio.NewReader(c), nil)
	if err != nil {
		t.Fatalf("scrape: %v", err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	p := expfmt.NewTextParser(model.UTF8Validation)
	families, err = p.TextToMetricFamilies(strings.NewReader(string(b)))
	if err != nil {
		t.Fatalf("parse the scrape: %v\n%s", err, b)
	}
	return string(b), families
}

// value is the value of the metric in fam whose labels include want.
func value(fams map[string]*dto.MetricFamily, name string, want map[string]string) float64 {
	f := fams[name]
	if f == nil {
		return -1
	}
next:
	for _, m := range f.Metric {
		for k, v := range want {
			found := false
			for _, l := range m.Label {
				if l.GetName() == k && l.GetValue() == v {
					found = true
				}
			}
			if !found {
				continue next
			}
		}
		switch {
		case m.Counter != nil:
			return m.Counter.GetValue()
		case m.Gauge != nil:
			return m.Gauge.GetValue()
		}
	}
	return -1
}

// TestMetrics: after a burst of N frames to a pod, the scraped counters
// equal N exactly; bad frames show under their drop reason; the scrape
// passes promtool's checks.
func TestMetrics(t *testing.T) {
	e := newEnv(t, fmt.Sprintf("tlmet%d", os.Getpid()%10000), 1)
	b := e.b
	e.startAgent()
	pod := b.Pods[0]
	c := dial(t, b.Wire.Netns, "udp", netip.AddrPortFrom(pod.IP, 9000))
	if err := udpRoundTrip(c, []byte("warm-up"), 2*time.Second); err != nil {
		t.Fatal(err)
	}
	web := b.Service("default/web")
	_, start := scrape(t, b.Node.Netns)
	for range 4 {
		httpGet(t, b.Wire.Netns, netip.AddrPortFrom(web.VIP, web.Port))
	}
	time.Sleep(200 * time.Millisecond) // the connections' last ACKs
	_, before := scrape(t, b.Node.Netns)
	sl := map[string]string{"service": "default/web"}
	if d := value(before, "trunkline_service_new_connections_total", sl) - value(start, "trunkline_service_new_connections_total", sl); d != 4 {
		t.Errorf("trunkline_service_new_connections_total{service=default/web} went up by %v, want 4", d)
	}
	if d := value(before, "trunkline_service_packets_total", sl) - value(start, "trunkline_service_packets_total", sl); d < 4*6 {
		t.Errorf("trunkline_service_packets_total{service=default/web} went up by %v, want at least 24 (4 HTTP exchanges)", d)
	}
	const n = 100
	for i := range n {
		if err := udpRoundTrip(c, []byte(fmt.Sprint("m", i)), 2*time.Second); err != nil {
			t.Fatal(err)
		}
	}
	fromWire := injector(t, b.Wire.Netns, b.Wire.Ifname)
	bad := frame(t, b.Wire.MAC, pod.MAC, [][2]uint16{{0x8100, 999}}, b.Wire.IP, pod.IP)
	for range 7 {
		fromWire(bad)
	}
	time.Sleep(100 * time.Millisecond)
	raw, after := scrape(t, b.Node.Netns)
	pl := map[string]string{"interface": pod.HostVeth}
	for _, name := range []string{"trunkline_tx_packets_total", "trunkline_rx_packets_total"} {
		if d := value(after, name, pl) - value(before, name, pl); d != n {
			t.Errorf("%s{interface=%q} went up by %v, want %d", name, pod.HostVeth, d, n)
		}
	}
	dl := map[string]string{"reason": "unknown_vid"}
	if d := value(after, "trunkline_drops_total", dl) - value(before, "trunkline_drops_total", dl); d != 7 {
		t.Errorf("trunkline_drops_total{reason=unknown_vid} went up by %v, want 7", d)
	}
	tl := map[string]string{"interface": b.Node.Trunk, "queue": "0"}
	if d := value(after, "trunkline_interface_drops_total", tl) - value(before, "trunkline_interface_drops_total", tl); d != 7 {
		t.Errorf("trunkline_interface_drops_total{interface=%q} went up by %v, want 7", b.Node.Trunk, d)
	}
	if v := value(after, "trunkline_umem_frames", map[string]string{"state": "held"}); v != 0 {
		t.Errorf("held UMEM frames = %v, want 0", v)
	}
	if f := after["trunkline_worker_batch_frames"]; f == nil || len(f.Metric) == 0 || f.Metric[0].GetHistogram().GetSampleCount() == 0 ||
		f.Metric[0].GetHistogram().GetSampleSum() < n {
		t.Errorf("trunkline_worker_batch_frames: %v; want a histogram of the batches", f)
	}
	if f := after["trunkline_worker_batch_seconds"]; f == nil || len(f.Metric) == 0 || f.Metric[0].GetHistogram().GetSampleSum() <= 0 {
		t.Errorf("trunkline_worker_batch_seconds: %v; want the batches' processing time", f)
	}
	if v := value(after, "trunkline_ready", nil); v != 1 {
		t.Errorf("trunkline_ready = %v", v)
	}
	if v := value(after, "process_resident_memory_bytes", nil); v < 1<<20 {
		t.Errorf("process_resident_memory_bytes = %v; want the agent's RSS", v)
	}
	for _, name := range []string{"trunkline_draining_backends", "trunkline_syn_gate_shut"} {
		if after[name] == nil {
			t.Errorf("%s is not exported", name)
		}
	}
	if v := value(after, "go_goroutines", nil); v < 1 {
		t.Errorf("go_goroutines = %v; want the agent's goroutines", v)
	}
	promtool := tool(t, "promtool", "apt-get install prometheus")
	cmd := exec.Command(promtool, "check", "metrics")
	cmd.Stdin = strings.NewReader(raw)
	if out, err := cmd.CombinedOutput(); err != nil {
		t.Errorf("promtool check metrics: %v\n%s", err, out)
	}
}

// TestPrometheusScrapesTheAgent runs a real Prometheus server next to the
// agent (the node's network) with the shipped alerting rules, asks it for
// trunkline_rx_packets_total, and checks every rule evaluates against the
// agent's metrics without error and none fires on a healthy agent.
func TestPrometheusScrapesTheAgent(t *testing.T) {
	prom := tool(t, "prometheus", "apt-get install prometheus")
	e := newEnv(t, fmt.Sprintf("tlprm%d", os.Getpid()%10000), 1)
	b := e.b
	e.startAgent()
	dir := t.TempDir()
	rules, alerts := ruleGroups(t, false)
	os.WriteFile(dir+"/rules.yaml", rules, 0o644)
	cfg := fmt.Sprintf("global: {scrape_interval: 1s, evaluation_interval: 1s}\nrule_files: [rules.yaml]\nscrape_configs:\n  - job_name: trunkline\n    static_configs: [{targets: [%q]}]\n", agent.DefaultMetricsAddr)
	os.WriteFile(dir+"/prometheus.yml", []byte(cfg), 0o644)
	const promAddr = "127.0.0.1:19090"
	srv := b.Command(t.Context(), b.Node.Netns, prom, "--config.file="+dir+"/prometheus.yml",
		"--storage.tsdb.path="+dir+"/data", "--web.listen-address="+promAddr)
	var log strings.Builder
	srv.Stdout, srv.Stderr = &log, &log
	if err := srv.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { srv.Process.Kill(); srv.Wait() })
	// Some traffic for the counters.
	c := dial(t, b.Wire.Netns, "udp", netip.AddrPortFrom(b.Pods[0].IP, 9000))
	if err := udpRoundTrip(c, []byte("hi"), 2*time.Second); err != nil {
		t.Fatal(err)
	}
	get := func(path string) (string, error) {
		conn := dial(t, b.Node.Netns, "tcp", netip.MustParseAddrPort(promAddr))
		defer conn.Close()
		conn.SetDeadline(time.Now().Add(2 * time.Second))
		fmt.Fprintf(conn, "GET %s HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n", path)
		resp, err := http.ReadResponse(bufio.NewReader(conn), nil)
		if err != nil {
			return "", err
		}
		defer resp.Body.Close()
		body, err := io.ReadAll(resp.Body)
		return string(body), err
	}
	deadline := time.Now().Add(20 * time.Second)
	var last string
	for time.Now().Before(deadline) {
		if err := bed.WaitListening(t.Context(), b.Node.Netns, 19090); err == nil {
			if body, err := get("/api/v1/query?query=trunkline_rx_packets_total"); err == nil {
				last = body
				if strings.Contains(body, `"status":"success"`) && strings.Contains(body, `"__name__":"trunkline_rx_packets_total"`) {
					break
				}
			}
		}
		time.Sleep(250 * time.Millisecond)
	}
	if !strings.Contains(last, `"__name__":"trunkline_rx_packets_total"`) {
		t.Fatalf("Prometheus never answered for trunkline_rx_packets_total; last answer %s\nlog:\n%s", last, log.String())
	}
	// Each rule evaluated (health ok: the expression ran), none firing or
	// pending.
	var r struct {
		Data struct {
			Groups []struct {
				Rules []struct {
					Name, Health, State, LastError string
				}
			}
		}
	}
	for deadline := time.Now().Add(10 * time.Second); ; time.Sleep(250 * time.Millisecond) {
		body, err := get("/api/v1/rules?type=alert")
		if err == nil {
			r.Data.Groups = nil
			json.Unmarshal([]byte(body), &r)
		}
		ok := 0
		for _, g := range r.Data.Groups {
			for _, rule := range g.Rules {
				if rule.Health == "ok" {
					ok++
				}
			}
		}
		if ok == len(alerts) {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("%d of %d rules evaluated ok after 10 s: %s %v", ok, len(alerts), body, err)
		}
	}
	for _, g := range r.Data.Groups {
		for _, rule := range g.Rules {
			if rule.State != "inactive" {
				t.Errorf("alert %s is %s on a healthy agent", rule.Name, rule.State)
			}
		}
	}
}

// TestReadyzFailsWhenTheTrunkProgramGoes: /readyz answers 200 while the
// agent forwards, and 503 once its program is detached from the trunk.
func TestReadyzFailsWhenTheTrunkProgramGoes(t *testing.T) {
	bpftool := tool(t, "bpftool", "apt-get install bpftool")
	e := newEnv(t, fmt.Sprintf("tlrdy%d", os.Getpid()%10000), 1)
	b := e.b
	a := e.startAgent()
	if !a.Client.Ready(t.Context()) {
		t.Fatal("not ready after start")
	}
	// The trunk's program, and the BPF link that holds it.
	out, _ := exec.Command("ip", "-n", b.Node.Netns, "-d", "link", "show", b.Node.Trunk).Output()
	m := regexp.MustCompile(`prog/xdp id (\d+)`).FindStringSubmatch(string(out))
	if m == nil {
		t.Fatalf("no XDP program on the trunk:\n%s", out)
	}
	var links []struct {
		ID     int    `json:"id"`
		Type   string `json:"type"`
		ProgID int    `json:"prog_id"`
	}
	js, err := exec.Command(bpftool, "-j", "link", "show").Output()
	if err != nil || json.Unmarshal(js, &links) != nil {
		t.Fatalf("bpftool link show: %v\n%s", err, js)
	}
	id := -1
	for _, l := range links {
		if l.Type == "xdp" && fmt.Sprint(l.ProgID) == m[1] {
			id = l.ID
		}
	}
	if id < 0 {
		t.Fatalf("no BPF link holds program %s: %s", m[1], js)
	}
	if out, err := exec.Command(bpftool, "link", "detach", "id", fmt.Sprint(id)).CombinedOutput(); err != nil {
		t.Fatalf("bpftool link detach: %v\n%s", err, out)
	}
	if a.Client.Ready(t.Context()) {
		t.Error("/readyz answered 200 with the trunk program detached")
	}
}
