package maglev

// Population is weighted Maglev (paper §3.4: weights adjust how often a
// backend takes a turn). The usable backends, in Key order, take turns in
// rounds r = 1, 2, …; in each round a backend of weight w claims its next
// preferred empty slot iff floor(r·w/wmax) grew, so the heaviest backend
// claims every round and a backend of weight w claims in w/wmax of them,
// until the table is full. A backend ends with M·w/Σw ± (n·w/Σw + 2)
// entries for n usable backends, and with equal weights counts differ by at
// most one.
//
// Two schedules produce exactly this order: scan walks every backend every
// round (cheap when weights are close: ~n·wmax/Σw steps per entry), heap pops
// the (round, index)-least backend from a min-heap (log n per entry whatever
// the weights). chooseHeap picks the cheaper one; the entries are identical.

// heapRatio is the n·wmax/Σw (the scan's steps per entry) above which the
// heap schedule is cheaper. Measured with 1000 backends at M=16381: a heap
// pop costs about as much as 100–150 scan steps.
const heapRatio = 128

// chooseHeap reports whether populate should use the heap schedule for the
// usable backends.
func chooseHeap(backends []Backend, usable []int32) bool {
	var sum, wmax uint64
	for _, i := range usable {
		w := uint64(backends[i].Weight)
		sum += w
		wmax = max(wmax, w)
	}
	return uint64(len(usable))*wmax > heapRatio*sum
}

// filler claims slots of entries along each usable backend's permutation
// (offset + k·skip) mod M, a full cycle because M is prime and 0 < skip < M.
type filler[E uint8 | uint16] struct {
	entries []E
	empty   E        // marks an unclaimed slot; no backend index reaches it
	usable  []int32  // index in Backends of each usable backend
	next    []uint64 // each usable backend's next permutation position
	skip    []uint64
}

// claim gives usable backend j the first empty slot left in its permutation.
// Some slot is empty, and backend j's permutation visits every slot.
func (f *filler[E]) claim(j int) {
	m := uint64(len(f.entries))
	c, s := f.next[j], f.skip[j]
	for f.entries[c] != f.empty {
		if c += s; c >= m {
			c -= m
		}
	}
	f.entries[c] = E(f.usable[j])
	if c += s; c >= m {
		c -= m
	}
	f.next[j] = c
}

// populate fills entries (len M, prime) with indices into backends, taking
// turns among usable (at least two backends with Weight > 0, in Key order).
func populate[E uint8 | uint16](entries []E, backends []Backend, usable []int32, useHeap bool) {
	m := uint64(len(entries))
	n := len(usable)
	f := filler[E]{
		entries: entries,
		empty:   ^E(0),
		usable:  usable,
		next:    make([]uint64, n),
		skip:    make([]uint64, n),
	}
	for i := range entries {
		entries[i] = f.empty
	}
	weight := make([]uint64, n)
	var wmax uint64
	for j, i := range usable {
		h := Hash(backends[i].Key)
		f.next[j] = (h >> 32) % m
		f.skip[j] = (h&0xffffffff)%(m-1) + 1
		weight[j] = uint64(backends[i].Weight)
		wmax = max(wmax, weight[j])
	}
	if useHeap {
		heapSchedule(&f, weight, wmax)
	} else {
		scanSchedule(&f, weight, wmax)
	}
}

// scanSchedule walks every usable backend every round, keeping credit[j] =
// r·w − claims·wmax in [0, wmax): backend j claims when its credit reaches
// wmax.
func scanSchedule[E uint8 | uint16](f *filler[E], weight []uint64, wmax uint64) {
	credit := make([]uint64, len(weight))
	left := len(f.entries)
	for {
		for j, w := range weight {
			if credit[j] += w; credit[j] < wmax {
				continue
			}
			credit[j] -= wmax
			f.claim(j)
			if left--; left == 0 {
				return
			}
		}
	}
}

// turn is a usable backend's next claim in the heap schedule: its k-th claim
// happens in round ceil(k·wmax/w).
type turn struct {
	round uint64
	k     uint32 // claims made so far + 1
	j     int32  // usable index; breaks ties in round so Key order holds
}

func (a turn) before(b turn) bool {
	return a.round < b.round || a.round == b.round && a.j < b.j
}

// heapSchedule claims in the same order as scanSchedule from a min-heap of
// each backend's next turn.
func heapSchedule[E uint8 | uint16](f *filler[E], weight []uint64, wmax uint64) {
	n := len(weight)
	h := make([]turn, n)
	for j, w := range weight {
		h[j] = turn{round: ceilDiv(wmax, w), k: 1, j: int32(j)}
	}
	for i := n/2 - 1; i >= 0; i-- {
		siftDown(h, i)
	}
	for range len(f.entries) {
		t := h[0]
		f.claim(int(t.j))
		t.k++
		t.round = ceilDiv(uint64(t.k)*wmax, weight[t.j])
		h[0] = t
		siftDown(h, 0)
	}
}

// siftDown restores the heap order below h[i].
func siftDown(h []turn, i int) {
	n := len(h)
	for {
		l := 2*i + 1
		if l >= n {
			return
		}
		c := l
		if r := l + 1; r < n && h[r].before(h[l]) {
			c = r
		}
		if !h[c].before(h[i]) {
			return
		}
		h[i], h[c] = h[c], h[i]
		i = c
	}
}

// ceilDiv returns ceil(a/b) for b > 0.
func ceilDiv(a, b uint64) uint64 {
	q := a / b
	if q*b != a {
		q++
	}
	return q
}
