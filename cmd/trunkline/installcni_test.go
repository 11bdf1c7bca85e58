package main

import (
	"bytes"
	"context"
	"encoding/json"
	"io"
	"os"
	"path/filepath"
	"reflect"
	"strings"
	"testing"
)

// hostTree is a temporary host: a plugin binary to install and empty CNI
// directories (bin/ and net.d/ are created by the install).
func hostTree(t *testing.T) (src, binDir, confDir string, plugin []byte) {
	t.Helper()
	dir := t.TempDir()
	plugin = bytes.Repeat([]byte("\x7fELF plugin "), 10_000)
	src = filepath.Join(dir, "image", "trunkline-cni")
	os.MkdirAll(filepath.Dir(src), 0o755)
	if err := os.WriteFile(src, plugin, 0o755); err != nil {
		t.Fatal(err)
	}
	return src, filepath.Join(dir, "host", "opt", "cni", "bin"), filepath.Join(dir, "host", "etc", "cni", "net.d"), plugin
}

// checkInstalled checks the host tree holds exactly the plugin and the
// conflist, with their modes, and nothing else of ours.
func checkInstalled(t *testing.T, binDir, confDir string, plugin, conflist []byte) {
	t.Helper()
	for _, f := range []struct {
		path string
		data []byte
		mode os.FileMode
	}{{filepath.Join(binDir, "trunkline-cni"), plugin, 0o755}, {filepath.Join(confDir, "10-trunkline.conflist"), conflist, 0o644}} {
		st, err := os.Stat(f.path)
		if err != nil {
			t.Fatal(err)
		}
		if st.Mode().Perm() != f.mode {
			t.Errorf("%s: mode %v, want %v", f.path, st.Mode().Perm(), f.mode)
		}
		if b, _ := os.ReadFile(f.path); !bytes.Equal(b, f.data) {
			t.Errorf("%s: %d bytes differ from what was installed (%d)", f.path, len(b), len(f.data))
		}
	}
	for _, dir := range []string{binDir, confDir} {
		ents, _ := os.ReadDir(dir)
		for _, e := range ents {
			if strings.HasPrefix(e.Name(), tmpPrefix) {
				t.Errorf("temporary file %s left in %s", e.Name(), dir)
			}
		}
	}
}

func TestInstallCNITwiceIsIdempotent(t *testing.T) {
	src, binDir, confDir, plugin := hostTree(t)
	args := []string{"install-cni", "--src", src, "--bin-dir", binDir, "--conf-dir", confDir}
	var out bytes.Buffer
	if err := dispatch(context.Background(), args, &out); err != nil {
		t.Fatal(err)
	}
	if got := strings.Count(out.String(), "installed "); got != 2 {
		t.Errorf("first install said:\n%s\nwant two files installed", out.String())
	}
	checkInstalled(t, binDir, confDir, plugin, []byte(defaultConflist))
	pluginPath := filepath.Join(binDir, "trunkline-cni")
	before, _ := os.Stat(pluginPath)

	out.Reset()
	if err := dispatch(context.Background(), args, &out); err != nil {
		t.Fatalf("second install: %v", err)
	}
	if got := strings.Count(out.String(), "unchanged "); got != 2 {
		t.Errorf("second install said:\n%s\nwant both files unchanged", out.String())
	}
	checkInstalled(t, binDir, confDir, plugin, []byte(defaultConflist))
	if after, _ := os.Stat(pluginPath); !os.SameFile(before, after) {
		t.Error("second install replaced a plugin that was already right")
	}
}

func TestInstallCNIReplacesPartialInstallAtomically(t *testing.T) {
	src, binDir, confDir, plugin := hostTree(t)
	// What a crash or a non-atomic copy leaves: a truncated plugin, a
	// conflist of an older version, a temporary file, a wrong mode.
	os.MkdirAll(binDir, 0o755)
	os.MkdirAll(confDir, 0o755)
	pluginPath := filepath.Join(binDir, "trunkline-cni")
	os.WriteFile(pluginPath, plugin[:4096], 0o644)
	os.WriteFile(filepath.Join(confDir, "10-trunkline.conflist"), []byte(`{"cniVersion":"0.4.0"`), 0o644)
	os.WriteFile(filepath.Join(binDir, tmpPrefix+"trunkline-cni-123"), plugin[:100], 0o600)
	other := filepath.Join(confDir, "99-other.conflist")
	os.WriteFile(other, []byte("{}"), 0o644)
	old, _ := os.Stat(pluginPath)
	// A process still running the old binary keeps its file: install
	// renames a new file over the name, never writes into the old one.
	held, err := os.Open(pluginPath)
	if err != nil {
		t.Fatal(err)
	}
	defer held.Close()

	custom := []byte(`{"cniVersion":"1.1.0","name":"trunkline","plugins":[{"type":"trunkline-cni","agentSocket":"/run/trunkline/trunkline.sock","mtu":9000}]}`)
	conf := filepath.Join(t.TempDir(), "conflist")
	os.WriteFile(conf, custom, 0o644)
	var out bytes.Buffer
	if err := dispatch(context.Background(), []string{"install-cni", "--src", src, "--bin-dir", binDir, "--conf-dir", confDir, "--conflist", conf}, &out); err != nil {
		t.Fatal(err)
	}
	checkInstalled(t, binDir, confDir, plugin, custom)
	if now, _ := os.Stat(pluginPath); os.SameFile(old, now) {
		t.Error("the partial plugin was written in place, not replaced by a rename")
	}
	if b, _ := io.ReadAll(held); len(b) != 4096 {
		t.Errorf("the old plugin's open file changed under its reader: %d bytes", len(b))
	}
	if _, err := os.Stat(other); err != nil {
		t.Errorf("another network's conflist was touched: %v", err)
	}
}

