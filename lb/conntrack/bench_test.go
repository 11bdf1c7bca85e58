package conntrack

import (
	"fmt"
	"math/rand/v2"
	"sync/atomic"
	"testing"
)

// filled returns a table of the default size holding n TCP connections,
// established, and their tuples in random order.
func filled(b *testing.B, n int) (*Table, []Key) {
	b.Helper()
	tb, err := New(Options{})
	if err != nil {
		b.Fatal(err)
	}
	b.Cleanup(func() { tb.Close() })
	keys := make([]Key, 0, 2*n)
	for i := range n {
		c := flow(i, ProtoTCP)
		if res, _ := tb.Insert(c, syn, 0); res != Inserted {
			b.Fatalf("insert %d: %v", i, res)
		}
		tb.Lookup(c.Reply, synack, 0)
		tb.Lookup(c.Orig, ack, 0)
		keys = append(keys, c.Orig, c.Reply)
	}
	rand.New(rand.NewPCG(1, 1)).Shuffle(len(keys), func(i, j int) { keys[i], keys[j] = keys[j], keys[i] })
	return tb, keys
}

var sizes = []int{1, 1 << 20}

func BenchmarkLookupHit(b *testing.B) {
	for _, n := range sizes {
		b.Run(fmt.Sprintf("entries=%d", n), func(b *testing.B) {
			tb, keys := filled(b, n)
			mask := len(keys) - 1
			b.ReportAllocs()
			b.ResetTimer()
			for i := 0; i < b.N; i++ {
				// now advances 1ms per packet: a write once per second per flow
				if _, _, ok := tb.Lookup(keys[i&mask], ack, Time(i)*1e6); !ok {
					b.Fatal("miss")
				}
			}
		})
	}
}

func BenchmarkLookupMiss(b *testing.B) {
	tb, _ := filled(b, 1<<20)
	b.ReportAllocs()
	b.ResetTimer()
	for i := 0; i < b.N; i++ {
		if _, _, ok := tb.Lookup(flow(1<<21+i&0xffff, ProtoTCP).Orig, syn, 0); ok {
			b.Fatal("hit")
		}
	}
}

// BenchmarkInsertDelete: a new flow and its removal in a table holding 1M
// connections (of 1,048,576), through the free list.
func BenchmarkInsertDelete(b *testing.B) {
	tb, _ := filled(b, 1<<20-1024)
	b.ReportAllocs()
	b.ResetTimer()
	for i := 0; i < b.N; i++ {
		c := flow(1<<21+i, ProtoTCP)
		if res, _ := tb.Insert(c, syn, 0); res != Inserted {
			b.Fatal(res)
		}
		if !tb.Delete(c.Orig) {
			b.Fatal("delete")
		}
	}
}

// BenchmarkLookupParallel: GOMAXPROCS workers looking up random flows of
// 1M, both directions, as workers on different queues do.
func BenchmarkLookupParallel(b *testing.B) {
	tb, keys := filled(b, 1<<20)
	mask := len(keys) - 1
	var seed atomic.Uint64
	b.ReportAllocs()
	b.ResetTimer()
	b.RunParallel(func(pb *testing.PB) {
		r := rand.New(rand.NewPCG(seed.Add(1), 0))
		i := r.IntN(len(keys))
		for pb.Next() {
			i++
			if _, _, ok := tb.Lookup(keys[i&mask], ack, Time(i)*1e6); !ok {
				b.Fatal("miss")
			}
		}
	})
}

// BenchmarkLookupParallelOneFlow: every worker on the same connection, the
// worst case for the shared state word.
func BenchmarkLookupParallelOneFlow(b *testing.B) {
	tb, keys := filled(b, 1)
	b.ReportAllocs()
	b.ResetTimer()
	b.RunParallel(func(pb *testing.PB) {
		i := 0
		for pb.Next() {
			i++
			tb.Lookup(keys[i&1], ack, Time(i)*1e6)
		}
	})
}

func BenchmarkExpireSweep(b *testing.B) {
	tb, _ := filled(b, 1<<20)
	b.ReportAllocs()
	b.ResetTimer()
	for i := 0; i < b.N; i++ {
		tb.Expire(0, 65536)
	}
	b.ReportMetric(float64(b.Elapsed().Nanoseconds())/float64(b.N)/65536, "ns/slot")
}
