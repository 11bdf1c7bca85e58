package agent

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"net/netip"
	"os"
	"path/filepath"
	"runtime"
	"sync"
	"sync/atomic"
	"time"
	"unsafe"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/trunkline/trunkline/dataplane"
	"github.com/trunkline/trunkline/lb"
	"github.com/trunkline/trunkline/lb/conntrack"
	"github.com/trunkline/trunkline/vlan"
	"github.com/trunkline/trunkline/xdp"
	"github.com/vishvananda/netlink"
	"golang.org/x/sys/unix"
)

// Version is the agent's version, set at build time.
var Version = "dev"

// Options are what the command line adds to the configuration file.
type Options struct {
	Logger *slog.Logger
	// XDPMode overrides the configuration's xdpMode when not empty.
	XDPMode string
	// WorkerCPUs overrides the configuration's workerCPUs when not nil.
	WorkerCPUs []int
}

// Agent is one node's trunkline agent.
type Agent struct {
	log   *slog.Logger
	s     settings
	start time.Time

	progs    *xdp.Programs
	table    atomic.Pointer[vlan.Table]
	services atomic.Pointer[lb.Table]
	ct       *conntrack.Table
	affinity *lb.Affinity
	epoch    time.Time // zero of the conntrack clock
	nodeMAC  [6]byte
	workers  []*workerState

	// synGateUntil is when the SYN gate opens again (Unix ns; see gateSYNs).
	synGateUntil atomic.Int64

	mu   sync.Mutex // guards pods
	pods []*podState

	svcMu      sync.Mutex        // serialises Service updates; guards the fields below
	svcCfgs    []ServiceConfig   // the Services now served
	svcIDs     map[string]uint32 // stable Service IDs by name (counters, affinity)
	freeSvcIDs []uint32          // IDs of removed Services, counters reset
	nextSvcID  uint32            // the last ID handed out

	regMu    sync.Mutex // serialises registrations; guards reg
	reg      registry
	branches BranchProvider

	cniRequests *prometheus.HistogramVec

	saveMu      sync.Mutex // serialises writes of the state file; guards stateClosed
	stateClosed bool       // the shutdown snapshot is written
	stateMu     sync.Mutex // guards pending and stateStats
	pending     *pendingState
	stateStats  StateStats

	ready     atomic.Bool
	readyOnce sync.Once
	readyCh   chan struct{} // closed once the agent first becomes ready
}

// Ready is closed when the agent has attached everything and forwards.
func (a *Agent) Ready() <-chan struct{} { return a.readyCh }

// workerState is one trunk queue's worker and the sockets it owns.
type workerState struct {
	queue  int
	umem   *xdp.Umem
	trunk  *xdp.Socket
	poller *xdp.Poller
	w      *dataplane.Worker
	trunkC *dataplane.PortCounters
	done   chan error
}

// podState is one attached pod.
type podState struct {
	att      vlan.Attachment
	hostVeth string
	ifindex  int
	sockets  []*xdp.Socket             // by worker
	counters []*dataplane.PortCounters // by worker
}

// New validates the configuration; it attaches nothing.
func New(cfg Config, o Options) (*Agent, error) {
	if o.XDPMode != "" {
		cfg.XDPMode = o.XDPMode
	}
	if o.WorkerCPUs != nil {
		cfg.WorkerCPUs = o.WorkerCPUs
	}
	s, err := cfg.validate()
	if err != nil {
		return nil, err
	}
	if o.Logger == nil {
		o.Logger = slog.Default()
	}
	return &Agent{log: o.Logger, s: s, readyCh: make(chan struct{}), branches: configBranches(s.branches),
		cniRequests: newCNIRequests()}, nil
}

