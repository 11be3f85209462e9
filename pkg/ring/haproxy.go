package ring

import (
	"hash/crc32"
	"slices"
)

// hashFunc selects one of HAProxy's key hash functions.
type hashFunc uint8

const (
	hashSDBM hashFunc = iota
	hashDJB2
	hashCRC32
	hashWT6
)

var hashFuncs = map[string]hashFunc{HashSDBM: hashSDBM, HashDJB2: hashDJB2, HashCRC32: hashCRC32, HashWT6: hashWT6}

// key is a user key; both forms hash without copying.
type key interface{ ~string | ~[]byte }

// keyHash is HAProxy's gen_hash followed, if avalanche, by full_hash.
func keyHash[K key](f hashFunc, avalanche bool, k K) uint32 {
	var h uint32
	switch f {
	case hashSDBM:
		h = sdbm(k)
	case hashDJB2:
		h = djb2(k)
	case hashCRC32:
		h = crc32IEEE(k)
	case hashWT6:
		h = wt6(k)
	}
	if avalanche {
		h = fullHash(h)
	}
	return h
}

// sdbm is HAProxy's hash_sdbm.
func sdbm[K key](k K) uint32 {
	var h uint32
	for i := 0; i < len(k); i++ {
		h = uint32(k[i]) + h<<6 + h<<16 - h
	}
	return h
}

// djb2 is HAProxy's hash_djb2.
func djb2[K key](k K) uint32 {
	h := uint32(5381)
	for i := 0; i < len(k); i++ {
		h = h*33 + uint32(k[i])
	}
	return h
}

// crc32IEEE is HAProxy's hash_crc32, the IEEE CRC-32.
func crc32IEEE[K key](k K) uint32 {
	h := ^uint32(0)
	for i := 0; i < len(k); i++ {
		h = crc32.IEEETable[byte(h)^k[i]] ^ h>>8
	}
	return ^h
}

// wt6 is HAProxy's hash_wt6. A rotation by 0 reads (x<<0)|(x>>32), which
// is x both in C on x86 and in Go.
func wt6[K key](k K) uint32 {
	h0, h1 := uint32(0xa53c965a), uint32(0x5ca6953a)
	step0, step1 := uint32(6), uint32(18)
	for i := 0; i < len(k); i++ {
		t := uint32(k[i])
		h0 = ^(h0 ^ t)
		h1 = ^(h1 + t)
		t = h1<<step0 | h1>>(32-step0)
		h1 = h0<<step1 | h0>>(32-step1)
		h0 = t
		t = (h0>>16 ^ h1) & 0xffff
		step0 = t & 0x1f
		step1 = t >> 11
	}
	return h0 ^ h1
}

// fullHash is HAProxy's full_hash (Bob Jenkins' 32-bit integer hash), a
// bijection of uint32.
func fullHash(a uint32) uint32 {
	a = (a + 0x7ed55d16) + (a << 12)
	a = (a ^ 0xc761c23c) ^ (a >> 19)
	a = (a + 0x165667b1) + (a << 5)
	a = (a + 0xd3a2646c) ^ (a << 9)
	a = (a + 0xfd7046c5) + (a << 3)
	a = (a ^ 0xb55a4f09) ^ (a >> 16)
	return a * 3221225473
}

// buildHAProxy returns the points of HAProxy's consistent hash tree in
// increasing key order: point j < 16*weight of the server with id puid has
// key full_hash(puid*4096+j). Equal keys would keep insertion order
// (document order, then j), like HAProxy's tree, but as full_hash is a
// bijection and ids are below 2^20 there are none.
func buildHAProxy(members []Member) (keys, owners []uint32) {
	n := 0
	for _, m := range members {
		if m.Active() {
			n += 16 * m.Weight
		}
	}
	// Sorting key<<32|insertion index keeps equal keys in insertion order.
	points, ids := make([]uint64, 0, n), make([]uint32, 0, n)
	for _, m := range members {
		if !m.Active() {
			continue
		}
		for j := 0; j < 16*m.Weight; j++ {
			points = append(points, uint64(fullHash(m.ID*4096+uint32(j)))<<32|uint64(len(ids)))
			ids = append(ids, m.ID)
		}
	}
	slices.Sort(points)
	keys, owners = make([]uint32, n), make([]uint32, n)
	for i, p := range points {
		keys[i], owners[i] = uint32(p>>32), ids[uint32(p)]
	}
	return keys, owners
}

// around returns the index of the first point with key >= h (wrapping to
// the first point) and of the point before it (wrapping to the last).
func (r *Ring) around(h uint32) (next, prev int) {
	lo, hi := 0, len(r.keys)
	for lo < hi {
		m := int(uint(lo+hi) >> 1)
		if r.keys[m] < h {
			lo = m + 1
		} else {
			hi = m
		}
	}
	if lo == len(r.keys) {
		lo = 0
	}
	prev = lo - 1
	if prev < 0 {
		prev = len(r.keys) - 1
	}
	return lo, prev
}

// closer picks HAProxy's nearer point: prev when h-prev <= next-h.
func (r *Ring) closer(h uint32, next, prev int) int {
	if h-r.keys[prev] <= r.keys[next]-h {
		return prev
	}
	return next
}

// nearest is chash_get_server_hash: the index of the point that owns h.
func (r *Ring) nearest(h uint32) int {
	next, prev := r.around(h)
	return r.closer(h, next, prev)
}

// nearestLive is chash_get_server_hash on the tree without the points of
// members that are not up: the first live point at or after next, the
// first live point at or before prev, and the nearer of the two. When the
// nearest point is live it stays the nearest (taking points out only moves
// the other candidate away), so the common case costs one call of up.
func (r *Ring) nearestLive(h uint32, up func(uint32) bool) (uint32, bool) {
	next, prev := r.around(h)
	last := r.ids[r.closer(h, next, prev)] // last id found down
	if up(last) {
		return last, true
	}
	n := len(r.keys)
	live := func(i int) bool {
		id := r.ids[i]
		if id == last {
			return false
		}
		if up(id) {
			return true
		}
		last = id
		return false
	}
	found := false
	for k := 0; k < n; k++ {
		if live(next) {
			found = true
			break
		}
		if next++; next == n {
			next = 0
		}
	}
	if !found {
		return 0, false
	}
	for !live(prev) {
		if prev--; prev < 0 {
			prev = n - 1
		}
	}
	return r.ids[r.closer(h, next, prev)], true
}

// arcs returns how many of the 2^32 key hashes each member owns: of the
// gap g between consecutive points a < b, the hashes a+1 … a+g/2 go to a
// (h-a <= b-h) and the rest, b included, to b.
func (r *Ring) arcs() map[uint32]uint64 {
	n := len(r.keys)
	s := make(map[uint32]uint64)
	if n == 1 {
		s[r.ids[0]] = 1 << 32
		return s
	}
	for i := 0; i < n; i++ {
		j := (i + 1) % n
		g := uint64(r.keys[j] - r.keys[i]) // mod 2^32 across the wrap
		s[r.ids[i]] += g / 2
		s[r.ids[j]] += g - g/2
	}
	return s
}
