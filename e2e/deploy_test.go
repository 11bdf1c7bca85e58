package e2e

import (
	"bufio"
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"reflect"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"go.yaml.in/yaml/v3"
	appsv1 "k8s.io/api/apps/v1"
	corev1 "k8s.io/api/core/v1"
	rbacv1 "k8s.io/api/rbac/v1"
	k8syaml "k8s.io/apimachinery/pkg/util/yaml"

	"github.com/trunkline/trunkline/agent"
	"github.com/trunkline/trunkline/bench/bed"
	"github.com/trunkline/trunkline/internal/kubetest"
)

// deployDir is the Kustomize base the tests render and apply.
const deployDir = "../deploy"

// manifests are deploy/'s files that hold Kubernetes objects (the
// Kustomize base lists them; kustomization.yaml itself is not one).
var manifests = []string{"serviceaccount.yaml", "rbac.yaml", "daemonset.yaml"}

// deployment is the Kustomize output, decoded.
type deployment struct {
	daemonSet   appsv1.DaemonSet
	configMap   corev1.ConfigMap
	clusterRole rbacv1.ClusterRole
	kinds       []string
}

// decodeManifests decodes a YAML stream of Kubernetes objects.
func decodeManifests(t *testing.T, raw []byte) deployment {
	t.Helper()
	var d deployment
	dec := k8syaml.NewYAMLOrJSONDecoder(bytes.NewReader(raw), 4096)
	for {
		var obj map[string]any
		if err := dec.Decode(&obj); errors.Is(err, io.EOF) {
			break
		} else if err != nil {
			t.Fatalf("decode manifests: %v", err)
		}
		if obj == nil {
			continue
		}
		b, _ := json.Marshal(obj)
		kind, _ := obj["kind"].(string)
		d.kinds = append(d.kinds, kind)
		var into any
		switch kind {
		case "DaemonSet":
			into = &d.daemonSet
		case "ConfigMap":
			into = &d.configMap
		case "ClusterRole":
			into = &d.clusterRole
		default:
			continue
		}
		if err := json.Unmarshal(b, into); err != nil {
			t.Fatalf("decode %s: %v", kind, err)
		}
	}
	return d
}

// agentContainer is the DaemonSet's agent container.
func (d deployment) agentContainer(t *testing.T) corev1.Container {
	t.Helper()
	for _, c := range d.daemonSet.Spec.Template.Spec.Containers {
		if c.Name == "agent" {
			return c
		}
	}
	t.Fatal("the DaemonSet has no container named agent")
	return corev1.Container{}
}

// kustomize renders deploy/ with kubectl's built-in Kustomize.
func kustomize(t *testing.T, kubectl string) []byte {
	t.Helper()
	out, err := exec.Command(kubectl, "kustomize", deployDir).Output()
	if err != nil {
		t.Fatalf("kubectl kustomize %s: %v\n%s", deployDir, err, stderrOf(err))
	}
	return out
}

func stderrOf(err error) []byte {
	var ee *exec.ExitError
	if errors.As(err, &ee) {
		return ee.Stderr
	}
	return nil
}

// kubectlBinary finds kubectl: $TRUNKLINE_KUBECTL, bin/kubectl, PATH's,
// or else builds deploy/tools/kubectl from the module proxy (about a
// minute; cached in the user's cache directory). Debian's archive has no
// current kubectl: its kubernetes-client 1.20 has no --validate=strict.
func kubectlBinary(t *testing.T) string {
	t.Helper()
	if p := os.Getenv("TRUNKLINE_KUBECTL"); p != "" {
		return p
	}
	if p, err := exec.LookPath(filepath.Join(binDir(), "kubectl")); err == nil {
		return p
	}
	if p, err := exec.LookPath("kubectl"); err == nil {
		return p
	}
	p, err := buildKubectl(t.Logf)
	if err != nil {
		if os.Getenv("CI") == "true" {
			t.Fatalf("no kubectl: %v", err)
		}
		t.Skipf("no kubectl: %v", err)
	}
	return p
}

