package dataplane

import "sync/atomic"

// ServiceCounters count one Service port's translated traffic on a worker.
type ServiceCounters struct {
	Packets, NewConns atomic.Uint64
}

// serviceCounters returns the counters of Service id, growing the table
// when a new ID appears (rare: a Service added). Worker goroutine only.
func (w *Worker) serviceCounters(id uint32) *ServiceCounters {
	cur := *w.svcCounters.Load()
	if int(id) < len(cur) {
		return &cur[id]
	}
	grown := make([]ServiceCounters, max(2*len(cur), int(id)+1, 64))
	for i := range cur {
		grown[i].Packets.Store(cur[i].Packets.Load())
		grown[i].NewConns.Store(cur[i].NewConns.Load())
	}
	w.svcCounters.Store(&grown)
	return &grown[id]
}

// ServiceCounts returns Service id's packets and new connections on this
// worker. Safe from any goroutine.
func (w *Worker) ServiceCounts(id uint32) (packets, newConns uint64) {
	cur := *w.svcCounters.Load()
	if int(id) >= len(cur) {
		return 0, 0
	}
	return cur[id].Packets.Load(), cur[id].NewConns.Load()
}

// ResetService zeroes Service id's counters, before the ID is given to
// another Service. It runs on the worker's goroutine.
func (w *Worker) ResetService(id uint32) {
	w.do(func() {
		cur := *w.svcCounters.Load()
		if int(id) < len(cur) {
			cur[id].Packets.Store(0)
			cur[id].NewConns.Store(0)
		}
	})
}
