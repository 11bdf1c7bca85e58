package agent

import (
	"encoding/json"
	"errors"
	"fmt"
	"net/http"
	"net/netip"
	"os"
	"path/filepath"
	"slices"

	"github.com/trunkline/trunkline/vlan"
	"github.com/vishvananda/netlink"
)

// Registration is a pod interface the CNI plugin registered: the branch
// attachment it was given and, once attached, its host veth.
type Registration struct {
	ContainerID string `json:"containerID"`
	Ifname      string `json:"ifname"`
	Netns       string `json:"netns,omitempty"`
	VLAN        uint16 `json:"vlan"`
	IP          string `json:"ip"` // the pod's address, /32
	MAC         string `json:"mac"`
	Gateway     string `json:"gateway"`
	HostVeth    string `json:"hostVeth,omitempty"`
	// State is "allocated" (the plugin is wiring the pod) or "attached"
	// (the agent forwards its traffic).
	State string `json:"state"`
	// ID is the attachment's slot in the dataplane.
	ID uint16 `json:"id"`
}

// Registration states.
const (
	StateAllocated = "allocated"
	StateAttached  = "attached"
)

type regKey struct{ containerID, ifname string }

// Branch is one branch attachment a node owns: a VLAN on the trunk and the
// address and MAC that go with it.
type Branch struct {
	VLAN uint16
	IP   netip.Addr
	MAC  string
}

// BranchProvider supplies the node's branch attachments. The config file's
// `branches:` is one (configBranches); a cloud ENI API can be another.
type BranchProvider interface {
	// Branches lists the branches the node owns now, in preference order.
	Branches() []Branch
}

// configBranches are the branches the config file lists.
type configBranches []podSettings

// Branches implements BranchProvider.
func (c configBranches) Branches() []Branch {
	out := make([]Branch, len(c))
	for i, b := range c {
		out[i] = Branch{VLAN: uint16(b.VLAN), IP: b.ip, MAC: b.PodConfig.MAC}
	}
	return out
}

// ErrPoolEmpty reports that every branch attachment is in use.
var ErrPoolEmpty = errors.New("no free branch attachment on this node")

// registry is the agent's record of registered pods; Agent.regMu guards it.
type registry struct {
	path string
	regs map[regKey]*Registration
}

// load reads the registry file; a missing file is an empty registry.
func (r *registry) load() error {
	r.regs = map[regKey]*Registration{}
	b, err := os.ReadFile(r.path)
	if errors.Is(err, os.ErrNotExist) {
		return nil
	}
	if err != nil {
		return fmt.Errorf("read registry: %w", err)
	}
	var regs []*Registration
	if err := json.Unmarshal(b, &regs); err != nil {
		return fmt.Errorf("registry %s is damaged (%v); move it away to start empty", r.path, err)
	}
	for _, g := range regs {
		r.regs[regKey{g.ContainerID, g.Ifname}] = g
	}
	return nil
}

// save writes the registry atomically: a temporary file, fsync, rename.
func (r *registry) save() error {
	regs := make([]*Registration, 0, len(r.regs))
	for _, g := range r.regs {
		regs = append(regs, g)
	}
	slices.SortFunc(regs, func(a, b *Registration) int { return int(a.ID) - int(b.ID) })
	b, err := json.MarshalIndent(regs, "", "  ")
	if err != nil {
		return err
	}
	if err := os.MkdirAll(filepath.Dir(r.path), 0o700); err != nil {
		return fmt.Errorf("registry dir: %w", err)
	}
	f, err := os.CreateTemp(filepath.Dir(r.path), ".registry-*")
	if err != nil {
		return fmt.Errorf("save registry: %w", err)
	}
	defer os.Remove(f.Name())
	if _, err := f.Write(b); err != nil {
		f.Close()
		return fmt.Errorf("save registry: %w", err)
	}
	if err := f.Sync(); err != nil {
		f.Close()
		return fmt.Errorf("save registry: %w", err)
	}
	if err := f.Close(); err != nil {
		return fmt.Errorf("save registry: %w", err)
	}
	return os.Rename(f.Name(), r.path)
}

// Allocate gives the pod interface a branch attachment; the same
// interface always gets the same one back.
func (a *Agent) Allocate(containerID, ifname, netns string) (Registration, error) {
	return a.AllocateAddress(containerID, ifname, netns, "")
}