// buildKubectl builds deploy/tools/kubectl once per version of its module
// into the user's cache directory, as internal/kubetest builds
// kube-apiserver.
func buildKubectl(logf func(string, ...any)) (string, error) {
	dir, err := filepath.Abs(filepath.Join(deployDir, "tools", "kubectl"))
	if err != nil {
		return "", err
	}
	h := sha256.New()
	var version string
	for _, f := range []string{"go.mod", "go.sum", "main.go"} {
		b, err := os.ReadFile(filepath.Join(dir, f))
		if err != nil {
			return "", err
		}
		h.Write(b)
		if m := regexp.MustCompile(`k8s.io/kubectl v0\.(\d+\.\d+)`).FindSubmatch(b); f == "go.mod" && m != nil {
			version = "v1." + string(m[1])
		}
	}
	cache, err := os.UserCacheDir()
	if err != nil {
		return "", err
	}
	out := filepath.Join(cache, "trunkline-kubectl", hex.EncodeToString(h.Sum(nil))[:16], "kubectl")
	if _, err := os.Stat(out); err == nil {
		return out, nil
	}
	if err := os.MkdirAll(filepath.Dir(out), 0o755); err != nil {
		return "", err
	}
	lock, err := os.OpenFile(out+".lock", os.O_CREATE|os.O_RDWR, 0o644)
	if err != nil {
		return "", err
	}
	defer lock.Close()
	if err := syscall.Flock(int(lock.Fd()), syscall.LOCK_EX); err != nil {
		return "", err
	}
	if _, err := os.Stat(out); err == nil {
		return out, nil // built by another process meanwhile
	}
	logf("building kubectl %s from deploy/tools/kubectl into %s (about a minute)", version, out)
	cmd := exec.Command("go", "build", "-mod=readonly", "-trimpath",
		"-ldflags=-X k8s.io/component-base/version.gitVersion="+version, "-o", out+".tmp", ".")
	cmd.Dir = dir
	cmd.Env = append(os.Environ(), "GOWORK=off", "GOFLAGS=-buildvcs=false", "CGO_ENABLED=0")
	if b, err := cmd.CombinedOutput(); err != nil {
		return "", fmt.Errorf("go build in %s: %w\n%s", dir, err, b)
	}
	return out, os.Rename(out+".tmp", out)
}

// renderedDeployment renders deploy/ without a kubectl when one is not
// needed by the test otherwise: kubectl if present, else the base's own
// files put together as Kustomize would for this base.
func renderedDeployment(t *testing.T) deployment {
	t.Helper()
	if p := os.Getenv("TRUNKLINE_KUBECTL"); p != "" {
		return decodeManifests(t, kustomize(t, p))
	}
	if p, err := exec.LookPath("kubectl"); err == nil {
		return decodeManifests(t, kustomize(t, p))
	}
	return decodeManifests(t, baseWithoutKustomize(t))
}

// baseWithoutKustomize puts the base together without Kustomize: its
// resources and the ConfigMap its generator makes (namespace kube-system
// is already in every file). TestDeployKustomizeMatchesTheBase checks
// that Kustomize's output says the same where kubectl is present.
func baseWithoutKustomize(t *testing.T) []byte {
	t.Helper()
	var k struct {
		Resources          []string `yaml:"resources"`
		ConfigMapGenerator []struct {
			Name  string   `yaml:"name"`
			Files []string `yaml:"files"`
		} `yaml:"configMapGenerator"`
	}
	readYAML(t, filepath.Join(deployDir, "kustomization.yaml"), &k)
	var out bytes.Buffer
	for _, r := range k.Resources {
		b, err := os.ReadFile(filepath.Join(deployDir, r))
		if err != nil {
			t.Fatal(err)
		}
		out.Write(b)
		out.WriteString("\n---\n")
	}
	for _, g := range k.ConfigMapGenerator {
		cm := corev1.ConfigMap{Data: map[string]string{}}
		cm.APIVersion, cm.Kind, cm.Name, cm.Namespace = "v1", "ConfigMap", g.Name, "kube-system"
		for _, f := range g.Files {
			b, err := os.ReadFile(filepath.Join(deployDir, f))
			if err != nil {
				t.Fatal(err)
			}
			cm.Data[filepath.Base(f)] = string(b)
		}
		b, _ := json.Marshal(cm)
		out.Write(b)
		out.WriteString("\n---\n")
	}
	return out.Bytes()
}

func readYAML(t *testing.T, path string, v any) {
	t.Helper()
	b, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	if err := yaml.Unmarshal(b, v); err != nil {
		t.Fatalf("%s: %v", path, err)
	}
}

