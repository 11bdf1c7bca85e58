package agent

import (
	"encoding/json"
	"net/http"
	"net/netip"
	"runtime"
	"time"

	"github.com/trunkline/trunkline/dataplane"
	"github.com/trunkline/trunkline/lb/conntrack"
	"github.com/trunkline/trunkline/xdp"
)

// APIVersion prefixes every path of the local API.
const APIVersion = "v1"

// Counters are one port's frame counters. RX is what the agent received
// from the interface, TX what it sent on it.
type Counters struct {
	RxPackets uint64 `json:"rxPackets"`
	RxBytes   uint64 `json:"rxBytes"`
	TxPackets uint64 `json:"txPackets"`
	TxBytes   uint64 `json:"txBytes"`
	// Drops are frames received here that the dataplane dropped.
	Drops uint64 `json:"drops"`
}

func (c *Counters) add(p *dataplane.PortCounters) {
	c.RxPackets += p.RxPackets.Load()
	c.RxBytes += p.RxBytes.Load()
	c.TxPackets += p.TxPackets.Load()
	c.TxBytes += p.TxBytes.Load()
	c.Drops += p.Drops.Load()
}

// KernelDrops are the kernel's counters of frames it could not hand to an
// AF_XDP socket or take from it (XDP_STATISTICS).
type KernelDrops struct {
	// RxDropped: dropped for any reason before the RX ring.
	RxDropped uint64 `json:"rxDropped"`
	// RxRingFull: the RX ring was full (the agent falls behind).
	RxRingFull uint64 `json:"rxRingFull"`
	// FillRingEmpty: no free frame was posted to receive into.
	FillRingEmpty uint64 `json:"fillRingEmpty"`
	// TxInvalid: descriptors the kernel refused to send.
	TxInvalid uint64 `json:"txInvalid"`
}

func (k *KernelDrops) add(s *xdp.Socket) {
	st, err := s.Stats()
	if err != nil {
		return
	}
	k.RxDropped += st.Rx_dropped
	k.RxRingFull += st.Rx_ring_full
	k.FillRingEmpty += st.Rx_fill_ring_empty_descs
	k.TxInvalid += st.Tx_invalid_descs
}

// InterfaceStats are a trunk queue's counters.
type InterfaceStats struct {
	Name  string `json:"name"`
	Queue int    `json:"queue"`
	Counters
	Kernel KernelDrops `json:"kernel"`
}

// PodStats are a pod's counters, summed over workers: TX is toward the pod,
// RX from it.
type PodStats struct {
	Name     string `json:"name"`
	VLAN     uint16 `json:"vlan"`
	IP       string `json:"ip"`
	HostVeth string `json:"hostVeth"`
	Counters
	Kernel KernelDrops `json:"kernel"`
}

// UMEMStats say where a worker's frames are; Held is what the worker holds
// between batches and must be 0.
type UMEMStats struct {
	Queue int `json:"queue"`
	Total int `json:"total"`
	Free  int `json:"free"`
	Fill  int `json:"fill"`
	TX    int `json:"tx"`
	Held  int `json:"held"`
}

// WorkerStats are a worker's own counters.
type WorkerStats struct {
	Queue   int    `json:"queue"`
	Batches uint64 `json:"batches"`
	Frames  uint64 `json:"frames"`
	Polls   uint64 `json:"polls"`
}

// ConntrackStats are the connection table's counters.
type ConntrackStats struct {
	// SNATPortsInUse are the flows holding one of the node's SNAT ports.
	SNATPortsInUse int    `json:"snatPortsInUse"`
	Entries        int    `json:"entries"`
	MaxEntries     int    `json:"maxEntries"`
	Inserts        uint64 `json:"inserts"`
	InsertFull     uint64 `json:"insertFull"`
	EarlyDrops     uint64 `json:"earlyDrops"`
	Expirations    uint64 `json:"expirations"`
}

// Stats is the answer of GET /v1/stats.
type Stats struct {
	Conntrack ConntrackStats `json:"conntrack"`
	// Rejects are packets to Services without a usable backend, answered
	// with a TCP RST or an ICMP port unreachable.
	Rejects uint64 `json:"rejects"`
	// PortRemaps are new flows whose client port was translated because
	// their reply tuple was another live flow's.
	PortRemaps uint64            `json:"portRemaps"`
	Interfaces []InterfaceStats  `json:"interfaces"`
	Pods       []PodStats        `json:"pods"`
	Drops      map[string]uint64 `json:"drops"`
	UMEM       []UMEMStats       `json:"umem"`
	Workers    []WorkerStats     `json:"workers"`
	// State is what the agent restored from its state file and how its
	// snapshots go.
	State StateStats `json:"state"`
	// Goroutines is the agent's goroutine count, for leak checks.
	Goroutines int `json:"goroutines"`
	// SYNGateShut: the trunk's XDP program sheds SYNs to Service frontends
	// beyond the flood rate (the connection table was found at its bound
	// within the last second).
	SYNGateShut bool `json:"synGateShut"`
}

// Status is the answer of GET /v1/status.
type Status struct {
	Version   string `json:"version"`
	Trunk     string `json:"trunk"`
	NodeIP    string `json:"nodeIP"`
	XDPMode   string `json:"xdpMode"`
	Queues    int    `json:"queues"`
	Pods      int    `json:"pods"`
	Services  int    `json:"services"`
	Frontends int    `json:"frontends"`
	// DrainingBackends were removed from every Service while connections
	// to them still run: those keep being translated until they end.
	DrainingBackends int     `json:"drainingBackends"`
	Ready            bool    `json:"ready"`
	UptimeSec        float64 `json:"uptimeSeconds"`
}

