// Package kubetest runs a real kube-apiserver on a real etcd for tests:
// no controllers, no kubelet, no scheduler — objects are what the test
// writes.
//
// etcd is Debian's (apt-get install -y etcd-server). kube-apiserver is
// built from the module proxy out of the separate module in ./apiserver,
// once, into os.UserCacheDir()/trunkline-kubetest/<hash of that module>/;
// the first build takes 8 to 15 minutes on two cores, more than go test's
// default timeout: build it first with
//
//	go run ./internal/kubetest/cmd/build-apiserver
//
// or run such tests with -timeout 30m. TRUNKLINE_KUBE_APISERVER names a
// binary to use instead.
package kubetest

import (
	"bytes"
	"context"
	"crypto/rand"
	"crypto/rsa"
	"crypto/sha256"
	"crypto/tls"
	"crypto/x509"
	"encoding/hex"
	"encoding/pem"
	"errors"
	"fmt"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/trunkline/trunkline/internal/privtest"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/rest"
)

// EnvAPIServer names a kube-apiserver binary to use instead of building
// one.
const EnvAPIServer = "TRUNKLINE_KUBE_APISERVER"

// adminToken is the static bearer token of the apiserver's only user, in
// group system:masters.
const adminToken = "trunkline-kubetest-admin"

// startTimeout bounds how long etcd and the apiserver may take to become
// ready.
const startTimeout = 90 * time.Second

// Start runs etcd and kube-apiserver on free loopback ports until the
// test ends, and returns a kubeconfig file for them and a client. It
// skips when not root or when etcd or the apiserver cannot be had, unless
// CI=true, where it fails instead.
func Start(t testing.TB) (kubeconfig string, client kubernetes.Interface) {
	t.Helper()
	return StartIn(t, "")
}

// StartIn is Start inside the named network namespace ("" for the test's
// own): etcd and the apiserver listen on that namespace's loopback, where
// an agent running in it (a node's host network) reaches them; the client
// returned dials from inside it too.
func StartIn(t testing.TB, netns string) (kubeconfig string, client kubernetes.Interface) {
	t.Helper()
	unavailable := t.Skipf
	if os.Getenv("CI") == "true" {
		unavailable = t.Fatalf
	}
	if os.Geteuid() != 0 {
		unavailable("kubetest: needs root (runs etcd and kube-apiserver); run the tests as root")
		return "", nil
	}
	etcdBin, err := exec.LookPath("etcd")
	if err != nil {
		unavailable("kubetest: no etcd: apt-get install -y etcd-server (%v)", err)
		return "", nil
	}
	apiBin, err := APIServer(t.Logf)
	if err != nil {
		unavailable("kubetest: no kube-apiserver: %v", err)
		return "", nil
	}
	dir := t.TempDir()
	n := ns(netns)
	etcdURL := n.startEtcd(t, etcdBin, filepath.Join(dir, "etcd"))
	host := n.startAPIServer(t, apiBin, etcdURL, filepath.Join(dir, "apiserver"))

	kubeconfig = filepath.Join(dir, "kubeconfig")
	if err := os.WriteFile(kubeconfig, []byte(fmt.Sprintf(kubeconfigTemplate, host, adminToken)), 0o600); err != nil {
		t.Fatalf("kubetest: %v", err)
	}
	rc := RESTConfig(host)
	rc.Dial = n.dial
	client, err = kubernetes.NewForConfig(rc)
	if err != nil {
		t.Fatalf("kubetest: client: %v", err)
	}
	return kubeconfig, client
}

const kubeconfigTemplate = `apiVersion: v1
kind: Config
clusters:
- name: kubetest
  cluster:
    server: %s
    insecure-skip-tls-verify: true
users:
- name: admin
  user:
    token: %s
contexts:
- name: kubetest
  context:
    cluster: kubetest
    user: admin
current-context: kubetest
`

