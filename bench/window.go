package bench

import (
	"context"
	"errors"
	"fmt"
	"os/exec"
	"strconv"
	"time"

	"github.com/trunkline/trunkline/bench/gen"
)

// window is one measurement: the generator runs for warmup+dur, the
// counters are read at the end of the warm-up and dur later, while the
// generator is still running.
type window struct {
	gen           *gen.Generator
	sink          *gen.Sink
	netns, ifname string // where the generator transmits
	warmup, dur   time.Duration
	repeat        uint32
	rate          uint64     // frames/s cap, 0 none
	napiPid       int        // the receiving NAPI thread
	workerCPU     int        // trunkline's worker's CPU, if an agent runs
	agent         *agentProc // trunkline's agent, if any
	perfOut       string     // perf record output, if any
}

// sample is what one window measured.
type sample struct {
	Forwarded uint64        // frames the sink counted
	Offered   uint64        // frames the generator made
	Window    time.Duration // between the two readings
	// CPUBusy is the NAPI core's busy share from /proc/stat (unreliable in
	// this VM: a saturated CPU has read 50–60%); NAPIBusy the NAPI thread's
	// run time over the window, AgentBusy the agent's threads' (all cores).
	CPUBusy   float64
	NAPIBusy  float64
	AgentBusy float64 // -1 without an agent
	// WorkerCPUBusy is the worker's CPU's busy share (/proc/stat), -1
	// without an agent.
	WorkerCPUBusy float64
	// Foreign is the NAPI core's busy share that neither the NAPI thread
	// nor (in shared-core) the agent accounts for: other processes on the
	// machine competing with the path, and interrupt time (IPIs that wake
	// the NAPI thread). Above foreignNoisy the round is flagged. -1 for
	// own-core, whose limiting core (the worker's, shared with the
	// generator) this does not check.
	Foreign float64
	GenRuns int

	// RSS is the agent's resident memory at the end (0 without an agent).
	RSS int64
	// Gbps is iperf3's goodput (tcp).
	Gbps float64
	// P50, P99, P999 are round-trip percentiles, LostShare the share of
	// requests without a reply, Latencies the sorted round trips (latency).
	P50, P99, P999 time.Duration
	LostShare      float64
	Latencies      []time.Duration
	// CPS and FailedPerSec are connections made and failed per second.
	CPS, FailedPerSec float64
	// CTEntries is the connection table's size after the prefill (scale
	// conntrack points; -1 unknown).
	CTEntries int
}

func (s sample) pps() float64        { return float64(s.Forwarded) / s.Window.Seconds() }
func (s sample) offeredPPS() float64 { return float64(s.Offered) / s.Window.Seconds() }

func (s sample) agentText() string {
	if s.AgentBusy < 0 {
		return ""
	}
	return fmt.Sprintf(", agent threads %3.0f%%, worker's cpu %3.0f%%", 100*s.AgentBusy, 100*s.WorkerCPUBusy)
}

// reading is a snapshot of the counters.
type reading struct {
	at             time.Time
	fwd, offered   uint64
	busy, total    uint64
	wbusy, wtotal  uint64 // the worker's CPU
	napi, agentRun time.Duration
}

func (w *window) read() (reading, error) {
	r := reading{at: time.Now()}
	var errs [4]error
	r.fwd, errs[0] = w.sink.Count()
	r.offered, errs[1] = w.gen.Offered()
	r.busy, r.total, errs[2] = cpuTimes(napiCPU)
	r.napi, errs[3] = threadRuntime(w.napiPid)
	if w.agent != nil {
		r.wbusy, r.wtotal, _ = cpuTimes(w.workerCPU)
		for tid := range w.agent.threads() {
			if d, err := threadRuntime(tid); err == nil {
				r.agentRun += d
			}
		}
	}
	return r, errors.Join(errs[:]...)
}

func (w *window) run(ctx context.Context) (sample, error) {
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	type result struct {
		st  gen.RunStats
		err error
	}
	done := make(chan result, 1)
	start := time.Now()
	go func() {
		st, err := w.gen.Run(ctx, gen.RunOptions{
			Netns: w.netns, Ifname: w.ifname, CPU: genCPU,
			Until: start.Add(w.warmup + w.dur), Repeat: w.repeat, Rate: w.rate,
		})
		done <- result{st, err}
	}()
	// Whatever happens, the generator is waited for: it sends into links
	// the caller is about to remove.
	genErr := func() error { cancel(); return (<-done).err }

	sleep := func(d time.Duration) error {
		select {
		case r := <-done:
			done <- r
			if r.err != nil {
				return r.err
			}
			return errors.New("generator stopped before the window ended")
		case <-ctx.Done():
			return ctx.Err()
		case <-time.After(d):
			return nil
		}
	}
	if err := sleep(w.warmup); err != nil {
		return sample{}, errors.Join(err, genErr())
	}
	var perf *exec.Cmd
	if w.perfOut != "" {
		pids := strconv.Itoa(w.agent.pid()) + "," + strconv.Itoa(w.napiPid)
		perf = exec.Command("perf", "record", "-g", "-F", "997", "-p", pids, "-o", w.perfOut, "--", "sleep", strconv.FormatFloat(w.dur.Seconds(), 'f', 3, 64))
		if err := perf.Start(); err != nil {
			return sample{}, errors.Join(fmt.Errorf("perf record: %w", err), genErr())
		}
		defer func() {
			if perf != nil { // not waited for: an error path
				perf.Process.Kill()
				perf.Wait()
			}
		}()
	}
	r0, err := w.read()
	if err != nil {
		return sample{}, errors.Join(err, genErr())
	}
	if err := sleep(time.Until(start.Add(w.warmup + w.dur))); err != nil {
		return sample{}, errors.Join(err, genErr())
	}
	r1, err := w.read()
	if err != nil {
		return sample{}, errors.Join(err, genErr())
	}
	res := <-done
	if perf != nil {
		err := perf.Wait()
		perf = nil
		if err != nil {
			return sample{}, fmt.Errorf("perf record: %w", err)
		}
	}
	if res.err != nil {
		return sample{}, res.err
	}
	dt := r1.at.Sub(r0.at)
	s := sample{
		Forwarded: r1.fwd - r0.fwd,
		Offered:   r1.offered - r0.offered,
		Window:    dt,
		NAPIBusy:  float64(r1.napi-r0.napi) / float64(dt),
		AgentBusy: -1,
		GenRuns:   res.st.Runs,

		WorkerCPUBusy: -1,
	}
	if r1.total > r0.total {
		s.CPUBusy = float64(r1.busy-r0.busy) / float64(r1.total-r0.total)
	}
	s.Foreign = s.CPUBusy - s.NAPIBusy
	if w.agent != nil {
		s.AgentBusy = float64(r1.agentRun-r0.agentRun) / float64(dt)
		if r1.wtotal > r0.wtotal {
			s.WorkerCPUBusy = float64(r1.wbusy-r0.wbusy) / float64(r1.wtotal-r0.wtotal)
		}
		if w.workerCPU == napiCPU {
			s.Foreign -= s.AgentBusy
		} else {
			s.Foreign = -1
		}
	}
	if s.Foreign != -1 {
		s.Foreign = max(0, s.Foreign)
	}
	return s, nil
}