// Stats collects every counter. Frame accounting is read on each worker's
// goroutine, between batches.
func (a *Agent) Stats() Stats {
	st := Stats{Drops: map[string]uint64{}, State: a.stateSnapshot(), Goroutines: runtime.NumGoroutine(),
		SYNGateShut: time.Now().UnixNano() < a.synGateUntil.Load()}
	if a.ct != nil {
		cs := a.ct.Stats()
		st.Conntrack = ConntrackStats{Entries: cs.Entries, MaxEntries: cs.MaxEntries, Inserts: cs.Inserts,
			InsertFull: cs.InsertFull, EarlyDrops: cs.EarlyDrops, Expirations: cs.Expirations, SNATPortsInUse: a.snatPortsInUse()}
	}
	for r := dataplane.DropReason(0); r < dataplane.NumDropReasons; r++ {
		st.Drops[r.String()] = 0
	}
	for _, ws := range a.workers {
		is := InterfaceStats{Name: a.s.cfg.Trunk, Queue: ws.queue}
		is.add(ws.trunkC)
		is.Kernel.add(ws.trunk)
		st.Interfaces = append(st.Interfaces, is)
		c := ws.w.Counters()
		st.Rejects += c.Rejects.Load()
		st.PortRemaps += c.PortRemaps.Load()
		for r := range c.Drops {
			st.Drops[dataplane.DropReason(r).String()] += c.Drops[r].Load()
		}
		st.Workers = append(st.Workers, WorkerStats{Queue: ws.queue, Batches: c.Batches.Load(), Frames: c.Frames.Load(), Polls: c.Polls.Load()})
		ws.w.Do(func() {
			acc := ws.umem.Accounting()
			st.UMEM = append(st.UMEM, UMEMStats{Queue: ws.queue, Total: acc.Total, Free: acc.Free, Fill: acc.Fill, TX: acc.TX, Held: acc.Held})
		})
	}
	if a.progs != nil {
		// SYNs the trunk program shed while the table was flooded: the
		// same refusal as the workers', taken earlier.
		if n, err := a.progs.SYNsShed(); err == nil {
			st.Drops[dataplane.DropNewFlowLimit.String()] += n
		}
	}
	a.mu.Lock()
	for _, ps := range a.pods {
		p := PodStats{Name: ps.att.Name, VLAN: ps.att.VID, IP: ipString(ps.att.IP), HostVeth: ps.hostVeth}
		for _, c := range ps.counters {
			p.add(c)
		}
		for _, s := range ps.sockets {
			p.Kernel.add(s)
		}
		st.Pods = append(st.Pods, p)
	}
	a.mu.Unlock()
	return st
}

// Status reports what the agent runs.
func (a *Agent) Status() Status {
	n := 0
	if t := a.table.Load(); t != nil {
		n = t.Len()
	}
	st := Status{
		Version: Version, Trunk: a.s.cfg.Trunk, NodeIP: a.s.nodeIP.String(), XDPMode: a.s.mode.String(),
		Queues: a.s.cfg.Queues, Pods: n, Ready: a.ready.Load(), UptimeSec: time.Since(a.start).Seconds(),
	}
	if t := a.services.Load(); t != nil {
		st.Services, st.Frontends, st.DrainingBackends = len(t.Services()), t.Len(), len(t.Draining())
	}
	return st
}

func ipString(ip [4]byte) string {
	return netip.AddrFrom4(ip).String()
}

func (a *Agent) apiHandler() http.Handler {
	mux := http.NewServeMux()
	mux.HandleFunc("GET /"+APIVersion+"/stats", func(w http.ResponseWriter, r *http.Request) { writeJSON(w, a.Stats()) })
	mux.HandleFunc("GET /"+APIVersion+"/status", func(w http.ResponseWriter, r *http.Request) { writeJSON(w, a.Status()) })
	a.registrationRoutes(mux)
	mux.HandleFunc("GET /"+APIVersion+"/conntrack", a.handleConntrack)
	mux.HandleFunc("GET /"+APIVersion+"/services", a.handleServices)
	mux.HandleFunc("PUT /"+APIVersion+"/services", a.handleServices)
	mux.HandleFunc("GET /healthz", func(w http.ResponseWriter, r *http.Request) { w.Write([]byte("ok\n")) })
	mux.HandleFunc("GET /readyz", a.handleReadyz)
	return mux
}

func writeJSON(w http.ResponseWriter, v any) {
	w.Header().Set("Content-Type", "application/json")
	enc := json.NewEncoder(w)
	enc.SetIndent("", "  ")
	enc.Encode(v)
}

// handleReadyz answers 200 while the agent forwards: set up, sockets bound,
// tables loaded, and its program still attached to the trunk.
func (a *Agent) handleReadyz(w http.ResponseWriter, r *http.Request) {
	if !a.ready.Load() {
		http.Error(w, "not ready: setting up", http.StatusServiceUnavailable)
		return
	}
	if err := a.trunkAttached(); err != nil {
		http.Error(w, "not ready: "+err.Error(), http.StatusServiceUnavailable)
		return
	}
	w.Write([]byte("ok\n"))
}

// snatPortsInUse counts the live flows whose reply comes to one of the
// node's SNAT ports (a walk of the table: for scrapes, not per packet).
func (a *Agent) snatPortsInUse() int {
	node, now := a.s.nodeIP.As4(), conntrack.Time(time.Since(a.epoch))
	n := 0
	a.ct.Range(func(c conntrack.Conn) bool {
		if c.Expires > now && c.Reply.DstIP == node && c.Reply.DstPort >= a.s.snatLo && c.Reply.DstPort <= a.s.snatHi {
			n++
		}
		return true
	})
	return n
}