// Run sets the node up, forwards until ctx ends, then detaches everything.
// It returns an error if set-up fails (after undoing what it did) or a
// worker fails.
func (a *Agent) Run(ctx context.Context) (err error) {
	a.start = time.Now()
	var cleanup []func() error
	defer func() {
		for i := len(cleanup) - 1; i >= 0; i-- {
			if cerr := cleanup[i](); cerr != nil {
				a.log.Error("teardown", "err", cerr)
				err = errors.Join(err, cerr)
			}
		}
	}()
	cfg := a.s.cfg

	trunk, err := netlink.LinkByName(cfg.Trunk)
	if err != nil {
		return fmt.Errorf("trunk %s: %w (is the agent running in the node's network namespace?)", cfg.Trunk, err)
	}
	if err := checkMTU(trunk, cfg.UMEM.FrameSize); err != nil {
		return err
	}
	if n := trunk.Attrs().NumRxQueues; n > 0 && cfg.Queues > n {
		return fmt.Errorf("trunk %s has %d RX queues; config asks for queues: %d", cfg.Trunk, n, cfg.Queues)
	}
	if err := checkCapabilities(uint64(cfg.Queues) * uint64(cfg.UMEM.Frames) * uint64(cfg.UMEM.FrameSize)); err != nil {
		return err
	}
	copy(a.nodeMAC[:], trunk.Attrs().HardwareAddr)
	a.epoch = time.Now()
	if a.ct, err = conntrack.New(conntrack.Options{MaxEntries: cfg.Conntrack.MaxEntries}); err != nil {
		return err
	}
	a.affinity = lb.NewAffinity()
	a.svcMu.Lock()
	a.assignServiceIDs(a.s.services)
	a.svcMu.Unlock()
	svcs, err := lb.Build(a.s.nodeIP, a.s.services, 0)
	if err != nil {
		return err
	}
	a.services.Store(svcs)
	a.svcCfgs = cfg.Services
	if cfg.StateFile != "off" {
		// Before any worker takes a packet.
		a.restoreState(svcs)
	}
	if a.progs, err = xdp.LoadPrograms(); err != nil {
		return err
	}
	cleanup = append(cleanup, a.progs.Close)
	if err := a.progs.SetNodeAddrs([]netip.Addr{a.s.nodeIP}); err != nil {
		return err
	}

	for q := 0; q < cfg.Queues; q++ {
		ws, err := a.newWorker(q, trunk.Attrs().Index)
		if err != nil {
			return err
		}
		a.workers = append(a.workers, ws)
		cleanup = append(cleanup, ws.close)
		if err := a.progs.SetTrunkSocket(q, ws.trunk.FD()); err != nil {
			return err
		}
	}
	if err := a.steerServices(svcs); err != nil {
		return err
	}
	if err := a.progs.AttachTrunk(cfg.Trunk, a.s.mode); err != nil {
		return err
	}
	cleanup = append(cleanup, func() error { return a.progs.Detach(cfg.Trunk) })

	atts := make([]vlan.Attachment, 0, len(a.s.pods))
	for i, p := range a.s.pods {
		atts = append(atts, vlan.Attachment{ID: uint16(i), VID: uint16(p.VLAN), IP: p.ip.As4(), MAC: p.mac, Name: p.Name})
	}
	for i, p := range a.s.pods {
		if err := a.attachPod(&atts[i], p.HostVeth); err != nil {
			return err
		}
	}
	cleanup = append(cleanup, a.detachAllPods)
	tbl, err := vlan.NewTable(atts)
	if err != nil {
		return err
	}
	a.table.Store(tbl)
	a.reg.path = cfg.RegistryFile
	if err := a.reg.load(); err != nil {
		return err
	}
	if err := a.restoreRegistrations(); err != nil {
		return err
	}

	srv, err := a.serveAPI()
	if err != nil {
		return err
	}
	if cfg.MetricsAddr != "off" {
		msrv, err := a.serveMetrics(cfg.MetricsAddr)
		if err != nil {
			return err
		}
		cleanup = append(cleanup, msrv.Close)
	}
	cleanup = append(cleanup, func() error {
		sctx, cancel := context.WithTimeout(context.Background(), 200*time.Millisecond)
		defer cancel()
		return srv.Shutdown(sctx)
	})

	if cfg.StateFile != "off" {
		// Runs once the workers have stopped (cleanups run in reverse).
		cleanup = append(cleanup, func() error {
			start := time.Now()
			if err := a.saveState(true); err != nil {
				a.log.Error("state not saved: a restarted agent starts with an empty connection table", "err", err)
				return nil
			}
			st := a.stateSnapshot()
			a.log.Info("state saved", "file", cfg.StateFile, "connections", st.LastConnections, "bytes", st.LastBytes, "took", time.Since(start).Round(time.Microsecond))
			return nil
		})
	}
	wctx, stopWorkers := context.WithCancel(ctx)
	defer stopWorkers()
	go a.expireConntrack(wctx)
	if cfg.StateFile != "off" {
		go a.snapshotState(wctx)
	}
	failed := make(chan error, len(a.workers)) // the first worker to fail
	for i, ws := range a.workers {
		cpu := -1
		if len(cfg.WorkerCPUs) > 0 {
			cpu = cfg.WorkerCPUs[i%len(cfg.WorkerCPUs)]
		}
		ws.done = make(chan error, 1)
		go func() {
			err := a.runWorker(wctx, ws.w, cpu)
			if err != nil {
				failed <- fmt.Errorf("worker of queue %d: %w", ws.queue, err)
			}
			ws.done <- err
		}()
	}
	cleanup = append(cleanup, func() error {
		stopWorkers()
		for _, ws := range a.workers {
			<-ws.done // a failure was reported through failed
		}
		return nil
	})
	a.ready.Store(true)
	a.readyOnce.Do(func() { close(a.readyCh) })
	a.log.Info("trunkline running", "version", Version, "trunk", cfg.Trunk, "queues", cfg.Queues,
		"xdpMode", a.s.mode.String(), "pods", len(atts), "api", cfg.APISocket)

	var werr error
	select {
	case <-ctx.Done():
	case werr = <-failed:
	}
	a.ready.Store(false)
	a.log.Info("trunkline stopping")
	return werr
}

