package ring

import (
	"cmp"
	"encoding/binary"
	"math"
	"slices"
	"strconv"

	"github.com/cespare/xxhash/v2"
)

// virtualNames returns the buraksezer member names of the active members
// in document order, and the member id of each: a member of weight w is
// the w virtual members name, name#1, …, name#(w-1). Names have no '#',
// so virtual names never collide.
func virtualNames(members []Member) (names []string, ids []uint32) {
	for _, m := range members {
		if !m.Active() {
			continue
		}
		names, ids = append(names, m.Name), append(ids, m.ID)
		for k := 1; k < m.Weight; k++ {
			names, ids = append(names, m.Name+"#"+strconv.Itoa(k)), append(ids, m.ID)
		}
	}
	return names, ids
}

// buildBounded returns the partition -> member id table that
// buraksezer/consistent v1.0.0 computes with consistent.New(virtual
// members in document order, Config{xxhash, partitions, replication,
// load}) and GetPartitionOwner. It does the same computation with one sort
// instead of one per member (buraksezer's New re-sorts the whole ring
// after adding each member: 0.8 s instead of 25 ms at 100 members), and
// TestBoundedMatchesBuraksezer checks that the tables are identical.
//
// buraksezer: the ring point i of member "name" is xxhash64("i:name"); a
// later member overwrites an earlier one on a hash collision (a map keyed
// by hash) while both points stay in the sorted slice. Partition p starts
// at the first point >= xxhash64(8-byte little-endian p), wrapping, and
// takes the first member along the ring whose load is below
// ceil(partitions/members*load).
func buildBounded(members []Member, partitions, replication int, load float64) []uint32 {
	names, ids := virtualNames(members)
	type point struct {
		hash   uint64
		member int32 // index in names
	}
	points := make([]point, 0, len(names)*replication)
	buf := make([]byte, 0, 64)
	for v, name := range names {
		for i := 0; i < replication; i++ {
			buf = strconv.AppendInt(buf[:0], int64(i), 10)
			buf = append(buf, ':')
			buf = append(buf, name...)
			points = append(points, point{xxhash.Sum64(buf), int32(v)})
		}
	}
	slices.SortFunc(points, func(a, b point) int {
		if c := cmp.Compare(a.hash, b.hash); c != 0 {
			return c
		}
		return cmp.Compare(a.member, b.member)
	})
	// Equal hashes all belong to the last member added (buraksezer's map).
	for i := len(points) - 2; i >= 0; i-- {
		if points[i].hash == points[i+1].hash {
			points[i].member = points[i+1].member
		}
	}

	// Same float expression as buraksezer's averageLoad.
	capacity := int(math.Ceil(float64(partitions) / float64(len(names)) * load))
	loads := make([]int, len(names))
	table := make([]uint32, partitions)
	var pid [8]byte
	for p := range table {
		binary.LittleEndian.PutUint64(pid[:], uint64(p))
		h := xxhash.Sum64(pid[:])
		i, _ := slices.BinarySearchFunc(points, h, func(pt point, h uint64) int { return cmp.Compare(pt.hash, h) })
		// Validate guarantees load > 1, so capacity*len(names) >=
		// partitions and some member always has room: the loop ends
		// within one turn of the ring (buraksezer panics otherwise).
		for {
			if i == len(points) {
				i = 0
			}
			if v := points[i].member; loads[v] < capacity {
				loads[v]++
				table[p] = ids[v]
				break
			}
			i++
		}
	}
	return table
}