func TestInstallCNIRefusesBadInput(t *testing.T) {
	src, binDir, confDir, _ := hostTree(t)
	for name, o := range map[string]cniInstall{
		"conflist not JSON":     {Plugin: src, BinDir: binDir, ConfDir: confDir, Conflist: []byte("plugins: []")},
		"conflist without us":   {Plugin: src, BinDir: binDir, ConfDir: confDir, Conflist: []byte(`{"cniVersion":"1.1.0","name":"x","plugins":[{"type":"bridge"}]}`)},
		"no plugin binary":      {Plugin: src + ".missing", BinDir: binDir, ConfDir: confDir, Conflist: []byte(defaultConflist)},
		"conflist without name": {Plugin: src, BinDir: binDir, ConfDir: confDir, Conflist: []byte(`{"cniVersion":"1.1.0","plugins":[{"type":"trunkline-cni"}]}`)},
	} {
		if _, err := installCNI(o); err == nil {
			t.Errorf("%s: install succeeded", name)
		}
		if _, err := os.Stat(filepath.Join(confDir, "10-trunkline.conflist")); err == nil {
			t.Fatalf("%s: a conflist was written", name)
		}
	}
}

func TestInstallCNIThenUninstallTwice(t *testing.T) {
	src, binDir, confDir, _ := hostTree(t)
	if _, err := installCNI(cniInstall{Plugin: src, BinDir: binDir, ConfDir: confDir, Conflist: []byte(defaultConflist)}); err != nil {
		t.Fatal(err)
	}
	other := filepath.Join(binDir, "host-local")
	os.WriteFile(other, []byte("another plugin"), 0o755)
	os.WriteFile(filepath.Join(confDir, tmpPrefix+"10-trunkline.conflist-9"), []byte("{"), 0o644)
	args := []string{"uninstall-cni", "--bin-dir", binDir, "--conf-dir", confDir}
	for i := range 2 {
		var out bytes.Buffer
		if err := dispatch(context.Background(), args, &out); err != nil {
			t.Fatalf("uninstall %d: %v", i+1, err)
		}
		want := "removed "
		if i == 1 {
			want = "absent "
		}
		if got := strings.Count(out.String(), want); got != 2 {
			t.Errorf("uninstall %d said:\n%s\nwant two lines %q", i+1, out.String(), want)
		}
		for _, dir := range []string{binDir, confDir} {
			ents, _ := os.ReadDir(dir)
			for _, e := range ents {
				if e.Name() != "host-local" {
					t.Errorf("uninstall %d left %s in %s", i+1, e.Name(), dir)
				}
			}
		}
	}
	if _, err := os.Stat(other); err != nil {
		t.Errorf("another plugin was removed: %v", err)
	}
	// Uninstalling from a host that never had the directories is fine too.
	if _, err := uninstallCNI(filepath.Join(t.TempDir(), "none"), filepath.Join(t.TempDir(), "none")); err != nil {
		t.Error(err)
	}
}

// TestDefaultConflistIsDeploys: install-cni without --conflist writes what
// deploy/10-trunkline.conflist holds.
func TestDefaultConflistIsDeploys(t *testing.T) {
	b, err := os.ReadFile("../../deploy/10-trunkline.conflist")
	if err != nil {
		t.Fatal(err)
	}
	var want, got any
	if err := json.Unmarshal(b, &want); err != nil {
		t.Fatal(err)
	}
	json.Unmarshal([]byte(defaultConflist), &got)
	if !reflect.DeepEqual(got, want) {
		t.Errorf("install-cni's default conflist:\n%s\ndiffers from deploy/10-trunkline.conflist:\n%s", defaultConflist, b)
	}
}
