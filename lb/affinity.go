package lb

import (
	"sync"
	"time"
)

// Affinity remembers, for sessionAffinity: ClientIP, which backend each
// client of a Service was given, until the Service's timeout passes
// without a new connection from that client (kube-proxy's "recent"
// match). It is consulted for new flows only, so it is a plain map behind
// per-shard locks; safe for concurrent use.
type Affinity struct {
	shards [affinityShards]affinityShard
}

const affinityShards = 64

type affinityShard struct {
	mu sync.Mutex // guards m
	m  map[affinityKey]affinityEntry
}

type affinityKey struct {
	service uint32
	client  [4]byte
}

type affinityEntry struct {
	backend Backend
	expires int64 // ns on the caller's clock
}

// NewAffinity makes an empty table.
func NewAffinity() *Affinity {
	a := &Affinity{}
	for i := range a.shards {
		a.shards[i].m = map[affinityKey]affinityEntry{}
	}
	return a
}

func (a *Affinity) shard(k affinityKey) *affinityShard {
	h := uint32(k.client[0]) ^ uint32(k.client[1])<<8 ^ uint32(k.client[2])<<16 ^ uint32(k.client[3])<<24 ^ k.service*0x9E3779B1
	return &a.shards[(h^h>>16)%affinityShards]
}

// Backend returns the backend client was last given by service, if that
// was less than the affinity timeout ago (now and the expiry are on the
// caller's monotonic clock, in ns).
func (a *Affinity) Backend(service uint32, client [4]byte, now int64) (Backend, bool) {
	k := affinityKey{service, client}
	s := a.shard(k)
	s.mu.Lock()
	e, ok := s.m[k]
	s.mu.Unlock()
	if !ok || now >= e.expires {
		return Backend{}, false
	}
	return e.backend, true
}

// Remember records that client was given backend by service, for timeout.
func (a *Affinity) Remember(service uint32, client [4]byte, b Backend, now int64, timeout time.Duration) {
	k := affinityKey{service, client}
	s := a.shard(k)
	s.mu.Lock()
	s.m[k] = affinityEntry{backend: b, expires: now + int64(timeout)}
	s.mu.Unlock()
}

// Expire forgets the clients whose affinity has timed out.
func (a *Affinity) Expire(now int64) (removed int) {
	for i := range a.shards {
		s := &a.shards[i]
		s.mu.Lock()
		for k, e := range s.m {
			if now >= e.expires {
				delete(s.m, k)
				removed++
			}
		}
		s.mu.Unlock()
	}
	return removed
}

// Len is the number of remembered clients.
func (a *Affinity) Len() int {
	n := 0
	for i := range a.shards {
		s := &a.shards[i]
		s.mu.Lock()
		n += len(s.m)
		s.mu.Unlock()
	}
	return n
}

// Range calls fn with each remembered client, the backend it was given and
// when that expires (ns on the caller's clock), until fn returns false. It
// holds one shard's lock at a time, during fn: fn must not call back into
// the table.
func (a *Affinity) Range(fn func(service uint32, client [4]byte, b Backend, expires int64) bool) {
	for i := range a.shards {
		s := &a.shards[i]
		s.mu.Lock()
		for k, e := range s.m {
			if !fn(k.service, k.client, e.backend, e.expires) {
				s.mu.Unlock()
				return
			}
		}
		s.mu.Unlock()
	}
}