// RESTConfig is the admin's client configuration for the apiserver at
// host (https://127.0.0.1:port).
func RESTConfig(host string) *rest.Config {
	return &rest.Config{
		Host:            host,
		BearerToken:     adminToken,
		TLSClientConfig: rest.TLSClientConfig{Insecure: true},
		QPS:             100,
		Burst:           200,
	}
}

// APIServer returns the kube-apiserver binary: $TRUNKLINE_KUBE_APISERVER,
// or the cached build of ./apiserver, building it if need be (minutes;
// concurrent callers, in any process, wait for one build). logf tells of
// a build.
func APIServer(logf func(format string, args ...any)) (string, error) {
	if p := os.Getenv(EnvAPIServer); p != "" {
		return p, nil
	}
	_, self, _, ok := runtime.Caller(0)
	if !ok {
		return "", errors.New("cannot locate kubetest's source")
	}
	modDir := filepath.Join(filepath.Dir(self), "apiserver")
	h := sha256.New()
	var version string
	for _, f := range []string{"go.mod", "go.sum", "main.go"} {
		b, err := os.ReadFile(filepath.Join(modDir, f))
		if err != nil {
			return "", fmt.Errorf("apiserver module: %w (set %s to a kube-apiserver binary)", err, EnvAPIServer)
		}
		h.Write(b)
		if f == "go.mod" {
			version = kubernetesVersion(b)
		}
	}
	// The binary reports the release it is built from, as a release
	// build does (else v0.0.0-master).
	ldflags := "-X k8s.io/component-base/version.gitVersion=" + version
	if major, minor, ok := strings.Cut(strings.TrimPrefix(version, "v"), "."); ok {
		minor, _, _ = strings.Cut(minor, ".")
		ldflags += " -X k8s.io/component-base/version.gitMajor=" + major + " -X k8s.io/component-base/version.gitMinor=" + minor
	}
	h.Write([]byte(ldflags))
	cache, err := os.UserCacheDir()
	if err != nil {
		return "", err
	}
	dir := filepath.Join(cache, "trunkline-kubetest", hex.EncodeToString(h.Sum(nil))[:16])
	bin := filepath.Join(dir, "kube-apiserver")
	if _, err := os.Stat(bin); err == nil {
		return bin, nil
	}
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return "", err
	}
	lock, err := os.OpenFile(filepath.Join(dir, "lock"), os.O_CREATE|os.O_RDWR, 0o644)
	if err != nil {
		return "", err
	}
	defer lock.Close()
	if err := syscall.Flock(int(lock.Fd()), syscall.LOCK_EX); err != nil {
		return "", fmt.Errorf("lock %s: %w", lock.Name(), err)
	}
	if _, err := os.Stat(bin); err == nil {
		return bin, nil // built by another process while we waited
	}
	goBin, err := exec.LookPath("go")
	if err != nil {
		goBin = filepath.Join(runtime.GOROOT(), "bin", "go")
	}
	tmp := bin + ".tmp"
	logf("kubetest: building kube-apiserver into %s (first time: ~15 minutes on 2 cores)", bin)
	start := time.Now()
	cmd := exec.Command(goBin, "build", "-mod=readonly", "-buildvcs=false", "-ldflags="+ldflags, "-o", tmp, ".")
	cmd.Dir = modDir
	cmd.Env = append(os.Environ(), "GOWORK=off", "GOFLAGS=")
	if out, err := cmd.CombinedOutput(); err != nil {
		return "", fmt.Errorf("go build in %s: %w\n%s", modDir, err, out)
	}
	if err := os.Rename(tmp, bin); err != nil {
		return "", err
	}
	logf("kubetest: built kube-apiserver in %v", time.Since(start).Round(time.Second))
	return bin, nil
}

// kubernetesVersion is the k8s.io/kubernetes version that go.mod requires.
func kubernetesVersion(gomod []byte) string {
	for _, line := range strings.Split(string(gomod), "\n") {
		f := strings.Fields(strings.TrimPrefix(strings.TrimSpace(line), "require "))
		if len(f) >= 2 && f[0] == "k8s.io/kubernetes" {
			return f[1]
		}
	}
	return "v0.0.0"
}