// TestDeployManifestsSayWhatTheAgentNeeds checks the DaemonSet against
// the agent: exactly its capabilities, probes on its metricsAddr, the
// strategy that never runs two agents on a node, and RBAC for exactly what
// agent/k8s watches.
func TestDeployManifestsSayWhatTheAgentNeeds(t *testing.T) {
	d := renderedDeployment(t)
	c := d.agentContainer(t)
	sc := c.SecurityContext
	if sc == nil || sc.Capabilities == nil {
		t.Fatal("the agent container has no securityContext.capabilities")
	}
	var add []string
	for _, c := range sc.Capabilities.Add {
		add = append(add, string(c))
	}
	if !slices.Equal(add, agent.Capabilities()) {
		t.Errorf("capabilities added: %v; the agent needs exactly %v", add, agent.Capabilities())
	}
	if len(sc.Capabilities.Drop) != 1 || sc.Capabilities.Drop[0] != "ALL" {
		t.Errorf("capabilities dropped: %v; want [ALL]", sc.Capabilities.Drop)
	}
	if sc.Privileged != nil && *sc.Privileged {
		t.Error("the agent container is privileged")
	}
	spec := d.daemonSet.Spec.Template.Spec
	if !spec.HostNetwork || spec.PriorityClassName != "system-node-critical" {
		t.Errorf("hostNetwork %v, priorityClassName %q; want true, system-node-critical", spec.HostNetwork, spec.PriorityClassName)
	}
	if len(spec.Tolerations) != 1 || spec.Tolerations[0].Operator != corev1.TolerationOpExists || spec.Tolerations[0].Key != "" {
		t.Errorf("tolerations %+v; want one that tolerates every taint", spec.Tolerations)
	}
	ru := d.daemonSet.Spec.UpdateStrategy.RollingUpdate
	if d.daemonSet.Spec.UpdateStrategy.Type != appsv1.RollingUpdateDaemonSetStrategyType || ru == nil ||
		ru.MaxUnavailable.String() != "1" || ru.MaxSurge == nil || ru.MaxSurge.String() != "0" {
		t.Errorf("update strategy %+v; want RollingUpdate, maxUnavailable 1, maxSurge 0 (two agents cannot own one trunk)", d.daemonSet.Spec.UpdateStrategy)
	}

	// Every node config in the ConfigMap is one the agent accepts, and its
	// metricsAddr is where the probes look.
	nodes := 0
	for key, text := range d.configMap.Data {
		if !strings.HasSuffix(key, ".yaml") {
			continue
		}
		nodes++
		cfg := loadConfigText(t, key, text)
		if _, err := agent.New(cfg, agent.Options{}); err != nil {
			t.Errorf("ConfigMap key %s: %v", key, err)
		}
		for name, p := range map[string]*corev1.Probe{"startup": c.StartupProbe, "liveness": c.LivenessProbe, "readiness": c.ReadinessProbe} {
			if p == nil || p.HTTPGet == nil {
				t.Errorf("no %s probe over HTTP", name)
				continue
			}
			if got := net.JoinHostPort(p.HTTPGet.Host, p.HTTPGet.Port.String()); got != cfg.MetricsAddr {
				t.Errorf("%s probe goes to %s; %s's metricsAddr is %s", name, got, key, cfg.MetricsAddr)
			}
		}
	}
	if nodes == 0 {
		t.Error("the ConfigMap holds no node config (<node name>.yaml)")
	}
	if _, ok := d.configMap.Data["10-trunkline.conflist"]; !ok {
		t.Error("the ConfigMap holds no 10-trunkline.conflist for install-cni")
	}

	var rules []string
	for _, r := range d.clusterRole.Rules {
		for _, g := range r.APIGroups {
			for _, res := range r.Resources {
				rules = append(rules, fmt.Sprintf("%s/%s:%s", g, res, strings.Join(r.Verbs, ",")))
			}
		}
	}
	slices.Sort(rules)
	// agent/k8s runs informers (list + watch) on exactly these.
	if want := []string{"/services:list,watch", "discovery.k8s.io/endpointslices:list,watch"}; !slices.Equal(rules, want) {
		t.Errorf("ClusterRole grants %v; the agent watches %v and needs nothing more", rules, want)
	}
}

// loadConfigText parses an agent config as agent.LoadConfig does.
func loadConfigText(t *testing.T, name, text string) agent.Config {
	t.Helper()
	path := filepath.Join(t.TempDir(), name)
	os.WriteFile(path, []byte(text), 0o644)
	cfg, err := agent.LoadConfig(path)
	if err != nil {
		t.Fatalf("ConfigMap key %s: %v", name, err)
	}
	return cfg
}

// TestDeployKustomizeMatchesTheBase: where kubectl is present, its
// Kustomize output holds the base's objects (the tests without kubectl
// read the base directly).
func TestDeployKustomizeMatchesTheBase(t *testing.T) {
	kubectl := kubectlBinary(t)
	got := decodeManifests(t, kustomize(t, kubectl))
	want := decodeManifests(t, baseWithoutKustomize(t))
	slices.Sort(got.kinds)
	slices.Sort(want.kinds)
	if !slices.Equal(got.kinds, want.kinds) {
		t.Errorf("kustomize renders %v, the base has %v", got.kinds, want.kinds)
	}
	if !reflect.DeepEqual(got.configMap.Data, want.configMap.Data) || got.configMap.Name != want.configMap.Name {
		t.Errorf("kustomize's ConfigMap %s differs from the base's files", got.configMap.Name)
	}
	if !reflect.DeepEqual(got.daemonSet.Spec, want.daemonSet.Spec) {
		t.Error("kustomize's DaemonSet differs from deploy/daemonset.yaml")
	}
}

// TestDeployMonitoringKustomizes: deploy/monitoring renders to the one
// PrometheusRule, in the agent's namespace, with the alerts the rule tests
// check.
func TestDeployMonitoringKustomizes(t *testing.T) {
	out, err := exec.Command(kubectlBinary(t), "kustomize", deployDir+"/monitoring").Output()
	if err != nil {
		t.Fatalf("kubectl kustomize deploy/monitoring: %v\n%s", err, stderrOf(err))
	}
	d := decodeManifests(t, out)
	if !slices.Equal(d.kinds, []string{"PrometheusRule"}) {
		t.Fatalf("deploy/monitoring renders %v, want one PrometheusRule", d.kinds)
	}
	var rule struct {
		Metadata struct{ Name, Namespace string }
		Spec     struct {
			Groups []struct {
				Rules []struct{ Alert string }
			}
		}
	}
	if err := k8syaml.Unmarshal(out, &rule); err != nil {
		t.Fatal(err)
	}
	n := 0
	for _, g := range rule.Spec.Groups {
		n += len(g.Rules)
	}
	_, alerts := ruleGroups(t, false)
	if rule.Metadata.Name != "trunkline" || rule.Metadata.Namespace != "kube-system" || n != len(alerts) {
		t.Errorf("rendered PrometheusRule %s/%s with %d rules, want kube-system/trunkline with %d", rule.Metadata.Namespace, rule.Metadata.Name, n, len(alerts))
	}
}

