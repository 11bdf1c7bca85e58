// Package maglev builds Maglev consistent-hashing tables (Eisenbud et al.,
// "Maglev: A Fast and Reliable Software Network Load Balancer", NSDI 2016)
// that pick a Service's backend for a new flow.
//
// The control plane builds a Table off the hot path with New and publishes it
// with an atomic pointer swap; a Table is immutable, so the dataplane calls
// Lookup from any number of workers without locks. Every node builds the
// identical table from the same backend set, whatever order the backends
// arrive in: backends are sorted by Key and hashed with a fixed, seedless
// hash (Hash). Changing Hash or the population algorithm changes every table,
// so nodes running different versions of this package disagree.
package maglev

import (
	"errors"
	"fmt"
	"slices"
	"strings"
	"unsafe"
)

// DefaultSize is the default table size M: the smallest accepted prime.
// Disruption shrinks as M grows relative to the backend count N: removing
// one of 100 backends moves about 2.3% of entries at M=16381 and 1.5% at
// M=65521, against the 1% that pointed to it. Services with more than a few
// dozen backends deserve a larger M.
const DefaultSize = 16381

// MaxSize is the largest accepted table size, the largest prime below 2^24;
// it bounds a table's memory (32 MiB with 2-byte entries) and keeps the
// permutation arithmetic in 32-bit halves of Hash.
const MaxSize = 16777213

// MaxBackends is the most backends a table holds, weight 0 included: entries
// are uint16 indices and 0xFFFF marks an empty slot while building.
const MaxBackends = 65535

// ErrSize is wrapped by New's error when the table size is not an accepted
// prime.
var ErrSize = errors.New("maglev: invalid table size")

// ErrBackends is wrapped by New's error when backends are invalid: an empty
// or duplicate Key, or too many backends.
var ErrBackends = errors.New("maglev: invalid backends")

// Backend is one endpoint a Service balances over.
type Backend struct {
	// Key is the backend's stable identity, the same on every node (e.g.
	// "10.0.1.5:8080" or an endpoint UID); it orders the backends and seeds
	// the backend's permutation. It must be unique and non-empty.
	Key string
	// Weight is the backend's relative share of new flows: a backend gets
	// about Weight/ΣWeight of the entries. 0 means no new flows (e.g. a
	// terminating endpoint): the backend is kept in Backends, so indices
	// stay meaningful, but no entry points to it.
	Weight uint32
}

// Table maps flow hashes to backends. It is immutable once built and safe
// for concurrent use.
//
// Entries hold indices into backends: e8 is used when there are at most 255
// backends, e16 otherwise, and exactly one of them is non-nil when two or
// more backends have a non-zero weight. With fewer, both are nil and Lookup
// returns only.
type Table struct {
	e8       []uint8
	e16      []uint16
	only     int       // Lookup's answer when there are no entries: the one usable index, or -1
	size     int       // M, even when there are no entries
	backends []Backend // sorted by Key
}

// New builds a table of size entries over backends. size must be a prime in
// [DefaultSize, MaxSize]. New copies backends (the caller's slice is neither
// kept nor reordered) and reports every invalid backend together, wrapping
// ErrBackends; a bad size wraps ErrSize.
//
// The build takes about size·ln(size) permutation steps, plus, when weights
// differ widely, up to heapRatio scan steps or one heap operation per entry;
// BenchmarkNew measures it (about 0.1–0.5 ms at DefaultSize).
func New(backends []Backend, size int) (*Table, error) {
	var errs []error
	if err := checkSize(size); err != nil {
		errs = append(errs, err)
	}
	sorted := slices.Clone(backends)
	slices.SortFunc(sorted, func(a, b Backend) int { return strings.Compare(a.Key, b.Key) })
	if len(sorted) > MaxBackends {
		errs = append(errs, fmt.Errorf("%w: %d backends, at most %d fit in a table; split the Service's endpoints", ErrBackends, len(sorted), MaxBackends))
	}
	for i, b := range backends {
		if b.Key == "" {
			errs = append(errs, fmt.Errorf("%w: backend %d (weight %d) has an empty Key; give every backend a stable identity such as ip:port or the endpoint UID", ErrBackends, i, b.Weight))
		}
	}
	for i := 1; i < len(sorted); i++ {
		if k := sorted[i].Key; k != "" && k == sorted[i-1].Key && (i == 1 || sorted[i-2].Key != k) {
			errs = append(errs, fmt.Errorf("%w: duplicate Key %q; each backend must appear once", ErrBackends, k))
		}
	}
	if len(errs) > 0 {
		return nil, errors.Join(errs...)
	}

	t := &Table{only: -1, size: size, backends: slices.Clip(sorted)}
	var usable []int32 // indices into sorted of backends with Weight > 0
	for i, b := range sorted {
		if b.Weight > 0 {
			usable = append(usable, int32(i))
		}
	}
	switch {
	case len(usable) == 1:
		t.only = int(usable[0])
	case len(usable) > 1 && len(sorted) <= 255:
		t.e8 = make([]uint8, size)
		populate(t.e8, sorted, usable, chooseHeap(sorted, usable))
	case len(usable) > 1:
		t.e16 = make([]uint16, size)
		populate(t.e16, sorted, usable, chooseHeap(sorted, usable))
	}
	return t, nil
}