// ns is the network namespace etcd and the apiserver run in; "" is the
// test's own.
type ns string

// in runs fn inside the namespace (on a thread that is thrown away).
func (n ns) in(fn func() error) error {
	if n == "" {
		return fn()
	}
	return privtest.In(string(n), fn)
}

// dial opens a connection from inside the namespace.
func (n ns) dial(ctx context.Context, network, addr string) (net.Conn, error) {
	var c net.Conn
	err := n.in(func() error {
		var d net.Dialer
		var err error
		c, err = d.DialContext(ctx, network, addr)
		return err
	})
	return c, err
}

// command runs a program inside the namespace.
func (n ns) command(bin string, args ...string) *exec.Cmd {
	if n == "" {
		return exec.Command(bin, args...)
	}
	return exec.Command("ip", append([]string{"netns", "exec", string(n), bin}, args...)...)
}

// httpClient is an HTTP client that dials from inside the namespace.
func (n ns) httpClient() *http.Client {
	return &http.Client{Transport: &http.Transport{DialContext: n.dial,
		TLSClientConfig: &tls.Config{InsecureSkipVerify: true}}}
}

// freePort returns a loopback TCP port of the namespace that was free a
// moment ago.
func (n ns) freePort(t testing.TB) int {
	t.Helper()
	var port int
	err := n.in(func() error {
		l, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			return err
		}
		defer l.Close()
		port = l.Addr().(*net.TCPAddr).Port
		return nil
	})
	if err != nil {
		t.Fatalf("kubetest: free port: %v", err)
	}
	return port
}

// process runs cmd with its output in logPath until the test ends, then
// stops it (SIGTERM, then SIGKILL). exited closes when it exits. (No
// Pdeathsig: it fires when the forking OS thread exits, and Go discards
// threads that switched network namespace.)
func process(t testing.TB, name, logPath string, cmd *exec.Cmd) (exited <-chan struct{}) {
	t.Helper()
	logf, err := os.Create(logPath)
	if err != nil {
		t.Fatalf("kubetest: %v", err)
	}
	cmd.Stdout, cmd.Stderr = logf, logf
	if err := cmd.Start(); err != nil {
		logf.Close()
		t.Fatalf("kubetest: start %s: %v", name, err)
	}
	done := make(chan struct{})
	go func() {
		cmd.Wait()
		logf.Close()
		close(done)
	}()
	t.Cleanup(func() {
		cmd.Process.Signal(syscall.SIGTERM)
		select {
		case <-done:
		case <-time.After(10 * time.Second):
			cmd.Process.Kill()
			<-done
		}
		if t.Failed() {
			t.Logf("kubetest: %s log (%s):\n%s", name, logPath, tail(logPath, 40))
		}
	})
	return done
}

// tail returns the last n lines of a file.
func tail(path string, n int) string {
	b, _ := os.ReadFile(path)
	lines := strings.Split(strings.TrimRight(string(b), "\n"), "\n")
	if len(lines) > n {
		lines = lines[len(lines)-n:]
	}
	return strings.Join(lines, "\n")
}

// waitReady polls url until it answers 200 OK, the deadline passes or
// exited closes.
func waitReady(t testing.TB, name, url, logPath string, exited <-chan struct{}, client *http.Client, header http.Header) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), startTimeout)
	defer cancel()
	var last string
	for {
		req, _ := http.NewRequestWithContext(ctx, http.MethodGet, url, nil)
		for k, v := range header {
			req.Header[k] = v
		}
		resp, err := client.Do(req)
		if err == nil {
			body := make([]byte, 4096)
			n, _ := resp.Body.Read(body)
			resp.Body.Close()
			if resp.StatusCode == http.StatusOK {
				return
			}
			last = fmt.Sprintf("%s: %s", resp.Status, bytes.TrimSpace(body[:n]))
		} else {
			last = err.Error()
		}
		select {
		case <-ctx.Done():
			t.Fatalf("kubetest: %s not ready after %v: %s\nlog %s:\n%s", name, startTimeout, last, logPath, tail(logPath, 40))
		case <-exited:
			t.Fatalf("kubetest: %s exited before it was ready: %s\nlog %s:\n%s", name, last, logPath, tail(logPath, 40))
		case <-time.After(100 * time.Millisecond):
		}
	}
}

