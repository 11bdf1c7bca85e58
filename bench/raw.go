package bench

import (
	"context"
	"fmt"
	"os"
)

// rawPair is the `raw` peer: one veth pair in a namespace of its own; the
// generator transmits on A, the sink counts on B.
type rawPair struct {
	Netns string
	A, B  string
}

// upRawPair makes <prefix>-raw with the pair rawa/rawb, one queue each,
// removing a leftover namespace of that name first.
func upRawPair(ctx context.Context, prefix string) (_ *rawPair, err error) {
	r := &rawPair{Netns: prefix + "-raw", A: "rawa", B: "rawb"}
	if err := r.down(ctx); err != nil {
		return nil, err
	}
	defer func() {
		if err != nil {
			r.down(context.Background())
		}
	}()
	if _, err := run(ctx, "ip", "netns", "add", r.Netns); err != nil {
		return nil, err
	}
	for _, args := range [][]string{
		{"link", "set", "lo", "up"},
		{"link", "add", r.A, "numtxqueues", "1", "numrxqueues", "1", "type", "veth", "peer", "name", r.B, "numtxqueues", "1", "numrxqueues", "1"},
		{"link", "set", r.A, "up"},
		{"link", "set", r.B, "up"},
	} {
		if _, err := run(ctx, "ip", append([]string{"-n", r.Netns}, args...)...); err != nil {
			return nil, err
		}
	}
	return r, nil
}

// down deletes the namespace (and the pair with it), killing anything left
// in it. A missing namespace is fine.
func (r *rawPair) down(ctx context.Context) error {
	if _, err := os.Stat("/run/netns/" + r.Netns); err != nil {
		return nil
	}
	if out, err := run(ctx, "ip", "netns", "pids", r.Netns); err == nil && out != "" {
		return fmt.Errorf("raw peer: processes %q still in %s; not removing it", out, r.Netns)
	}
	if _, err := run(ctx, "ip", "netns", "del", r.Netns); err != nil {
		return fmt.Errorf("raw peer: %w", err)
	}
	return nil
}
