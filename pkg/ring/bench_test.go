package ring

import (
	"os"
	"strconv"
	"testing"
	"time"
)

// benchDoc: 100 members, weights 1..4 (haproxy: 4000 points).
func benchDoc(algorithm string) *Document {
	d := testDoc(algorithm, 100)
	for i := range d.Members {
		d.Members[i].Weight = 1 + i%4
	}
	d.Params = Params{}
	return d
}

func benchKeys() ([][]byte, []string) {
	bs, ss := make([][]byte, 1024), make([]string, 1024)
	for i := range bs {
		ss[i] = "uid-" + strconv.Itoa(i*7919)
		bs[i] = []byte(ss[i])
	}
	return bs, ss
}

func benchLookup(b *testing.B, algorithm string) {
	r, err := New(benchDoc(algorithm))
	if err != nil {
		b.Fatal(err)
	}
	bs, ss := benchKeys()
	b.Run("bytes", func(b *testing.B) {
		b.ReportAllocs()
		var sink uint32
		for i := 0; b.Loop(); i++ {
			sink += r.Lookup(bs[i&1023])
		}
		_ = sink
	})
	b.Run("string", func(b *testing.B) {
		b.ReportAllocs()
		var sink uint32
		for i := 0; b.Loop(); i++ {
			sink += r.LookupString(ss[i&1023])
		}
		_ = sink
	})
	b.Run("live-one-down", func(b *testing.B) {
		b.ReportAllocs()
		up := func(id uint32) bool { return id != 7 }
		var sink uint32
		for i := 0; b.Loop(); i++ {
			id, _ := r.LookupLive(bs[i&1023], up)
			sink += id
		}
		_ = sink
	})
}

// BenchmarkLookupBounded: 100 members, 65521 partitions.
func BenchmarkLookupBounded(b *testing.B) { benchLookup(b, AlgorithmBounded) }

// BenchmarkLookupHAProxy: 100 members of weights 1..4, 4000 points.
func BenchmarkLookupHAProxy(b *testing.B) { benchLookup(b, AlgorithmHAProxy) }

// BenchmarkBuild100: New for 100 members of weight 1 with the default
// params, and buraksezer's own consistent.New for the same members.
func BenchmarkBuild100(b *testing.B) {
	for _, alg := range []string{AlgorithmBounded, AlgorithmHAProxy} {
		d := testDoc(alg, 100)
		b.Run(alg, func(b *testing.B) {
			b.ReportAllocs()
			for b.Loop() {
				if _, err := New(d); err != nil {
					b.Fatal(err)
				}
			}
		})
	}
	b.Run("buraksezer-consistent.New", func(b *testing.B) {
		d := testDoc(AlgorithmBounded, 100)
		for b.Loop() {
			buraksezer(d)
		}
	})
}

func TestLookupDoesNotAllocate(t *testing.T) {
	bs, ss := benchKeys()
	up := func(id uint32) bool { return id != 7 }
	for _, alg := range []string{AlgorithmBounded, AlgorithmHAProxy} {
		r, _ := New(benchDoc(alg))
		i := 0
		if n := testing.AllocsPerRun(1000, func() {
			i++
			r.Lookup(bs[i&1023])
			r.LookupString(ss[i&1023])
			r.LookupLive(bs[i&1023], up)
		}); n != 0 {
			t.Errorf("%s: %v allocations per lookup", alg, n)
		}
	}
}

// TestPrintBalance prints the balance and movement figures over 1M keys
// (uid-0 … uid-999999) on 15 members of weight 1 (ids 1-15, names
// edge-1 … edge-15). Run with RING_FIGURES=1.
func TestPrintBalance(t *testing.T) {
	if os.Getenv("RING_FIGURES") != "1" {
		t.Skip("set RING_FIGURES=1 to print the figures")
	}
	const keys = 1000000
	owners := func(d *Document) []uint32 {
		r, err := New(d)
		if err != nil {
			t.Fatal(err)
		}
		o := make([]uint32, keys)
		for i := range o {
			o[i] = r.LookupString("uid-" + strconv.Itoa(i))
		}
		return o
	}
	for _, alg := range []string{AlgorithmBounded, AlgorithmHAProxy} {
		base := testDoc(alg, 15)
		start := time.Now()
		o15 := owners(base)
		elapsed := time.Since(start)
		counts := map[uint32]int{}
		for _, id := range o15 {
			counts[id]++
		}
		maxr, minr := ratios(counts, 15)
		r, _ := New(base)
		smax, smin := 0.0, 1.0
		for _, s := range r.Shares() {
			smax, smin = max(smax, s*15), min(smin, s*15)
		}
		t.Logf("%-8s 15 members, 1M keys: max/mean %.3f min/mean %.3f (key-space shares: max/mean %.3f min/mean %.3f; %v for 1M lookups)",
			alg, maxr, minr, smax, smin, elapsed.Round(time.Millisecond))

		// moved: users whose owner changed; necessary: users who must
		// move (the new member's, the removed member's, the weight gain).
		count := func(o []uint32, id uint32) (n int) {
			for _, x := range o {
				if x == id {
					n++
				}
			}
			return n
		}
		report := func(what string, o []uint32, necessary int, ideal float64) {
			m := moved(o15, o)
			t.Logf("%-8s %-24s moved %.4f of users = %.3f x ideal %s, %.3f x necessary",
				alg, what, float64(m)/keys, float64(m)/keys/ideal, strconv.FormatFloat(ideal, 'f', 4, 64), float64(m)/float64(necessary))
		}
		o := owners(testDoc(alg, 16))
		report("add a 16th member:", o, count(o, 16), 1.0/16)
		rm := base.clone()
		rm.Members = rm.Members[:14]
		report("remove member 15:", owners(rm), count(o15, 15), 1.0/15)
		rm = base.clone()
		rm.Members = append(rm.Members[:6:6], rm.Members[7:]...)
		report("remove member 7:", owners(rm), count(o15, 7), 1.0/15)
		w := base.clone()
		w.Members[0].Weight = 2
		o = owners(w)
		report("weight of member 1 -> 2:", o, count(o, 1)-count(o15, 1), 2.0/16-1.0/15)
	}
}
