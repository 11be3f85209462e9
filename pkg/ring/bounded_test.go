package ring

import (
	"fmt"
	"strconv"
	"testing"

	"github.com/buraksezer/consistent"
	"github.com/cespare/xxhash/v2"
)

type bzMember string

func (m bzMember) String() string { return string(m) }

type bzHasher struct{}

func (bzHasher) Sum64(b []byte) uint64 { return xxhash.Sum64(b) }

// buraksezer builds the reference: buraksezer/consistent itself, with the
// virtual members of d in document order.
func buraksezer(d *Document) (*consistent.Consistent, map[string]uint32) {
	e := d.effective()
	names, ids := virtualNames(d.Members)
	members := make([]consistent.Member, len(names))
	owner := map[string]uint32{}
	for i, n := range names {
		members[i] = bzMember(n)
		owner[n] = ids[i]
	}
	c := consistent.New(members, consistent.Config{
		Hasher: bzHasher{}, PartitionCount: e.partitions, ReplicationFactor: e.replication, Load: e.load,
	})
	return c, owner
}

// TestBoundedMatchesBuraksezer: the partition table is exactly
// buraksezer's GetPartitionOwner, and Lookup is exactly LocateKey.
func TestBoundedMatchesBuraksezer(t *testing.T) {
	weighted := testDoc(AlgorithmBounded, 15)
	weighted.Members[2].Weight = 2
	weighted.Members[5].Weight = 3
	weighted.Members[9].State = StateDraining
	small := testDoc(AlgorithmBounded, 7)
	small.Params = Params{Partitions: 271, Replication: 20, Load: 1.25}
	crowded := testDoc(AlgorithmBounded, 20) // more members than partitions
	crowded.Params = Params{Partitions: 7, Replication: 3, Load: 1.0001}
	single := testDoc(AlgorithmBounded, 1)
	for name, d := range map[string]*Document{"weighted": weighted, "small": small, "crowded": crowded, "single": single} {
		t.Run(name, func(t *testing.T) {
			r, err := New(d)
			if err != nil {
				t.Fatal(err)
			}
			c, owner := buraksezer(d)
			for p, id := range r.table {
				if want := owner[c.GetPartitionOwner(p).String()]; id != want {
					t.Fatalf("partition %d: owner %d, buraksezer %d", p, id, want)
				}
			}
			keys := 100000
			if name != "weighted" {
				keys = 2000
			}
			for i := 0; i < keys; i++ {
				k := "uid-" + strconv.Itoa(i)
				want := owner[c.LocateKey([]byte(k)).String()]
				if got := r.LookupString(k); got != want {
					t.Fatalf("%s: LookupString %d, LocateKey %d", k, got, want)
				}
				if got := r.Lookup([]byte(k)); got != want {
					t.Fatalf("%s: Lookup %d, LocateKey %d", k, got, want)
				}
			}
		})
	}
}

func countOwners(r *Ring, n int) []uint32 {
	owners := make([]uint32, n)
	for i := range owners {
		owners[i] = r.LookupString("uid-" + strconv.Itoa(i))
	}
	return owners
}

func moved(a, b []uint32) int {
	n := 0
	for i := range a {
		if a[i] != b[i] {
			n++
		}
	}
	return n
}

func TestBoundedBalanceAndMoves(t *testing.T) {
	const keys = 200000
	d15 := testDoc(AlgorithmBounded, 15)
	r15, _ := New(d15)
	o15 := countOwners(r15, keys)
	counts := map[uint32]int{}
	for _, id := range o15 {
		counts[id]++
	}
	maxr, minr := ratios(counts, 15)
	t.Logf("15 members, %d keys: max/mean %.3f min/mean %.3f", keys, maxr, minr)
	if maxr > 1.05 || minr < 0.93 {
		t.Errorf("balance max/mean %.3f min/mean %.3f, want <= 1.05 and >= 0.93", maxr, minr)
	}
	// Partition ownership is bounded by the load factor.
	for id, s := range r15.Shares() {
		if s*15 > 1.02+1e-3 {
			t.Errorf("member %d share %.4f above the bound", id, s)
		}
	}

	d16 := testDoc(AlgorithmBounded, 16)
	d16.Version = 2
	r16, _ := New(d16)
	o16 := countOwners(r16, keys)
	ratio := float64(moved(o15, o16)) / (keys / 16.0)
	t.Logf("adding a 16th member moves %.3f x the ideal share", ratio)
	if ratio > 1.05 {
		t.Errorf("adding a member moved %.3f x the ideal", ratio)
	}
	// Weights: a weight-2 member gets twice the share of the others.
	dw := testDoc(AlgorithmBounded, 15)
	dw.Members[4].Weight = 2
	rw, _ := New(dw)
	s := rw.Shares()
	others := 0.0
	for id, v := range s {
		if id != 5 {
			others += v
		}
	}
	w := s[5] / (others / 14)
	t.Logf("weight 2 member: %.3f x the mean share of the weight-1 members", w)
	if w < 1.9 || w > 2.1 {
		t.Errorf("weight-2 share ratio %.3f, want ~2", w)
	}
}

// TestBoundedLookupLive checks the walk over the following partitions.
func TestBoundedLookupLive(t *testing.T) {
	d := testDoc(AlgorithmBounded, 6)
	d.Params = Params{Partitions: 1009, Replication: 50}
	r, _ := New(d)
	down := map[uint32]bool{2: true, 5: true}
	up := func(id uint32) bool { return !down[id] }
	gained := map[uint32]int{}
	for i := 0; i < 20000; i++ {
		k := []byte("uid-" + strconv.Itoa(i))
		got, ok := r.LookupLive(k, up)
		p := xxhash.Sum64(k) % 1009
		want := r.table[p]
		for down[want] {
			p = (p + 1) % 1009
			want = r.table[p]
		}
		if !ok || got != want {
			t.Fatalf("%s: LookupLive %d, walk %d", k, got, want)
		}
		if owner := r.Lookup(k); down[owner] {
			gained[got]++
		}
	}
	if len(gained) != 4 {
		t.Fatalf("users of dead members went to %v, want all 4 live members", gained)
	}
	t.Logf("users of the 2 dead members spread as %v", gained)
	if _, ok := r.LookupLive([]byte("x"), func(uint32) bool { return false }); ok {
		t.Fatal("LookupLive with nobody up returned ok")
	}
}

func TestDrainingNotPlaced(t *testing.T) {
	d := testDoc(AlgorithmBounded, 5)
	d.Members[1].State = StateDraining
	r, _ := New(d)
	if _, ok := r.Shares()[2]; ok {
		t.Fatal("draining member has a share")
	}
	for i := 0; i < 20000; i++ {
		if r.LookupString(fmt.Sprint(i)) == 2 {
			t.Fatal("Lookup returned a draining member")
		}
	}
}