// Lookup returns the index in Backends of the backend for a flow with the
// given hash, or -1 if no backend has a non-zero weight (or t is nil). It
// takes no locks, does not allocate and costs one modulo and one load. The
// hash should be well mixed in all its bits; Lookup reduces it modulo Size.
func (t *Table) Lookup(hash uint64) int {
	if t == nil {
		return -1
	}
	if e := t.e8; len(e) != 0 {
		return int(e[hash%uint64(len(e))])
	}
	if e := t.e16; len(e) != 0 {
		return int(e[hash%uint64(len(e))])
	}
	return t.only
}

// Backends returns the table's backends sorted by Key, the order Lookup's
// indices refer to, weight-0 backends included. The slice is shared with
// the table and must not be modified.
func (t *Table) Backends() []Backend { return t.backends }

// Size returns the table size M that New was given.
func (t *Table) Size() int { return t.size }

// Bytes returns the memory the table holds: the Table itself, its entries
// (1 or 2 bytes each, none with fewer than two usable backends), the backend
// list and the bytes of its keys (shared with the caller's strings, but kept
// alive by the table).
func (t *Table) Bytes() int {
	n := int(unsafe.Sizeof(*t)) + cap(t.e8) + 2*cap(t.e16) + cap(t.backends)*int(unsafe.Sizeof(Backend{}))
	for _, b := range t.backends {
		n += len(b.Key)
	}
	return n
}

// Equal reports whether t and o have the same size, the same backends
// (keys and weights) and the same entries, so that they pick the same
// backend for every hash. The control plane uses it to skip publishing a
// rebuilt table that changes nothing.
func (t *Table) Equal(o *Table) bool {
	if t == nil || o == nil {
		return t == o
	}
	return t.size == o.size && t.only == o.only &&
		slices.Equal(t.backends, o.backends) &&
		slices.Equal(t.e8, o.e8) && slices.Equal(t.e16, o.e16)
}

// Hash is the fixed hash that seeds each backend's permutation: 64-bit
// FNV-1a over the bytes of key, followed by the MurmurHash3 fmix64 finalizer
// so that keys differing in one byte (10.0.1.5 and 10.0.1.6) differ in about
// half of all bits. It has no seed and no per-process state: every node and
// every run computes the same value. A backend's permutation offset comes
// from the high 32 bits and its skip from the low 32 bits.
func Hash(key string) uint64 {
	const (
		offset64 = 14695981039346656037
		prime64  = 1099511628211
	)
	h := uint64(offset64)
	for i := 0; i < len(key); i++ {
		h ^= uint64(key[i])
		h *= prime64
	}
	h ^= h >> 33
	h *= 0xff51afd7ed558ccd
	h ^= h >> 33
	h *= 0xc4ceb9fe1a85ec53
	h ^= h >> 33
	return h
}

// checkSize explains why size is not an accepted table size, or returns nil.
func checkSize(size int) error {
	const hint = "use a prime such as 16381 (the default), 32749, 65521 or 131071"
	switch {
	case size < DefaultSize:
		return fmt.Errorf("%w: %d is below the minimum %d; %s", ErrSize, size, DefaultSize, hint)
	case size > MaxSize:
		return fmt.Errorf("%w: %d is above the maximum %d; %s", ErrSize, size, MaxSize, hint)
	case !isPrime(size):
		below, above := size-1, size+1
		for !isPrime(below) {
			below--
		}
		for !isPrime(above) {
			above++
		}
		if below < DefaultSize {
			return fmt.Errorf("%w: %d is not prime; %s (the nearest prime is %d)", ErrSize, size, hint, above)
		}
		return fmt.Errorf("%w: %d is not prime; %s (the nearest primes are %d and %d)", ErrSize, size, hint, below, above)
	}
	return nil
}

// isPrime reports whether n is prime, by trial division (n ≤ MaxSize+ a few,
// so at most ~2000 divisions).
func isPrime(n int) bool {
	if n < 2 {
		return false
	}
	if n%2 == 0 {
		return n == 2
	}
	for d := 3; d*d <= n; d += 2 {
		if n%d == 0 {
			return false
		}
	}
	return true
}

// sizeLadder are the table sizes SizeFor chooses from.
var sizeLadder = [...]int{16381, 32749, 65521, 131071, 262139, 524287, 1048573, 2097143, 4194301, 8388593, MaxSize}

// entriesPerBackend is how many entries per backend keep a change of one
// backend from moving more than 1% of the other backends' entries (at
// N = 100 and M = 16381, about 164 per backend, 1.4% move; at M = 65521,
// 655 per backend, 0.5%).
const entriesPerBackend = 650

// SizeFor returns the table size for n backends: the smallest of 16381,
// 32749, 65521, 131071, … (primes) that is at least min and at least 650·n,
// so that adding or removing a backend moves at most 1/n + 1% of entries.
func SizeFor(n, min int) int {
	want := max(min, n*entriesPerBackend)
	for _, s := range sizeLadder {
		if s >= want {
			return s
		}
	}
	return MaxSize
}