// TestDeployDockerfileBuildsLikeMake: the image's binaries are built with
// the same environment, flags and packages as `make build`, and copied to
// where the DaemonSet runs them.
func TestDeployDockerfileBuildsLikeMake(t *testing.T) {
	mk, err := os.ReadFile("../Makefile")
	if err != nil {
		t.Fatal(err)
	}
	vars := map[string]string{}
	var makeBuild string
	lines := strings.Split(string(mk), "\n")
	for i, l := range lines {
		if m := regexp.MustCompile(`^(\w+)\s*:?=\s*(.*)$`).FindStringSubmatch(l); m != nil {
			vars[m[1]] = strings.TrimSpace(m[2])
		}
		if strings.HasPrefix(l, "build:") && i+1 < len(lines) {
			makeBuild = lines[i+1]
		}
	}
	makeBuild = regexp.MustCompile(`\$\((\w+)\)`).ReplaceAllStringFunc(makeBuild, func(v string) string {
		name := v[2 : len(v)-1]
		if name == "GO" {
			return "go"
		}
		return vars[name]
	})
	df, err := os.ReadFile("../Dockerfile")
	if err != nil {
		t.Fatal(err)
	}
	var dockerBuild string
	for _, l := range strings.Split(string(df), "\n") {
		if strings.HasPrefix(l, "RUN ") && strings.Contains(l, " go build ") {
			dockerBuild = strings.TrimPrefix(l, "RUN ")
		}
	}
	mf, df2 := goBuild(t, "Makefile", makeBuild), goBuild(t, "Dockerfile", dockerBuild)
	if !reflect.DeepEqual(mf, df2) {
		t.Errorf("the Dockerfile builds with %+v;\n`make build` with %+v", df2, mf)
	}
	if !mf.static() {
		t.Errorf("make build is not static: %+v", mf)
	}

	// The runtime stage copies both binaries to where the DaemonSet runs them.
	d := renderedDeployment(t)
	want := map[string]bool{d.agentContainer(t).Command[0]: true}
	for _, c := range d.daemonSet.Spec.Template.Spec.InitContainers {
		want[c.Command[0]] = true
		for _, a := range c.Args {
			if v, ok := strings.CutPrefix(a, "--src="); ok {
				want[v] = true
			}
		}
	}
	copied := map[string]bool{}
	for _, l := range strings.Split(string(df), "\n") {
		f := strings.Fields(l)
		if len(f) >= 4 && f[0] == "COPY" && strings.HasPrefix(f[1], "--from=build") {
			dst := f[len(f)-1]
			for _, src := range f[2 : len(f)-1] {
				copied[filepath.Join(dst, filepath.Base(src))] = true
			}
		}
	}
	for p := range want {
		if !copied[p] {
			t.Errorf("the DaemonSet runs %s; the Dockerfile copies %v", p, copied)
		}
	}
}

// goBuildLine is a `go build` command line, what matters of it.
type goBuildLine struct {
	Env      []string
	Flags    []string
	Packages []string
}

func (g goBuildLine) static() bool {
	return slices.Contains(g.Env, "CGO_ENABLED=0")
}

// goBuild parses `ENV=V… go build [flags] [-o DIR] PKG…`; -o and empty
// variables ($(GOFLAGS)) are left out.
func goBuild(t *testing.T, where, line string) goBuildLine {
	t.Helper()
	f := shellFields(line)
	var g goBuildLine
	i := 0
	for ; i < len(f) && strings.Contains(f[i], "=") && !strings.HasPrefix(f[i], "-"); i++ {
		g.Env = append(g.Env, f[i])
	}
	if i+1 >= len(f) || f[i] != "go" || f[i+1] != "build" {
		t.Fatalf("%s: no go build line: %q", where, line)
	}
	for i += 2; i < len(f); i++ {
		switch {
		case f[i] == "-o":
			i++
		case f[i] == "-ldflags" || f[i] == "-tags" || f[i] == "-gcflags":
			g.Flags = append(g.Flags, f[i]+"="+f[i+1])
			i++
		case strings.HasPrefix(f[i], "-"):
			g.Flags = append(g.Flags, f[i])
		default:
			g.Packages = append(g.Packages, f[i])
		}
	}
	slices.Sort(g.Env)
	slices.Sort(g.Flags)
	return g
}