func (n ns) startEtcd(t testing.TB, bin, dir string) (clientURL string) {
	t.Helper()
	if err := os.MkdirAll(dir, 0o700); err != nil {
		t.Fatalf("kubetest: %v", err)
	}
	clientURL = "http://127.0.0.1:" + strconv.Itoa(n.freePort(t))
	peerURL := "http://127.0.0.1:" + strconv.Itoa(n.freePort(t))
	cmd := n.command(bin,
		"--name=kubetest",
		"--data-dir="+filepath.Join(dir, "data"),
		"--listen-client-urls="+clientURL,
		"--advertise-client-urls="+clientURL,
		"--listen-peer-urls="+peerURL,
		"--initial-advertise-peer-urls="+peerURL,
		"--initial-cluster=kubetest="+peerURL,
		"--initial-cluster-state=new",
		"--unsafe-no-fsync", // a test's data need not survive a crash
		"--log-level=warn",
	)
	cmd.Env = etcdEnv()
	logPath := filepath.Join(dir, "etcd.log")
	exited := process(t, "etcd", logPath, cmd)
	waitReady(t, "etcd", clientURL+"/health", logPath, exited, n.httpClient(), nil)
	return clientURL
}

// etcdEnv is the environment without ETCD_* variables, which etcd would
// read as flags.
func etcdEnv() []string {
	var env []string
	for _, kv := range os.Environ() {
		if !strings.HasPrefix(kv, "ETCD_") {
			env = append(env, kv)
		}
	}
	return env
}

func (n ns) startAPIServer(t testing.TB, bin, etcdURL, dir string) (host string) {
	t.Helper()
	certDir := filepath.Join(dir, "certs")
	if err := os.MkdirAll(certDir, 0o700); err != nil {
		t.Fatalf("kubetest: %v", err)
	}
	key, err := rsa.GenerateKey(rand.Reader, 2048)
	if err != nil {
		t.Fatalf("kubetest: service account key: %v", err)
	}
	saKey := filepath.Join(dir, "sa.key")
	pemKey := pem.EncodeToMemory(&pem.Block{Type: "RSA PRIVATE KEY", Bytes: x509.MarshalPKCS1PrivateKey(key)})
	tokens := filepath.Join(dir, "tokens.csv")
	if err := errors.Join(
		os.WriteFile(saKey, pemKey, 0o600),
		os.WriteFile(tokens, []byte(adminToken+`,admin,admin,"system:masters"`+"\n"), 0o600),
	); err != nil {
		t.Fatalf("kubetest: %v", err)
	}
	port := n.freePort(t)
	host = "https://127.0.0.1:" + strconv.Itoa(port)
	cmd := n.command(bin,
		"--etcd-servers="+etcdURL,
		"--bind-address=127.0.0.1",
		"--advertise-address=127.0.0.1",
		"--secure-port="+strconv.Itoa(port),
		"--cert-dir="+certDir,
		"--service-account-issuer=https://kubernetes.default.svc",
		"--service-account-key-file="+saKey,
		"--service-account-signing-key-file="+saKey,
		"--token-auth-file="+tokens,
		"--authorization-mode=AlwaysAllow",
		"--service-cluster-ip-range=10.96.0.0/12",
		"--endpoint-reconciler-type=none",
		"--disable-admission-plugins=ServiceAccount",
		"--enable-priority-and-fairness=false",
		"--profiling=false",
		"--v=0",
	)
	logPath := filepath.Join(dir, "kube-apiserver.log")
	exited := process(t, "kube-apiserver", logPath, cmd)
	waitReady(t, "kube-apiserver", host+"/readyz", logPath, exited, n.httpClient(), http.Header{"Authorization": {"Bearer " + adminToken}})
	return host
}