// runWorker runs a worker on a locked OS thread, pinned to cpu if >= 0,
// with the configured scheduling policy.
func (a *Agent) runWorker(ctx context.Context, w *dataplane.Worker, cpu int) error {
	runtime.LockOSThread()
	defer runtime.UnlockOSThread()
	if cpu >= 0 {
		var set unix.CPUSet
		set.Set(cpu)
		if err := unix.SchedSetaffinity(0, &set); err != nil {
			return fmt.Errorf("pin worker to CPU %d: %w", cpu, err)
		}
	}
	if a.s.cfg.WorkerPolicy == "fifo" {
		if err := setFIFO(a.s.cfg.WorkerPriority); err != nil {
			a.log.Warn("worker keeps normal scheduling: SCHED_FIFO needs CAP_SYS_NICE; a worker sharing a core with the trunk's NAPI thread then loses frames the kernel received for it",
				"err", err)
		}
	}
	return w.Run(ctx)
}

// setFIFO makes the calling thread SCHED_FIFO at prio. A worker that
// shares a core with the NAPI thread feeding it must run first: otherwise
// the NAPI thread, at equal weight, keeps receiving frames into a full RX
// ring and they are dropped after the work of receiving them (receive
// livelock). The worker blocks whenever its rings are empty, and its
// Config.MaxBusy bounds how long it runs without blocking, so it cannot
// starve its core.
func setFIFO(prio int) error {
	param := struct{ prio int32 }{int32(prio)}
	if _, _, e := unix.Syscall(unix.SYS_SCHED_SETSCHEDULER, 0, unix.SCHED_FIFO, uintptr(unsafe.Pointer(&param))); e != 0 {
		return e
	}
	return nil
}

func (a *Agent) newWorker(q, trunkIndex int) (ws *workerState, err error) {
	cfg := a.s.cfg
	ws = &workerState{queue: q, trunkC: new(dataplane.PortCounters)}
	if ws.umem, err = xdp.NewUmem(xdp.UmemOptions{Frames: cfg.UMEM.Frames, FrameSize: cfg.UMEM.FrameSize}); err != nil {
		return nil, err
	}
	built := ws // the named result is nil on an error return
	defer func() {
		if err != nil {
			built.close()
		}
	}()
	mode := xdp.BindAuto
	if a.s.mode == xdp.Generic {
		mode = xdp.BindCopy
	}
	if ws.trunk, err = xdp.NewSocket(ws.umem, xdp.SocketOptions{Ifindex: trunkIndex, Queue: q, Mode: mode,
		RxSize: trunkRing, TxSize: trunkRing, FillSize: trunkRing, CompSize: trunkRing, BusyPoll: cfg.BusyPollMicros}); err != nil {
		return nil, fmt.Errorf("trunk %s queue %d: %w", cfg.Trunk, q, err)
	}
	if ws.poller, err = xdp.NewPoller(); err != nil {
		return nil, err
	}
	ws.poller.Set(dataplane.TrunkIndex, ws.trunk.FD())
	ws.w, err = dataplane.New(dataplane.Config{
		Memory: ws.umem, Poller: ws.poller, Trunk: ws.trunk, TrunkCounters: ws.trunkC,
		VLAN: &a.table, GatewayMAC: a.s.gatewayMAC, Batch: cfg.Batch,
		Services: &a.services, Conntrack: a.ct, Affinity: a.affinity, Epoch: a.epoch,
		NodeIP: a.s.nodeIP.As4(), NodeMAC: a.nodeMAC, SNATPorts: dataplane.PortRange{Lo: a.s.snatLo, Hi: a.s.snatHi},
		Masquerade: len(a.s.nonMasq) > 0, NonMasquerade: a.s.nonMasq,
	})
	return ws, err
}