// AllocateAddress is Allocate for a pod whose address a chained IPAM
// plugin chose (ip, "" for none): the agent still supplies the VLAN — the
// branch with that address if the node owns one, else any free branch (the
// VPC must then route the address to that branch).
func (a *Agent) AllocateAddress(containerID, ifname, netns, ip string) (Registration, error) {
	if containerID == "" || ifname == "" {
		return Registration{}, fmt.Errorf("%w: containerID and ifname are required", ErrInvalidConfig)
	}
	var want netip.Addr
	if ip != "" {
		p, err := netip.ParsePrefix(ip)
		if err != nil {
			if want, err = netip.ParseAddr(ip); err != nil {
				return Registration{}, fmt.Errorf("%w: ip %q is not an address", ErrInvalidConfig, ip)
			}
		} else {
			want = p.Addr()
		}
		if !want.Is4() {
			return Registration{}, fmt.Errorf("%w: ip %q is not IPv4", ErrInvalidConfig, ip)
		}
	}
	a.regMu.Lock()
	defer a.regMu.Unlock()
	k := regKey{containerID, ifname}
	if g, ok := a.reg.regs[k]; ok {
		return *g, nil
	}
	used := map[uint16]bool{}
	ids := map[uint16]bool{}
	for _, g := range a.reg.regs {
		used[g.VLAN] = true
		ids[g.ID] = true
	}
	var br *Branch
	branches := a.branches.Branches()
	for i := range branches {
		free := !used[branches[i].VLAN]
		if free && (br == nil || branches[i].IP == want) {
			br = &branches[i]
			if !want.IsValid() || br.IP == want {
				break
			}
		}
	}
	if br == nil {
		return Registration{}, ErrPoolEmpty
	}
	id := uint16(len(a.s.pods)) // static pods hold 0..n-1
	for ids[id] {
		id++
	}
	if int(id) >= vlan.MaxAttachments {
		return Registration{}, ErrPoolEmpty
	}
	addr := br.IP
	if want.IsValid() {
		addr = want
	}
	g := &Registration{ContainerID: containerID, Ifname: ifname, Netns: netns, VLAN: br.VLAN,
		IP: netip.PrefixFrom(addr, 32).String(), MAC: br.MAC, Gateway: a.s.gatewayIP.String(),
		State: StateAllocated, ID: id}
	a.reg.regs[k] = g
	if err := a.reg.save(); err != nil {
		delete(a.reg.regs, k)
		return Registration{}, err
	}
	return *g, nil
}

// Attach opens the registered pod's sockets on its host veth and adds it to
// the VLAN table: from then on the agent forwards its traffic.
func (a *Agent) Attach(containerID, ifname, hostVeth string) (Registration, error) {
	a.regMu.Lock()
	defer a.regMu.Unlock()
	g, ok := a.reg.regs[regKey{containerID, ifname}]
	if !ok {
		return Registration{}, fmt.Errorf("%w: %s/%s is not allocated", errNotFound, containerID, ifname)
	}
	if g.State == StateAttached && g.HostVeth == hostVeth {
		return *g, nil
	}
	if g.State == StateAttached {
		a.detachID(g.ID)
	}
	att, err := g.attachment()
	if err != nil {
		return Registration{}, err
	}
	if err := a.attachPod(&att, hostVeth); err != nil {
		return Registration{}, err
	}
	g.HostVeth, g.State = hostVeth, StateAttached
	if err := a.republish(); err != nil {
		return Registration{}, err
	}
	return *g, a.reg.save()
}

// Release forgets a pod interface and frees its branch; unknown is fine.
func (a *Agent) Release(containerID, ifname string) error {
	a.regMu.Lock()
	defer a.regMu.Unlock()
	return a.release(regKey{containerID, ifname})
}

func (a *Agent) release(k regKey) error {
	g, ok := a.reg.regs[k]
	if !ok {
		return nil
	}
	if g.State == StateAttached {
		a.detachID(g.ID)
	}
	delete(a.reg.regs, k)
	if err := a.republish(); err != nil {
		return err
	}
	return a.reg.save()
}

// GC releases every registration not in valid.
func (a *Agent) GC(valid []regKey) (int, error) {
	a.regMu.Lock()
	defer a.regMu.Unlock()
	keep := map[regKey]bool{}
	for _, k := range valid {
		keep[k] = true
	}
	n := 0
	for k := range a.reg.regs {
		if !keep[k] {
			if err := a.release(k); err != nil {
				return n, err
			}
			n++
		}
	}
	return n, nil
}

// Registrations lists the registered pod interfaces.
func (a *Agent) Registrations() []Registration {
	a.regMu.Lock()
	defer a.regMu.Unlock()
	out := make([]Registration, 0, len(a.reg.regs))
	for _, g := range a.reg.regs {
		out = append(out, *g)
	}
	slices.SortFunc(out, func(x, y Registration) int { return int(x.ID) - int(y.ID) })
	return out
}

// restoreRegistrations re-attaches the pods registered before a restart
// whose host veth is still there, and releases the others (their pod is
// gone: the CNI DEL may have come while the agent was down).
func (a *Agent) restoreRegistrations() error {
	a.regMu.Lock()
	defer a.regMu.Unlock()
	for k, g := range a.reg.regs {
		if g.State != StateAttached {
			continue
		}
		if _, err := netlink.LinkByName(g.HostVeth); err != nil {
			a.log.Info("releasing a pod whose veth is gone", "container", g.ContainerID, "ifname", g.Ifname, "hostVeth", g.HostVeth)
			delete(a.reg.regs, k)
			continue
		}
		att, err := g.attachment()
		if err == nil {
			err = a.attachPod(&att, g.HostVeth)
		}
		if err != nil {
			return fmt.Errorf("restore pod %s/%s: %w", g.ContainerID, g.Ifname, err)
		}
	}
	if err := a.republish(); err != nil {
		return err
	}
	return a.reg.save()
}

