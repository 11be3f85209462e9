package ring

import (
	"fmt"
	"math"
	"strconv"
	"testing"
)

// Vectors from an independent implementation of HAProxy's src/hash.c and
// full_hash (Python); the test in test/haproxy checks them against the
// real binary.
func TestHashVectors(t *testing.T) {
	tests := []struct {
		in                    string
		sdbm, djb2, crc, wt6v uint32
	}{
		{"", 0x0, 0x1505, 0x0, 0xf99a0360},
		{"a", 0x61, 0x2b606, 0xe8b7be43, 0x714bf225},
		{"uid-42", 0x4141ba7b, 0x206e3f7a, 0x89233f7d, 0x61f49ebf},
		{"\xff\x80hello", 0x93c5cb31, 0xe329a298, 0xe1d8d00d, 0x91b9803c}, // bytes are unsigned
		{"ünïcødé", 0xa81b8413, 0x1095b3d2, 0xee7d5cf8, 0xa951998d},
	}
	for _, tt := range tests {
		b := []byte(tt.in)
		if g := sdbm(tt.in); g != tt.sdbm || sdbm(b) != g {
			t.Errorf("sdbm(%q) = %#x, want %#x", tt.in, g, tt.sdbm)
		}
		if g := djb2(tt.in); g != tt.djb2 || djb2(b) != g {
			t.Errorf("djb2(%q) = %#x, want %#x", tt.in, g, tt.djb2)
		}
		if g := crc32IEEE(tt.in); g != tt.crc || crc32IEEE(b) != g {
			t.Errorf("crc32(%q) = %#x, want %#x", tt.in, g, tt.crc)
		}
		if g := wt6(tt.in); g != tt.wt6v || wt6(b) != g {
			t.Errorf("wt6(%q) = %#x, want %#x", tt.in, g, tt.wt6v)
		}
	}
	for in, want := range map[uint32]uint32{0: 0xab4ed927, 1: 0x348681b6, 4096: 0x49c2008b, 4097: 0xa4972c87,
		0xffffffff: 0x7e64c182, 0x4141ba7b: 0x24f14616} {
		if g := fullHash(in); g != want {
			t.Errorf("fullHash(%#x) = %#x, want %#x", in, g, want)
		}
	}
	if g := keyHash(hashSDBM, true, "uid-42"); g != 0x24f14616 {
		t.Errorf("keyHash(sdbm, avalanche) = %#x", g)
	}
}

func TestHAProxyPoints(t *testing.T) {
	d := testDoc(AlgorithmHAProxy, 2)
	d.Members[0].ID, d.Members[0].Weight = 7, 3
	d.Members[1].ID = MaxID
	r, err := New(d)
	if err != nil {
		t.Fatal(err)
	}
	if len(r.keys) != 16*3+16 {
		t.Fatalf("%d points", len(r.keys))
	}
	want := map[uint32]uint32{}
	for j := uint32(0); j < 48; j++ {
		want[fullHash(7*4096+j)] = 7
	}
	for j := uint32(0); j < 16; j++ {
		want[fullHash(MaxID*4096+j)] = MaxID
	}
	for i, k := range r.keys {
		if i > 0 && r.keys[i-1] >= k {
			t.Fatal("points not strictly increasing")
		}
		if want[k] != r.ids[i] {
			t.Fatalf("point %#x owned by %d, want %d", k, r.ids[i], want[k])
		}
	}
}

