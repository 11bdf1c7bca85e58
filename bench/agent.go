package bench

import (
	"bytes"
	"context"
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/trunkline/trunkline/bench/agentproc"
	"github.com/trunkline/trunkline/bench/bed"
)

// agentReadyTimeout bounds the wait for an agent's /readyz.
const agentReadyTimeout = 15 * time.Second

// agentProc is a trunkline agent running inside the bed's node namespace.
type agentProc struct {
	*agentproc.Proc
	out *lockedBuffer
}

// startAgent runs `trunkline run --config … [--worker-cpus cpu]` inside the
// node namespace and waits until /readyz answers 200 on the bed's API
// socket. A cpu < 0 leaves the worker unpinned; conntrackMax > 0 bounds its
// connection table (the bed's config with conntrack.maxEntries added).
func startAgent(ctx context.Context, b *bed.Bed, binary string, cpu, conntrackMax int, extra []string) (*agentProc, error) {
	args := append([]string(nil), extra...)
	if cpu >= 0 {
		args = append(args, "--worker-cpus", strconv.Itoa(cpu))
	}
	config := b.ConfigPath
	if conntrackMax > 0 {
		base, err := os.ReadFile(b.ConfigPath)
		if err != nil {
			return nil, err
		}
		config = filepath.Join(filepath.Dir(b.ConfigPath), "trunkline-bench.yaml")
		more := fmt.Sprintf("\nconntrack:\n  maxEntries: %d\n", conntrackMax)
		if err := os.WriteFile(config, append(bytes.TrimRight(base, "\n"), more...), 0o644); err != nil {
			return nil, err
		}
	}
	out := &lockedBuffer{}
	p, err := agentproc.Start(ctx, agentproc.Options{
		Binary: binary, Netns: b.Node.Netns, Config: config, Socket: b.APISocket(),
		Args: args, Log: out, ReadyTimeout: agentReadyTimeout,
	})
	if err != nil {
		return nil, fmt.Errorf("%w: %s", err, out.tail())
	}
	return &agentProc{Proc: p, out: out}, nil
}

// pid is the agent's process id (ip netns exec execs the agent in place).
func (a *agentProc) pid() int { return a.Pid() }

// threads lists the agent's threads: id → name.
func (a *agentProc) threads() map[int]string {
	dir := "/proc/" + strconv.Itoa(a.pid()) + "/task"
	ents, err := os.ReadDir(dir)
	if err != nil {
		return nil
	}
	m := map[int]string{}
	for _, e := range ents {
		tid, err := strconv.Atoi(e.Name())
		if err != nil {
			continue
		}
		comm, _ := os.ReadFile(dir + "/" + e.Name() + "/comm")
		m[tid] = strings.TrimSpace(string(comm))
	}
	return m
}

// agentStopTimeout bounds an agent's orderly exit (it detaches a program
// and closes sockets per pod).
const agentStopTimeout = 30 * time.Second

// stop sends SIGTERM, waits up to agentStopTimeout, then kills. Repeating
// it is fine. It returns how long the agent took to exit.
func (a *agentProc) stop() (time.Duration, error) {
	return a.Stop(agentStopTimeout)
}

// lockedBuffer collects a process's output.
type lockedBuffer struct {
	mu  sync.Mutex
	buf bytes.Buffer
}

func (l *lockedBuffer) Write(p []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	if l.buf.Len() > 1<<20 {
		l.buf.Reset()
	}
	return l.buf.Write(p)
}

// tail is the last lines of the output.
func (l *lockedBuffer) tail() string {
	l.mu.Lock()
	defer l.mu.Unlock()
	s := strings.TrimSpace(l.buf.String())
	if len(s) > 2000 {
		s = "…" + s[len(s)-2000:]
	}
	if s == "" {
		return "(no output)"
	}
	return s
}

// rss is the agent's resident memory in bytes, 0 if unknown.
func (a *agentProc) rss() int64 {
	b, err := os.ReadFile("/proc/" + strconv.Itoa(a.pid()) + "/status")
	if err != nil {
		return 0
	}
	for _, line := range strings.Split(string(b), "\n") {
		if v, ok := strings.CutPrefix(line, "VmRSS:"); ok {
			f := strings.Fields(v)
			if len(f) == 2 && f[1] == "kB" {
				kb, _ := strconv.ParseInt(f[0], 10, 64)
				return kb << 10
			}
		}
	}
	return 0
}
