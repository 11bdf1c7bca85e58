package e2e

import (
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"

	"go.yaml.in/yaml/v3"
)

// ruleGroups reads deploy/monitoring/prometheusrule.yaml's rule groups,
// as a Prometheus rule file wants them; without annotations if bare.
func ruleGroups(t *testing.T, bare bool) (file []byte, alerts []string) {
	t.Helper()
	data, err := os.ReadFile("../deploy/monitoring/prometheusrule.yaml")
	if err != nil {
		t.Fatal(err)
	}
	var doc struct {
		Spec struct {
			Groups []map[string]any `yaml:"groups"`
		} `yaml:"spec"`
	}
	if err := yaml.Unmarshal(data, &doc); err != nil {
		t.Fatal(err)
	}
	for _, g := range doc.Spec.Groups {
		rules, _ := g["rules"].([]any)
		for _, r := range rules {
			rule, _ := r.(map[string]any)
			if name, ok := rule["alert"].(string); ok {
				alerts = append(alerts, name)
			}
			if bare {
				delete(rule, "annotations")
			}
		}
	}
	file, err = yaml.Marshal(map[string]any{"groups": doc.Spec.Groups})
	if err != nil {
		t.Fatal(err)
	}
	return file, alerts
}

// TestAlertRules checks the shipped alerts with promtool: the rules and
// their annotation templates parse, and each alert fires on the series
// that should fire it, not before its `for`, and never on a healthy
// agent's series (e2e/testdata/alerts-test.yaml). Every alert has a case
// there and a line in docs/monitoring.md.
func TestAlertRules(t *testing.T) {
	promtool := tool(t, "promtool", "apt-get install prometheus")
	dir := t.TempDir()
	full, alerts := ruleGroups(t, false)
	if err := os.WriteFile(filepath.Join(dir, "full.yaml"), full, 0o644); err != nil {
		t.Fatal(err)
	}
	if out, err := exec.Command(promtool, "check", "rules", filepath.Join(dir, "full.yaml")).CombinedOutput(); err != nil {
		t.Fatalf("promtool check rules: %v\n%s", err, out)
	}
	// The unit tests are about when alerts fire: promtool would compare
	// the rendered annotations too.
	bare, _ := ruleGroups(t, true)
	cases, err := os.ReadFile("testdata/alerts-test.yaml")
	if err != nil {
		t.Fatal(err)
	}
	os.WriteFile(filepath.Join(dir, "rules.yaml"), bare, 0o644)
	os.WriteFile(filepath.Join(dir, "alerts-test.yaml"), cases, 0o644)
	if out, err := exec.Command(promtool, "test", "rules", filepath.Join(dir, "alerts-test.yaml")).CombinedOutput(); err != nil {
		t.Fatalf("promtool test rules: %v\n%s", err, out)
	}
	var tests struct {
		Tests []struct {
			AlertRuleTest []struct {
				Alertname string `yaml:"alertname"`
				ExpAlerts []any  `yaml:"exp_alerts"`
			} `yaml:"alert_rule_test"`
		} `yaml:"tests"`
	}
	if err := yaml.Unmarshal(cases, &tests); err != nil {
		t.Fatal(err)
	}
	fired := map[string]bool{}
	for _, tc := range tests.Tests {
		for _, a := range tc.AlertRuleTest {
			if len(a.ExpAlerts) > 0 {
				fired[a.Alertname] = true
			}
		}
	}
	doc, err := os.ReadFile("../docs/monitoring.md")
	if err != nil {
		t.Fatal(err)
	}
	for _, a := range alerts {
		if !fired[a] {
			t.Errorf("no case in testdata/alerts-test.yaml fires %s", a)
		}
		if !strings.Contains(string(doc), "`"+a+"`") {
			t.Errorf("docs/monitoring.md does not describe %s", a)
		}
	}
}