// TestHAProxyNearest checks the nearest-point rule on hand-made points,
// including the tie (prev wins) and the wrap on both ends.
func TestHAProxyNearest(t *testing.T) {
	r := &Ring{keys: []uint32{100, 200, 1 << 31}, ids: []uint32{1, 2, 3}}
	for _, tt := range []struct{ h, want uint32 }{
		{100, 1}, {149, 1}, {150, 1} /* tie: prev */, {151, 2}, {200, 2},
		{1<<30 + 100, 2}, {1<<30 + 101, 3}, // gap 200..2^31: midpoint 2^30+100
		{1 << 31, 3}, {3 << 30, 3}, {3<<30 + 50, 3} /* tie across the wrap: prev */, {3<<30 + 51, 1},
		{0xffffffff, 1}, {0, 1}, {99, 1},
	} {
		if g := r.ids[r.nearest(tt.h)]; g != tt.want {
			t.Errorf("nearest(%d) = %d, want %d", tt.h, g, tt.want)
		}
	}
	// 1 owns 3<<30+51 ... 150, 2 owns 151 ... 2^30+100, 3 the rest.
	arcs := r.arcs()
	if arcs[1] != 1<<30+100 || arcs[2] != 1<<30-50 || arcs[3] != 1<<31-50 {
		t.Errorf("arcs = %v", arcs)
	}
	one := &Ring{keys: []uint32{5}, ids: []uint32{9}}
	if one.ids[one.nearest(0)] != 9 || one.arcs()[9] != 1<<32 {
		t.Error("single point ring")
	}
}

func ratios(counts map[uint32]int, n int) (maxr, minr float64) {
	mean := 0.0
	for _, c := range counts {
		mean += float64(c)
	}
	mean /= float64(n)
	maxr, minr = 0, math.Inf(1)
	for _, c := range counts {
		maxr = max(maxr, float64(c)/mean)
		minr = min(minr, float64(c)/mean)
	}
	if len(counts) < n {
		minr = 0
	}
	return maxr, minr
}

// TestHAProxyBalance reproduces the figures measured on the real HAProxy
// binary (HAPROXY_CHASH.md): 15 servers ids 1-15 weight 1, keys
// uid-0..uid-99999.
func TestHAProxyBalance(t *testing.T) {
	r, err := New(testDoc(AlgorithmHAProxy, 15))
	if err != nil {
		t.Fatal(err)
	}
	counts := map[uint32]int{}
	for i := 0; i < 100000; i++ {
		counts[r.LookupString("uid-"+strconv.Itoa(i))]++
	}
	maxr, minr := ratios(counts, 15)
	if got := fmt.Sprintf("%.3f %.3f", maxr, minr); got != "1.198 0.805" {
		t.Errorf("max/mean min/mean = %s, want 1.198 0.805", got)
	}
	sum, lo, hi := 0.0, 1.0, 0.0
	for _, s := range r.Shares() {
		sum += s
		lo, hi = min(lo, s), max(hi, s)
	}
	if math.Abs(sum-1) > 1e-12 || fmt.Sprintf("%.1f%% %.1f%%", 100*lo, 100*hi) != "5.4% 7.9%" {
		t.Errorf("shares sum %v, min %.2f%% max %.2f%%, want 5.4%% and 7.9%%", sum, 100*lo, 100*hi)
	}
}

// TestHAProxyLookupLive: LookupLive with some members down answers like a
// ring without their points, which is what HAProxy does for a down,
// disabled or maintenance server.
func TestHAProxyLookupLive(t *testing.T) {
	d := testDoc(AlgorithmHAProxy, 12)
	for i := range d.Members {
		d.Members[i].Weight = 1 + i%4
	}
	r, _ := New(d)
	for _, down := range [][]uint32{{3}, {1, 5, 9}, {1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11}} {
		dd := d.clone()
		isDown := map[uint32]bool{}
		for _, id := range down {
			isDown[id] = true
			dd.Members[id-1].State = StateDraining
		}
		without, _ := New(dd)
		calls := 0
		up := func(id uint32) bool { calls++; return !isDown[id] }
		for i := 0; i < 20000; i++ {
			k := []byte("uid-" + strconv.Itoa(i))
			got, ok := r.LookupLive(k, up)
			if want := without.Lookup(k); !ok || got != want {
				t.Fatalf("down %v, key %s: LookupLive = %d %v, ring without them = %d", down, k, got, ok, want)
			}
			if owner := r.Lookup(k); !isDown[owner] && got != owner {
				t.Fatalf("live owner %d not kept (%d)", owner, got)
			}
		}
		t.Logf("down %v: %.2f calls of up per lookup", down, float64(calls)/20000)
	}
	if _, ok := r.LookupLive([]byte("x"), func(uint32) bool { return false }); ok {
		t.Fatal("LookupLive with nobody up returned ok")
	}
}