// shellFields splits a command line on spaces, keeping single-quoted words
// whole.
func shellFields(s string) []string {
	var out []string
	var cur strings.Builder
	quoted, inWord := false, false
	for _, r := range s {
		switch {
		case r == '\'':
			quoted = !quoted
			inWord = true
		case (r == ' ' || r == '\t') && !quoted:
			if inWord {
				out = append(out, cur.String())
				cur.Reset()
				inWord = false
			}
		default:
			cur.WriteRune(r)
			inWord = true
		}
	}
	if inWord {
		out = append(out, cur.String())
	}
	return out
}

// configKeys lists every key of agent.Config as a path: umem.frames,
// pods[].vlan, ….
func configKeys(t reflect.Type, prefix string) []string {
	var keys []string
	for i := range t.NumField() {
		f := t.Field(i)
		tag, _, _ := strings.Cut(f.Tag.Get("yaml"), ",")
		if tag == "" || tag == "-" {
			continue
		}
		path := prefix + tag
		keys = append(keys, path)
		ft := f.Type
		if ft.Kind() == reflect.Slice {
			ft = ft.Elem()
			path += "[]"
		}
		if ft.Kind() == reflect.Struct {
			keys = append(keys, configKeys(ft, path+".")...)
		}
	}
	return keys
}

// TestDeployDocsNameEveryConfigKeyAndFlag keeps docs/configuration.md
// complete: every key of agent.Config (from its yaml tags) and every flag
// of run, install-cni and uninstall-cni (from their -h) appears in it,
// and its capability list is the agent's.
func TestDeployDocsNameEveryConfigKeyAndFlag(t *testing.T) {
	b, err := os.ReadFile("../docs/configuration.md")
	if err != nil {
		t.Fatal(err)
	}
	doc := string(b)
	for _, k := range configKeys(reflect.TypeFor[agent.Config](), "") {
		if !strings.Contains(doc, "`"+k+"`") {
			t.Errorf("docs/configuration.md does not document the config key `%s`", k)
		}
	}
	for _, cmd := range []string{"run", "install-cni", "uninstall-cni"} {
		out, _ := exec.Command(binary, cmd, "-h").CombinedOutput()
		flags := regexp.MustCompile(`(?m)^  -([\w-]+)`).FindAllStringSubmatch(string(out), -1)
		if len(flags) == 0 {
			t.Fatalf("trunkline %s -h lists no flags:\n%s", cmd, out)
		}
		for _, f := range flags {
			if !strings.Contains(doc, "`--"+f[1]) {
				t.Errorf("docs/configuration.md does not document `trunkline %s --%s`", cmd, f[1])
			}
		}
	}
	for _, c := range agent.Capabilities() {
		if !strings.Contains(doc, "`CAP_"+c+"`") {
			t.Errorf("docs/configuration.md does not list the capability `CAP_%s`", c)
		}
	}
}

