package agent

import (
	"os"
	"regexp"
	"strings"
	"testing"

	"github.com/prometheus/client_golang/prometheus"
	"go.yaml.in/yaml/v3"

	"github.com/trunkline/trunkline/dataplane"
)

// alertRule is one alerting rule of deploy/monitoring/prometheusrule.yaml.
type alertRule struct {
	Alert       string            `yaml:"alert"`
	Expr        string            `yaml:"expr"`
	Labels      map[string]string `yaml:"labels"`
	Annotations map[string]string `yaml:"annotations"`
}

func loadAlertRules(t *testing.T) []alertRule {
	t.Helper()
	data, err := os.ReadFile("../deploy/monitoring/prometheusrule.yaml")
	if err != nil {
		t.Fatal(err)
	}
	var doc struct {
		Kind string `yaml:"kind"`
		Spec struct {
			Groups []struct {
				Rules []alertRule `yaml:"rules"`
			} `yaml:"groups"`
		} `yaml:"spec"`
	}
	if err := yaml.Unmarshal(data, &doc); err != nil {
		t.Fatal(err)
	}
	var rules []alertRule
	for _, g := range doc.Spec.Groups {
		rules = append(rules, g.Rules...)
	}
	if doc.Kind != "PrometheusRule" || len(rules) == 0 {
		t.Fatalf("deploy/monitoring/prometheusrule.yaml: kind %q, %d rules", doc.Kind, len(rules))
	}
	return rules
}

// exportedMetrics are the agent's metric names, each with its labels, from
// the collector's descriptions and the registration API's histogram.
func exportedMetrics(t *testing.T) map[string]map[string]bool {
	t.Helper()
	descs := make(chan *prometheus.Desc, 64)
	go func() {
		collector{}.Describe(descs)
		newCNIRequests().Describe(descs)
		close(descs)
	}()
	nameRe := regexp.MustCompile(`fqName: "([^"]+)"`)
	labelsRe := regexp.MustCompile(`variableLabels: \{([^}]*)\}`)
	m := map[string]map[string]bool{}
	for d := range descs {
		s := d.String()
		name := nameRe.FindStringSubmatch(s)
		labels := labelsRe.FindStringSubmatch(s)
		if name == nil || labels == nil {
			t.Fatalf("cannot read %s", s)
		}
		set := map[string]bool{"instance": true, "job": true}
		for _, l := range strings.Split(labels[1], ",") {
			if l = strings.TrimSpace(l); l != "" {
				set[l] = true
			}
		}
		m[name[1]] = set
	}
	// The histogram's series.
	h := "trunkline_cni_request_duration_seconds"
	for _, suffix := range []string{"_count", "_sum", "_bucket"} {
		m[h+suffix] = m[h]
	}
	m[h+"_bucket"] = map[string]bool{"le": true}
	for l := range m[h] {
		m[h+"_bucket"][l] = true
	}
	return m
}

// The alerts shipped in deploy/monitoring name only metrics and labels the
// agent exports, label values it produces, and each says how bad it is and
// what happened: an alert on a renamed metric would never fire.
func TestAlertRulesNameWhatTheAgentExports(t *testing.T) {
	exported := exportedMetrics(t)
	values := map[string]map[string]bool{
		"kind":  {"rx_ring_full": true, "fill_ring_empty": true, "rx_dropped": true, "tx_invalid": true},
		"state": {"free": true, "fill": true, "tx": true, "held": true},
		"op":    {"allocate": true, "attach": true, "release": true, "gc": true},
	}
	values["reason"] = map[string]bool{}
	for r := range dataplane.NumDropReasons {
		values["reason"][r.String()] = true
	}
	selector := regexp.MustCompile(`\b(trunkline_[a-z_]+)(\{[^}]*\})?`)
	matcher := regexp.MustCompile(`(\w+)\s*(=~|!~|!=|=)\s*"([^"]*)"`)
	seen := map[string]bool{}
	for _, r := range loadAlertRules(t) {
		if seen[r.Alert] {
			t.Errorf("alert %s twice", r.Alert)
		}
		seen[r.Alert] = true
		switch r.Labels["severity"] {
		case "critical", "warning", "info":
		default:
			t.Errorf("%s: severity %q, want critical, warning or info", r.Alert, r.Labels["severity"])
		}
		if r.Annotations["summary"] == "" || r.Annotations["description"] == "" {
			t.Errorf("%s: no summary or description", r.Alert)
		}
		sels := selector.FindAllStringSubmatch(r.Expr, -1)
		if len(sels) == 0 {
			t.Errorf("%s: no trunkline metric in %q", r.Alert, r.Expr)
		}
		for _, s := range sels {
			labels, ok := exported[s[1]]
			if !ok {
				t.Errorf("%s: the agent exports no %s", r.Alert, s[1])
				continue
			}
			for _, m := range matcher.FindAllStringSubmatch(s[2], -1) {
				if !labels[m[1]] {
					t.Errorf("%s: %s has no label %q", r.Alert, s[1], m[1])
				}
				known, check := values[m[1]]
				if !check || m[2] == "!=" || m[2] == "!~" {
					continue
				}
				for _, v := range strings.Split(m[3], "|") {
					if !known[v] && !strings.ContainsAny(v, ".*+?[") {
						t.Errorf("%s: %s{%s} is never %q", r.Alert, s[1], m[1], v)
					}
				}
			}
		}
	}
}
