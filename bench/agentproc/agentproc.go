// Package agentproc runs the trunkline agent as a separate process inside a
// bed's node namespace, the way an operator runs it, for the demo, the
// bench and end-to-end tests.
package agentproc

import (
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"os/exec"
	"syscall"
	"time"

	"github.com/trunkline/trunkline/agent"
)

// Proc is a running agent.
type Proc struct {
	cmd    *exec.Cmd
	done   chan error
	Client *agent.Client
}

// Options start an agent.
type Options struct {
	// Binary is the trunkline executable; default this process's own.
	Binary string
	// Netns is the namespace to run in (a bed's node namespace).
	Netns string
	// Config is the agent's configuration file; Socket its API socket.
	Config, Socket string
	// Args are extra arguments to `trunkline run`.
	Args []string
	// Log receives the agent's stderr; default discarded.
	Log io.Writer
	// ReadyTimeout bounds the wait for /readyz; default 10 s.
	ReadyTimeout time.Duration
}

// Start runs `trunkline run --config C` in the namespace and waits until the
// agent answers /readyz. On failure the process is stopped.
func Start(ctx context.Context, o Options) (*Proc, error) {
	if o.Binary == "" {
		exe, err := os.Executable()
		if err != nil {
			return nil, err
		}
		o.Binary = exe
	}
	if o.ReadyTimeout == 0 {
		o.ReadyTimeout = 10 * time.Second
	}
	args := append([]string{"netns", "exec", o.Netns, o.Binary, "run", "--config", o.Config}, o.Args...)
	cmd := exec.Command("ip", args...)
	cmd.Stdout, cmd.Stderr = o.Log, o.Log
	// No Pdeathsig: it fires when the forking OS thread exits, and Go
	// discards threads (locked ones, after a namespace switch) at will. The
	// bed kills what runs in its namespaces when it goes down.
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
	if err := cmd.Start(); err != nil {
		return nil, fmt.Errorf("start agent: %w", err)
	}
	p := &Proc{cmd: cmd, done: make(chan error, 1), Client: agent.NewClient(o.Socket)}
	go func() { p.done <- cmd.Wait() }()
	deadline := time.Now().Add(o.ReadyTimeout)
	for {
		select {
		case err := <-p.done:
			p.done <- err
			return nil, fmt.Errorf("agent exited before it was ready: %v", err)
		case <-ctx.Done():
			p.Kill()
			return nil, ctx.Err()
		case <-time.After(20 * time.Millisecond):
		}
		rctx, cancel := context.WithTimeout(ctx, 200*time.Millisecond)
		ok := p.Client.Ready(rctx)
		cancel()
		if ok {
			return p, nil
		}
		if time.Now().After(deadline) {
			p.Kill()
			return nil, fmt.Errorf("agent not ready after %s", o.ReadyTimeout)
		}
	}
}

// Stop sends SIGTERM and waits up to timeout for the agent to exit, then
// kills it. It returns how long the agent took and its exit error.
func (p *Proc) Stop(timeout time.Duration) (time.Duration, error) {
	start := time.Now()
	syscall.Kill(-p.cmd.Process.Pid, syscall.SIGTERM)
	select {
	case err := <-p.done:
		p.done <- err
		return time.Since(start), err
	case <-time.After(timeout):
		p.Kill()
		return time.Since(start), errors.New("agent did not exit after SIGTERM; killed")
	}
}

// Kill stops the agent with SIGKILL (a crash) and waits for it.
func (p *Proc) Kill() {
	syscall.Kill(-p.cmd.Process.Pid, syscall.SIGKILL)
	err := <-p.done
	p.done <- err
}

// Pid is the agent's process ID (of the `ip netns exec` that became it).
func (p *Proc) Pid() int { return p.cmd.Process.Pid }