// TestDeploy runs what the manifests say on a bed: the rendered manifests
// pass a real kube-apiserver's server-side dry run with strict validation;
// the agent, started exactly as the DaemonSet's container (command, args,
// env, the ConfigMap's config, its capabilities and nothing more), becomes
// ready on the probes' endpoints and forwards; without any one required
// capability it refuses to start, naming it.
func TestDeploy(t *testing.T) {
	d := renderedDeployment(t)
	e := newEnv(t, fmt.Sprintf("tldep%d", os.Getpid()%10000), 1)
	b := e.b
	kubeconfig, _ := kubetest.StartIn(t, b.Node.Netns)

	t.Run("manifests pass server-side dry-run with strict validation", func(t *testing.T) {
		kubectl := kubectlBinary(t)
		rendered := filepath.Join(t.TempDir(), "rendered.yaml")
		os.WriteFile(rendered, kustomize(t, kubectl), 0o644)
		files := []string{rendered}
		for _, m := range manifests {
			files = append(files, filepath.Join(deployDir, m))
		}
		kubectlIn := func(args ...string) ([]byte, error) {
			args = append([]string{"netns", "exec", b.Node.Netns, kubectl, "--kubeconfig", kubeconfig}, args...)
			return exec.Command("ip", args...).CombinedOutput()
		}
		run := func(args ...string) string {
			out, err := kubectlIn(args...)
			if err != nil {
				t.Errorf("kubectl %s: %v\n%s", strings.Join(args, " "), err, out)
			}
			return string(out)
		}
		// What the manifests rely on the cluster for: built in.
		run("get", "priorityclass", "system-node-critical")
		run("get", "namespace", "kube-system")
		for _, f := range files {
			out := run("apply", "--dry-run=server", "--validate=strict", "-f", f)
			t.Logf("%s:\n%s", filepath.Base(f), out)
		}
		// The check has teeth: a misspelt field fails it.
		ds, _ := os.ReadFile(filepath.Join(deployDir, "daemonset.yaml"))
		typo := filepath.Join(t.TempDir(), "typo.yaml")
		os.WriteFile(typo, bytes.Replace(ds, []byte("hostNetwork: true"), []byte("hostNetwork: true\n      hostNetwrk: true"), 1), 0o644)
		if out, err := kubectlIn("apply", "--dry-run=server", "--validate=strict", "-f", typo); err == nil || !strings.Contains(string(out), "hostNetwrk") {
			t.Errorf("a DaemonSet with a misspelt field passed the dry run (%v):\n%s", err, out)
		}
	})

	c := d.agentContainer(t)
	caps := []string{}
	for _, c := range c.SecurityContext.Capabilities.Add {
		caps = append(caps, string(c))
	}

	t.Run("the agent runs as the DaemonSet says", func(t *testing.T) {
		a := startAsDaemonSet(t, b, d, kubeconfig, caps)
		for _, p := range []*corev1.Probe{c.StartupProbe, c.LivenessProbe, c.ReadinessProbe} {
			if code, body := probe(t, b.Node.Netns, p.HTTPGet); code != http.StatusOK {
				t.Errorf("probe %s:%s%s answered %d %q", p.HTTPGet.Host, p.HTTPGet.Port.String(), p.HTTPGet.Path, code, body)
			}
		}
		if st, err := os.Stat(a.socket); err != nil || st.Mode().Perm() != 0o600 {
			t.Errorf("API socket %s: %v, %v; want mode 0600", a.socket, st, err)
		}
		ctx, cancel := context.WithTimeout(t.Context(), 5*time.Second)
		defer cancel()
		if rtt, err := bed.Ping(ctx, b.Wire.Netns, b.Pods[0].IP); err != nil {
			t.Errorf("ping %s from the VPC: %v\nagent log:\n%s", b.Pods[0].IP, err, a.log.String())
		} else {
			t.Logf("ping %s through the agent: %v", b.Pods[0].IP, rtt)
		}
		if eff := a.capEff(t); eff != capMask(t, caps) {
			t.Errorf("the agent ran with capabilities %#x, want %#x (%v)", eff, capMask(t, caps), caps)
		}
		if err := a.stop(3 * time.Second); err != nil {
			t.Errorf("agent exit: %v\n%s", err, a.log.String())
		}
	})

	t.Run("Capabilities: without any one it refuses to start and names it", func(t *testing.T) {
		for _, drop := range caps {
			less := slices.DeleteFunc(slices.Clone(caps), func(c string) bool { return c == drop })
			a := startAsDaemonSetNoWait(t, b, d, kubeconfig, less)
			if drop == "SYS_NICE" {
				// Optional: the workers then run SCHED_OTHER, and the agent says so.
				if err := a.waitReady(c.ReadinessProbe.HTTPGet, 10*time.Second); err != nil {
					t.Errorf("without CAP_SYS_NICE: %v\n%s", err, a.log.String())
				} else if !strings.Contains(a.log.String(), "CAP_SYS_NICE") {
					t.Errorf("without CAP_SYS_NICE the agent runs but does not warn:\n%s", a.log.String())
				}
				a.stop(3 * time.Second)
				continue
			}
			exited, err := a.wait(10 * time.Second)
			if !exited || err == nil {
				t.Errorf("without CAP_%s the agent is still running or exited 0 (%v):\n%s", drop, err, a.log.String())
				continue
			}
			log := a.log.String()
			if !strings.Contains(log, "missing capabilities: the agent lacks CAP_"+drop) || strings.Contains(log, "panic") {
				t.Errorf("without CAP_%s the agent says:\n%s\nwant it to name CAP_%s", drop, log, drop)
			}
			t.Logf("without CAP_%s: %s", drop, strings.TrimSpace(log))
		}
	})
}

// agentProc is an agent started as the DaemonSet's container.
type agentProc struct {
	cmd    *exec.Cmd
	done   chan error
	log    *syncBuffer
	netns  string
	socket string
}

type syncBuffer struct {
	syncWriter
	buf bytes.Buffer
}

func (s *syncBuffer) String() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.buf.String()
}

// startAsDaemonSet starts the agent container on bed b and waits until
// its readiness probe answers 200.
func startAsDaemonSet(t *testing.T, b *bed.Bed, d deployment, kubeconfig string, caps []string) *agentProc {
	t.Helper()
	a := startAsDaemonSetNoWait(t, b, d, kubeconfig, caps)
	if err := a.waitReady(d.agentContainer(t).ReadinessProbe.HTTPGet, 10*time.Second); err != nil {
		t.Fatalf("agent: %v\n%s", err, a.log.String())
	}
	return a
}

