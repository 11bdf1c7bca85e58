package main

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"path/filepath"
	"strings"
)

// The names install-cni gives what it puts on the host.
const (
	cniPluginName = "trunkline-cni"
	cniConfName   = "10-trunkline.conflist"
	// tmpPrefix starts the name of a file being written; a crashed install
	// leaves such files, and the next one removes them.
	tmpPrefix = ".trunkline-install-"
)

// defaultConflist is deploy/10-trunkline.conflist (a test keeps them
// equal): what install-cni writes without --conflist.
const defaultConflist = `{
  "cniVersion": "1.1.0",
  "name": "trunkline",
  "plugins": [
    {
      "type": "trunkline-cni",
      "agentSocket": "/run/trunkline/trunkline.sock",
      "mtu": 1500
    }
  ]
}
`

// cniInstall is what install-cni puts on the host.
type cniInstall struct {
	// Plugin is the trunkline-cni binary to copy.
	Plugin string
	// BinDir and ConfDir are the host's CNI directories.
	BinDir, ConfDir string
	// Conflist is the network configuration list to write.
	Conflist []byte
}

// installCNI copies the plugin into BinDir and writes the conflist into
// ConfDir, each through a temporary file in the same directory renamed over
// the old one, so the runtime never sees a partial file. A file already
// right is left alone; leftovers of a crashed install are removed. It
// returns what it did, a line per file.
func installCNI(o cniInstall) (report []string, err error) {
	if err := checkConflist(o.Conflist); err != nil {
		return nil, err
	}
	plugin, err := os.ReadFile(o.Plugin)
	if err != nil {
		return nil, fmt.Errorf("install-cni: plugin binary: %w (set --src)", err)
	}
	for _, f := range []struct {
		dir, name string
		data      []byte
		mode      fs.FileMode
	}{
		{o.BinDir, cniPluginName, plugin, 0o755},
		{o.ConfDir, cniConfName, o.Conflist, 0o644},
	} {
		if err := os.MkdirAll(f.dir, 0o755); err != nil {
			return report, fmt.Errorf("install-cni: %w", err)
		}
		removeLeftovers(f.dir)
		path := filepath.Join(f.dir, f.name)
		if sameFile(path, f.data, f.mode) {
			report = append(report, "unchanged "+path)
			continue
		}
		if err := writeAtomic(f.dir, f.name, f.data, f.mode); err != nil {
			return report, fmt.Errorf("install-cni: %w", err)
		}
		report = append(report, "installed "+path)
	}
	return report, nil
}

// uninstallCNI removes what installCNI put in binDir and confDir; what is
// already gone is fine.
func uninstallCNI(binDir, confDir string) (report []string, err error) {
	var errs []error
	for _, path := range []string{filepath.Join(confDir, cniConfName), filepath.Join(binDir, cniPluginName)} {
		switch err := os.Remove(path); {
		case err == nil:
			report = append(report, "removed "+path)
		case errors.Is(err, fs.ErrNotExist):
			report = append(report, "absent "+path)
		default:
			errs = append(errs, fmt.Errorf("uninstall-cni: %w", err))
		}
	}
	removeLeftovers(binDir)
	removeLeftovers(confDir)
	return report, errors.Join(errs...)
}

// checkConflist checks that b is a conflist whose plugins include
// trunkline-cni.
func checkConflist(b []byte) error {
	var c struct {
		CNIVersion string `json:"cniVersion"`
		Name       string `json:"name"`
		Plugins    []struct {
			Type string `json:"type"`
		} `json:"plugins"`
	}
	if err := json.Unmarshal(b, &c); err != nil {
		return fmt.Errorf("install-cni: conflist: %w", err)
	}
	if c.CNIVersion == "" || c.Name == "" {
		return errors.New("install-cni: conflist: cniVersion and name are required")
	}
	for _, p := range c.Plugins {
		if p.Type == cniPluginName {
			return nil
		}
	}
	return fmt.Errorf("install-cni: conflist: no plugin of type %s", cniPluginName)
}

// sameFile reports whether path is a regular file with data and mode.
func sameFile(path string, data []byte, mode fs.FileMode) bool {
	st, err := os.Lstat(path)
	if err != nil || !st.Mode().IsRegular() || st.Mode().Perm() != mode || st.Size() != int64(len(data)) {
		return false
	}
	b, err := os.ReadFile(path)
	return err == nil && bytes.Equal(b, data)
}

// writeAtomic writes data to dir/name through a synced temporary file in
// dir renamed over it.
func writeAtomic(dir, name string, data []byte, mode fs.FileMode) (err error) {
	f, err := os.CreateTemp(dir, tmpPrefix+name+"-*")
	if err != nil {
		return err
	}
	defer func() {
		if err != nil {
			f.Close()
			os.Remove(f.Name())
		}
	}()
	if _, err = f.Write(data); err != nil {
		return err
	}
	if err = f.Chmod(mode); err != nil {
		return err
	}
	if err = f.Sync(); err != nil {
		return err
	}
	if err = f.Close(); err != nil {
		return err
	}
	if err = os.Rename(f.Name(), filepath.Join(dir, name)); err != nil {
		return err
	}
	if d, derr := os.Open(dir); derr == nil {
		d.Sync() // the rename itself survives a crash
		d.Close()
	}
	return nil
}

// removeLeftovers removes the temporary files a crashed install left in dir.
func removeLeftovers(dir string) {
	ents, _ := os.ReadDir(dir)
	for _, e := range ents {
		if strings.HasPrefix(e.Name(), tmpPrefix) {
			os.Remove(filepath.Join(dir, e.Name()))
		}
	}
}

// cmdInstallCNI is `trunkline install-cni`, the DaemonSet's init container.
func cmdInstallCNI(_ context.Context, args []string, out io.Writer) error {
	fs := newFlags("install-cni")
	src := fs.String("src", "", "the trunkline-cni binary to install (default: trunkline-cni next to this program)")
	binDir := fs.String("bin-dir", "/opt/cni/bin", "the host's CNI plugin directory")
	confDir := fs.String("conf-dir", "/etc/cni/net.d", "the host's CNI configuration directory")
	conflist := fs.String("conflist", "", "the conflist to write as "+cniConfName+" (default: deploy/"+cniConfName+"'s content)")
	if err := fs.Parse(args); err != nil {
		return err
	}
	if *src == "" {
		exe, err := os.Executable()
		if err != nil {
			return fmt.Errorf("install-cni: %w (set --src)", err)
		}
		*src = filepath.Join(filepath.Dir(exe), cniPluginName)
	}
	o := cniInstall{Plugin: *src, BinDir: *binDir, ConfDir: *confDir, Conflist: []byte(defaultConflist)}
	if *conflist != "" {
		b, err := os.ReadFile(*conflist)
		if err != nil {
			return fmt.Errorf("install-cni: %w", err)
		}
		o.Conflist = b
	}
	report, err := installCNI(o)
	for _, l := range report {
		fmt.Fprintln(out, l)
	}
	return err
}

// cmdUninstallCNI is `trunkline uninstall-cni`: it removes what
// install-cni put on the host.
func cmdUninstallCNI(_ context.Context, args []string, out io.Writer) error {
	fs := newFlags("uninstall-cni")
	binDir := fs.String("bin-dir", "/opt/cni/bin", "the host's CNI plugin directory")
	confDir := fs.String("conf-dir", "/etc/cni/net.d", "the host's CNI configuration directory")
	if err := fs.Parse(args); err != nil {
		return err
	}
	report, err := uninstallCNI(*binDir, *confDir)
	for _, l := range report {
		fmt.Fprintln(out, l)
	}
	return err
}
