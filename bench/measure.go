package bench

import (
	"context"
	"path/filepath"
	"strconv"
	"time"

	"github.com/trunkline/trunkline/bench/gen"
)

// Warm-ups before a measured window.
const (
	defaultWarmup = 500 * time.Millisecond
	quickWarmup   = 300 * time.Millisecond
)

// measureFrames measures how many of the generator's frames d forwards to
// the sink in c's direction.
func (s *session) measureFrames(ctx context.Context, d dataplane, c testCase, profile bool) (sample, error) {
	b := s.b
	w := window{
		gen:    s.gens[genKey{c.direction, c.size, c.flows, c.vip}],
		sink:   s.podSink,
		netns:  b.Wire.Netns,
		ifname: b.Wire.Ifname,
		warmup: s.warmup(),
		dur:    s.o.Duration,
		repeat: gen.DefaultRepeat,
		rate:   s.o.Rate,
	}
	if c.size > 512 {
		w.repeat = gen.MinRepeat // fewer, slower frames: keep runs near 1 s
	}
	napiNetns, napiIf, known := b.Node.Netns, b.Node.Trunk, s.trunkNAPI
	if c.direction == PodToWire {
		w.sink, w.netns, w.ifname = s.wireSink, s.pod.Netns, s.pod.Ifname
		napiIf, known = s.pod.HostVeth, s.podNAPI
	}
	switch d := d.(type) {
	case *rawPeer:
		w.sink, w.netns, w.ifname = s.rawSink, s.raw.Netns, s.raw.A
		napiNetns, napiIf, known = s.raw.Netns, s.raw.B, s.rawNAPI
	case *trunklinePeer:
		w.agent, w.workerCPU = d.agent, d.cpu
		if profile {
			w.perfOut = filepath.Join(s.o.PerfDir, "trunkline-"+d.place+"-"+c.direction+"-"+strconv.Itoa(c.size)+".data")
		}
	}
	th, err := pinNAPI(napiNetns, napiIf, napiCPU, known)
	if err != nil {
		return sample{}, err
	}
	w.napiPid = th.Pid
	return w.run(ctx)
}

func (s *session) warmup() time.Duration {
	if s.o.Quick {
		return quickWarmup
	}
	return defaultWarmup
}