// startAsDaemonSetNoWait runs the agent container as the kubelet would on
// a node named after the ConfigMap's first node config, on bed b:
//
//   - command and args as the container says, $(VAR) expanded from its
//     env (NODE_NAME from spec.nodeName); /usr/local/bin/trunkline is the
//     binary under test;
//   - each volume mount is a directory of the test (the ConfigMap's files
//     in one, empty hostPath directories for the others), and paths in
//     the args and the config under a mount path move with it;
//   - the node config is the ConfigMap's, with the keys that describe the
//     node replaced by the bed's (trunk, nodeIP, gatewayMAC, gatewayIP,
//     branches, nonMasqueradeCIDRs) and the bed's pods as static pods
//     (the bed has no CNI calls);
//   - --kube-in-cluster becomes --kubeconfig of the test's apiserver (the
//     service account mount is the kubelet's doing);
//   - capabilities: drop ALL and add caps (the bounding set, as the
//     runtime sets it for a root container); allowPrivilegeEscalation
//     false is no_new_privs; RLIMIT_MEMLOCK is 8 MiB, systemd's default
//     that containers inherit.
func startAsDaemonSetNoWait(t *testing.T, b *bed.Bed, d deployment, kubeconfig string, caps []string) *agentProc {
	t.Helper()
	c := d.agentContainer(t)
	setpriv := tool(t, "setpriv", "apt-get install util-linux")
	prlimit := tool(t, "prlimit", "apt-get install util-linux")

	nodeName := ""
	for key := range d.configMap.Data {
		if n, ok := strings.CutSuffix(key, ".yaml"); ok && (nodeName == "" || n < nodeName) {
			nodeName = n
		}
	}
	env := map[string]string{}
	for _, e := range c.Env {
		switch {
		case e.ValueFrom != nil && e.ValueFrom.FieldRef != nil && e.ValueFrom.FieldRef.FieldPath == "spec.nodeName":
			env[e.Name] = nodeName
		case e.ValueFrom == nil:
			env[e.Name] = e.Value
		default:
			t.Fatalf("env %s: the test does not emulate %+v", e.Name, e.ValueFrom)
		}
	}

	// The container's mounts, as directories of the test.
	root := t.TempDir()
	volumes := map[string]corev1.Volume{}
	for _, v := range d.daemonSet.Spec.Template.Spec.Volumes {
		volumes[v.Name] = v
	}
	type mount struct{ container, host string }
	var mounts []mount
	var configDir string
	for _, m := range c.VolumeMounts {
		host := filepath.Join(root, m.Name)
		os.MkdirAll(host, 0o755)
		v := volumes[m.Name]
		if v.ConfigMap != nil {
			if v.ConfigMap.Name != d.configMap.Name {
				t.Fatalf("volume %s: ConfigMap %s, the manifests have %s", m.Name, v.ConfigMap.Name, d.configMap.Name)
			}
			configDir = host
		}
		mounts = append(mounts, mount{m.MountPath, host})
	}
	hostPath := func(p string) string {
		for _, m := range mounts {
			if rest, ok := strings.CutPrefix(p, m.container+"/"); ok {
				return filepath.Join(m.host, rest)
			}
		}
		return p
	}
	if configDir == "" {
		t.Fatal("the agent container does not mount the ConfigMap")
	}

	bedCfg, err := agent.LoadConfig(b.ConfigPath)
	if err != nil {
		t.Fatal(err)
	}
	var socket string
	for key, text := range d.configMap.Data {
		if strings.HasSuffix(key, ".yaml") {
			cfg := loadConfigText(t, key, text)
			cfg.Trunk, cfg.NodeIP, cfg.GatewayMAC, cfg.GatewayIP = bedCfg.Trunk, bedCfg.NodeIP, bedCfg.GatewayMAC, bedCfg.GatewayIP
			cfg.Branches, cfg.NonMasqueradeCIDRs, cfg.Pods = bedCfg.Branches, bedCfg.NonMasqueradeCIDRs, bedCfg.Pods
			cfg.APISocket, cfg.RegistryFile = hostPath(orDefault(cfg.APISocket, agent.DefaultAPISocket)), hostPath(orDefault(cfg.RegistryFile, "/var/lib/trunkline/registry.json"))
			if key == nodeName+".yaml" {
				socket = cfg.APISocket
			}
			out, err := yaml.Marshal(cfg)
			if err != nil {
				t.Fatal(err)
			}
			text = string(out)
		}
		os.WriteFile(filepath.Join(configDir, key), []byte(text), 0o644)
	}

	expand := regexp.MustCompile(`\$\((\w+)\)`)
	var argv []string
	for _, a := range append(slices.Clone(c.Command), c.Args...) {
		a = expand.ReplaceAllStringFunc(a, func(v string) string { return env[v[2:len(v)-1]] })
		switch {
		case a == "/usr/local/bin/trunkline":
			a = binary
		case a == "--kube-in-cluster":
			a = "--kubeconfig=" + kubeconfig
		case strings.HasPrefix(a, "--") && strings.Contains(a, "=/"):
			k, v, _ := strings.Cut(a, "=")
			a = k + "=" + hostPath(v)
		}
		argv = append(argv, a)
	}
	if sc := c.SecurityContext; sc.RunAsUser == nil || *sc.RunAsUser != 0 || sc.AllowPrivilegeEscalation == nil || *sc.AllowPrivilegeEscalation {
		t.Fatalf("securityContext %+v: the test emulates runAsUser 0 and allowPrivilegeEscalation false", sc)
	}
	bounding := "-all"
	for _, c := range caps {
		bounding += ",+" + strings.ToLower(c)
	}
	args := append([]string{"netns", "exec", b.Node.Netns, prlimit, "--memlock=8388608:8388608",
		setpriv, "--no-new-privs", "--inh-caps=-all", "--ambient-caps=-all", "--bounding-set=" + bounding, "--"}, argv...)
	a := &agentProc{cmd: exec.Command("ip", args...), done: make(chan error, 1), log: &syncBuffer{}, netns: b.Node.Netns, socket: socket}
	a.log.w = &a.log.buf
	a.cmd.Stdout, a.cmd.Stderr = a.log, a.log
	a.cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
	t.Logf("as the DaemonSet: %s", strings.Join(argv, " "))
	if err := a.cmd.Start(); err != nil {
		t.Fatal(err)
	}
	go func() { a.done <- a.cmd.Wait() }()
	t.Cleanup(func() { a.stop(3 * time.Second) })
	return a
}