func (ws *workerState) close() error {
	var errs []error
	if ws.trunk != nil {
		errs = append(errs, ws.trunk.Close())
	}
	if ws.poller != nil {
		errs = append(errs, ws.poller.Close())
	}
	if ws.umem != nil {
		// Every socket is closed: every frame must be back.
		if acc := ws.umem.Accounting(); acc.Free != acc.Total {
			errs = append(errs, fmt.Errorf("queue %d: %d of %d UMEM frames were not returned (%+v)", ws.queue, acc.Total-acc.Free, acc.Total, acc))
		}
		errs = append(errs, ws.umem.Close())
	}
	return errors.Join(errs...)
}

// Ring sizes: the trunk's rings take whole bursts from the VPC; a pod's
// rings are smaller and its fill ring holds few frames until it is busy.
const (
	trunkRing = 2048
	podRing   = 512
)

// attachPod gives a pod its sockets, one per worker, on its host veth, and
// steers the veth's frames to them. The attachment's HostMAC is filled in.
func (a *Agent) attachPod(att *vlan.Attachment, hostVeth string) (err error) {
	l, err := netlink.LinkByName(hostVeth)
	if err != nil {
		return fmt.Errorf("pod %s: host veth %s: %w", att.Name, hostVeth, err)
	}
	if n := l.Attrs().NumRxQueues; n > 0 && n < len(a.workers) {
		return fmt.Errorf("pod %s: host veth %s has %d RX queues, the agent runs %d workers; create the veth with numrxqueues %d",
			att.Name, hostVeth, n, len(a.workers), len(a.workers))
	}
	if err := checkMTU(l, a.s.cfg.UMEM.FrameSize); err != nil {
		return fmt.Errorf("pod %s: %w", att.Name, err)
	}
	copy(att.HostMAC[:], l.Attrs().HardwareAddr)
	ps := &podState{att: *att, hostVeth: hostVeth, ifindex: l.Attrs().Index}
	defer func() {
		if err != nil {
			a.detachPod(ps)
		}
	}()
	if err := a.progs.AttachPod(hostVeth, a.s.mode); err != nil {
		return err
	}
	for _, ws := range a.workers {
		var sock *xdp.Socket
		var serr error
		ws.w.Do(func() {
			sock, serr = xdp.NewSocket(ws.umem, xdp.SocketOptions{
				Ifindex: ps.ifindex, Queue: ws.queue,
				RxSize: podRing, TxSize: podRing, FillSize: podRing, CompSize: podRing,
				FillMin: a.s.cfg.UMEM.PodFill, FillTarget: podRing, Reserve: trunkRing,
			})
		})
		if serr != nil {
			return fmt.Errorf("pod %s: socket on %s queue %d: %w", att.Name, hostVeth, ws.queue, serr)
		}
		c := new(dataplane.PortCounters)
		ps.sockets = append(ps.sockets, sock)
		ps.counters = append(ps.counters, c)
		ws.w.AttachPod(att.ID, sock, c, func() { ws.poller.Set(dataplane.PodIndex(att.ID), sock.FD()) })
		if err := a.progs.SetPodSocket(ps.ifindex, ws.queue, sock.FD()); err != nil {
			return err
		}
	}
	a.mu.Lock()
	a.pods = append(a.pods, ps)
	a.mu.Unlock()
	return nil
}

// detachPod undoes attachPod: unsteer, stop the workers using the sockets,
// close them (their frames return to the UMEM), detach the program.
func (a *Agent) detachPod(ps *podState) error {
	var errs []error
	for i, sock := range ps.sockets {
		ws := a.workers[i]
		errs = append(errs, a.progs.ClearPodSocket(ps.ifindex, ws.queue))
		ws.w.DetachPod(ps.att.ID, func() {
			ws.poller.Set(dataplane.PodIndex(ps.att.ID), -1)
			errs = append(errs, sock.Close())
		})
	}
	ps.sockets = nil
	errs = append(errs, a.progs.DetachIndex(ps.ifindex))
	return errors.Join(errs...)
}

func (a *Agent) detachAllPods() error {
	a.mu.Lock()
	pods := a.pods
	a.pods = nil
	a.mu.Unlock()
	var errs []error
	for _, ps := range pods {
		errs = append(errs, a.detachPod(ps))
	}
	return errors.Join(errs...)
}

// serveAPI listens on the API socket (mode 0600) and serves the local API.
func (a *Agent) serveAPI() (*http.Server, error) {
	path := a.s.cfg.APISocket
	if err := os.MkdirAll(filepath.Dir(path), 0o755); err != nil {
		return nil, fmt.Errorf("api socket dir: %w", err)
	}
	if err := os.Remove(path); err != nil && !errors.Is(err, os.ErrNotExist) {
		return nil, fmt.Errorf("remove stale api socket: %w", err)
	}
	old := unix.Umask(0o177)
	ln, err := net.Listen("unix", path)
	unix.Umask(old)
	if err != nil {
		return nil, fmt.Errorf("api socket %s: %w", path, err)
	}
	srv := &http.Server{Handler: a.apiHandler(), ReadHeaderTimeout: 5 * time.Second}
	go func() {
		if err := srv.Serve(ln); err != nil && !errors.Is(err, http.ErrServerClosed) {
			a.log.Error("api server", "err", err)
		}
	}()
	return srv, nil
}