func (g *Registration) attachment() (vlan.Attachment, error) {
	p, err := netip.ParsePrefix(g.IP)
	if err != nil {
		return vlan.Attachment{}, fmt.Errorf("registration %s/%s: ip %q: %w", g.ContainerID, g.Ifname, g.IP, err)
	}
	mac, err := parseUnicastMAC(g.MAC)
	if err != nil {
		return vlan.Attachment{}, fmt.Errorf("registration %s/%s: %w", g.ContainerID, g.Ifname, err)
	}
	return vlan.Attachment{ID: g.ID, VID: g.VLAN, IP: p.Addr().As4(), MAC: mac, Name: g.ContainerID + "/" + g.Ifname}, nil
}

// detachID detaches the pod with attachment id, if attached.
func (a *Agent) detachID(id uint16) {
	a.mu.Lock()
	var ps *podState
	a.pods = slices.DeleteFunc(a.pods, func(p *podState) bool {
		if p.att.ID == id {
			ps = p
			return true
		}
		return false
	})
	a.mu.Unlock()
	if ps != nil {
		if err := a.detachPod(ps); err != nil {
			a.log.Warn("detach pod", "pod", ps.att.Name, "err", err)
		}
	}
}

// republish builds the VLAN table from the attached pods and swaps it in.
func (a *Agent) republish() error {
	a.mu.Lock()
	atts := make([]vlan.Attachment, 0, len(a.pods))
	for _, p := range a.pods {
		atts = append(atts, p.att)
	}
	a.mu.Unlock()
	t, err := vlan.NewTable(atts)
	if err != nil {
		return err
	}
	a.table.Store(t)
	return nil
}

var errNotFound = errors.New("not found")

func (a *Agent) registrationRoutes(mux *http.ServeMux) {
	p := "/" + APIVersion + "/attachments"
	mux.HandleFunc("POST "+p, a.timed("allocate", func(w http.ResponseWriter, r *http.Request) {
		var req struct{ ContainerID, Ifname, Netns, IP string }
		if !decode(w, r, &req) {
			return
		}
		g, err := a.AllocateAddress(req.ContainerID, req.Ifname, req.Netns, req.IP)
		respond(w, g, err)
	}))
	mux.HandleFunc("PUT "+p+"/{cid}/{ifname}", a.timed("attach", func(w http.ResponseWriter, r *http.Request) {
		var req struct{ HostVeth string }
		if !decode(w, r, &req) {
			return
		}
		g, err := a.Attach(r.PathValue("cid"), r.PathValue("ifname"), req.HostVeth)
		respond(w, g, err)
	}))
	mux.HandleFunc("DELETE "+p+"/{cid}/{ifname}", a.timed("release", func(w http.ResponseWriter, r *http.Request) {
		respond(w, struct{}{}, a.Release(r.PathValue("cid"), r.PathValue("ifname")))
	}))
	mux.HandleFunc("GET "+p+"/{cid}/{ifname}", func(w http.ResponseWriter, r *http.Request) {
		for _, g := range a.Registrations() {
			if g.ContainerID == r.PathValue("cid") && g.Ifname == r.PathValue("ifname") {
				writeJSON(w, g)
				return
			}
		}
		http.Error(w, "not registered", http.StatusNotFound)
	})
	mux.HandleFunc("GET "+p, func(w http.ResponseWriter, r *http.Request) {
		writeJSON(w, struct {
			Attachments []Registration `json:"attachments"`
		}{a.Registrations()})
	})
	mux.HandleFunc("POST "+p+"/gc", a.timed("gc", func(w http.ResponseWriter, r *http.Request) {
		var req struct {
			Valid []struct{ ContainerID, Ifname string } `json:"valid"`
		}
		if !decode(w, r, &req) {
			return
		}
		var keys []regKey
		for _, v := range req.Valid {
			keys = append(keys, regKey{v.ContainerID, v.Ifname})
		}
		n, err := a.GC(keys)
		respond(w, struct {
			Released int `json:"released"`
		}{n}, err)
	}))
}

func decode(w http.ResponseWriter, r *http.Request, v any) bool {
	if err := json.NewDecoder(http.MaxBytesReader(w, r.Body, 1<<20)).Decode(v); err != nil {
		http.Error(w, "bad request: "+err.Error(), http.StatusBadRequest)
		return false
	}
	return true
}

func respond(w http.ResponseWriter, v any, err error) {
	switch {
	case err == nil:
		writeJSON(w, v)
	case errors.Is(err, ErrPoolEmpty):
		http.Error(w, err.Error(), http.StatusServiceUnavailable)
	case errors.Is(err, errNotFound):
		http.Error(w, err.Error(), http.StatusNotFound)
	case errors.Is(err, ErrInvalidConfig):
		http.Error(w, err.Error(), http.StatusBadRequest)
	default:
		http.Error(w, err.Error(), http.StatusInternalServerError)
	}
}