func orDefault(s, def string) string {
	if s == "" {
		return def
	}
	return s
}

// waitReady polls the probe until it answers 200, the agent exits or the
// timeout passes.
func (a *agentProc) waitReady(g *corev1.HTTPGetAction, timeout time.Duration) error {
	deadline := time.Now().Add(timeout)
	last := ""
	for time.Now().Before(deadline) {
		select {
		case err := <-a.done:
			a.done <- err
			return fmt.Errorf("exited before it was ready: %v", err)
		case <-time.After(50 * time.Millisecond):
		}
		code, body, err := get(a.netns, g)
		if err == nil && code == http.StatusOK {
			return nil
		}
		last = fmt.Sprint(code, body, err)
	}
	return fmt.Errorf("not ready after %v: %s", timeout, last)
}

// wait waits for the agent to exit by itself.
func (a *agentProc) wait(timeout time.Duration) (exited bool, err error) {
	select {
	case err := <-a.done:
		a.done <- err
		return true, err
	case <-time.After(timeout):
		return false, nil
	}
}

// stop sends SIGTERM (as the kubelet does) and waits for the exit.
func (a *agentProc) stop(timeout time.Duration) error {
	select {
	case err := <-a.done:
		a.done <- err
		return nil // already gone
	default:
	}
	syscall.Kill(-a.cmd.Process.Pid, syscall.SIGTERM)
	select {
	case err := <-a.done:
		a.done <- err
		return err
	case <-time.After(timeout):
		syscall.Kill(-a.cmd.Process.Pid, syscall.SIGKILL)
		err := <-a.done
		a.done <- err
		return fmt.Errorf("did not exit within %v of SIGTERM", timeout)
	}
}

// capEff is the running agent's effective capability set.
func (a *agentProc) capEff(t *testing.T) uint64 {
	t.Helper()
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/status", a.cmd.Process.Pid))
	if err != nil {
		t.Fatal(err)
	}
	m := regexp.MustCompile(`(?m)^CapEff:\s*([0-9a-f]+)$`).FindSubmatch(b)
	if m == nil {
		t.Fatalf("no CapEff in /proc/%d/status", a.cmd.Process.Pid)
	}
	v, _ := strconv.ParseUint(string(m[1]), 16, 64)
	return v
}

// capMask is the capability set named by caps ("NET_ADMIN", …).
func capMask(t *testing.T, caps []string) uint64 {
	t.Helper()
	numbers := map[string]uint{"NET_ADMIN": 12, "NET_RAW": 13, "IPC_LOCK": 14, "SYS_ADMIN": 21, "SYS_NICE": 23, "PERFMON": 38, "BPF": 39}
	var m uint64
	for _, c := range caps {
		n, ok := numbers[c]
		if !ok {
			t.Fatalf("capability %s: add its number to capMask", c)
		}
		m |= 1 << n
	}
	return m
}

// probe does what the kubelet's httpGet probe does, from the node's
// network namespace (the pod's, with hostNetwork).
func probe(t *testing.T, netns string, g *corev1.HTTPGetAction) (int, string) {
	t.Helper()
	code, body, err := get(netns, g)
	if err != nil {
		t.Errorf("probe %s:%s%s: %v", g.Host, g.Port.String(), g.Path, err)
	}
	return code, body
}

func get(netns string, g *corev1.HTTPGetAction) (int, string, error) {
	addr, err := netip.ParseAddrPort(net.JoinHostPort(g.Host, g.Port.String()))
	if err != nil {
		return 0, "", fmt.Errorf("probe address: %w (the test wants a numeric host and port)", err)
	}
	var c net.Conn
	err = bed.InNetns(netns, func() error {
		var err error
		c, err = net.DialTimeout("tcp", addr.String(), time.Second)
		return err
	})
	if err != nil {
		return 0, "", err
	}
	defer c.Close()
	c.SetDeadline(time.Now().Add(2 * time.Second))
	fmt.Fprintf(c, "GET %s HTTP/1.1\r\nHost: %s\r\nUser-Agent: kube-probe/1.37\r\nConnection: close\r\n\r\n", g.Path, addr)
	resp, err := http.ReadResponse(bufio.NewReader(c), nil)
	if err != nil {
		return 0, "", err
	}
	defer resp.Body.Close()
	body, _ := io.ReadAll(resp.Body)
	return resp.StatusCode, strings.TrimSpace(string(body)), nil
}