// steerServices tells the XDP programs which untagged traffic is the
// agent's: to the Services' frontend addresses, NodePorts and SNAT ports.
func (a *Agent) steerServices(t *lb.Table) error {
	var nps []xdp.ServicePort
	for _, f := range t.NodePorts() {
		nps = append(nps, xdp.ServicePort{Port: f.Port, Proto: f.Proto})
	}
	return a.progs.SetServices(t.VIPs(), nps, a.s.snatLo, a.s.snatHi)
}

// expireConntrack sweeps the connection table in the background (a
// twentieth of it every 100 ms, so all of it every 2 s), keeps the trunk
// program's SYN gate shut while the workers find the table at its bound,
// and forgets timed out session affinities and drained backends every 5 s.
func (a *Agent) expireConntrack(ctx context.Context) {
	budget := max(a.ct.Stats().Slots/20, 1024)
	tick := time.NewTicker(100 * time.Millisecond)
	defer tick.Stop()
	var bound uint64
	for {
		select {
		case <-ctx.Done():
			return
		case <-tick.C:
			now := time.Since(a.epoch)
			a.ct.Expire(conntrack.Time(now), budget)
			bound = a.gateSYNs(bound)
			if n := now / (100 * time.Millisecond); n%50 == 0 { // every 5 s
				a.affinity.Expire(int64(now))
				a.pruneDraining()
			}
		}
	}
}

// synGateHold is how long the SYN gate stays shut after the workers last
// found the connection table at its bound.
const synGateHold = time.Second

// gateSYNs shuts the trunk program's SYN gate for synGateHold when the
// workers found the connection table at its bound since the last call
// (their AtBound counters moved from last); it returns the counters' sum.
// Shut, the gate lets through per CPU the rate the workers admit new flows
// at while flooded, and drops the rest before they are copied to a socket.
func (a *Agent) gateSYNs(last uint64) uint64 {
	var n uint64
	for _, ws := range a.workers {
		n += ws.w.Counters().AtBound.Load()
	}
	if n != last && a.progs != nil {
		if err := a.progs.ShutSYNGate(synGateHold, dataplane.FloodNewFlowRate, dataplane.FloodNewFlowBurst); err != nil {
			a.log.Error("SYN gate", "err", err)
		} else {
			a.synGateUntil.Store(time.Now().Add(synGateHold).UnixNano())
		}
	}
	return n
}

// checkMTU makes sure a frame of the link's MTU, with its Ethernet header
// and an 802.1Q tag, fits a UMEM frame after the kernel's headroom. The
// error wraps ErrInvalidConfig: the MTU is the operator's to change.
func checkMTU(l netlink.Link, frameSize int) error {
	room := frameSize - unix.XDP_PACKET_HEADROOM
	need := l.Attrs().MTU + 14 + 4
	if need <= room {
		return nil
	}
	largest := maxFrameSize - unix.XDP_PACKET_HEADROOM
	fix := fmt.Sprintf("set umem.frameSize: %d or lower the MTU", maxFrameSize)
	if need > largest {
		fix = fmt.Sprintf("the largest MTU the agent carries is %d, with umem.frameSize: %d: lower the MTU (jumbo frames would need multi-buffer AF_XDP, which the agent does not use)",
			largest-14-4, maxFrameSize)
	}
	return fmt.Errorf("%w: %s has MTU %d: its tagged frames (%d bytes) do not fit a %d-byte UMEM frame (%d after headroom); %s",
		ErrInvalidConfig, l.Attrs().Name, l.Attrs().MTU, need, frameSize, room, fix)
}

// trunkAttached checks that the trunk still runs the agent's XDP program.
func (a *Agent) trunkAttached() error {
	l, err := netlink.LinkByName(a.s.cfg.Trunk)
	if err != nil {
		return fmt.Errorf("trunk %s: %w", a.s.cfg.Trunk, err)
	}
	if x := l.Attrs().Xdp; x == nil || !x.Attached || !a.progs.IsTrunkProgram(x.ProgId) {
		return fmt.Errorf("trunk %s does not run trunkline's XDP program", a.s.cfg.Trunk)
	}
	return nil
}
