// Package registry maps users to their live connections and mailbox: the
// one place an edge looks up who is connected.
//
// It is sharded so that publishers to different users rarely meet on a lock,
// and generic over the connection type so that it stays a plain, testable
// data structure. An entry exists only while it is worth keeping: a user with
// a connection, or with messages waiting in the mailbox.
package registry

import (
	"sync"

	"github.com/cespare/xxhash/v2"

	"github.com/pushcluster/push/pkg/mailbox"
)

// User is one user's state. Its fields are guarded by the shard lock held
// while the function given to Do runs; never keep a *User beyond that.
type User[C comparable] struct {
	// Conns are the user's connections, oldest first.
	Conns []C
	// Box holds recent messages; nil until the first message. The owner sets
	// it back to nil when the box is idle (see mailbox.Box.Idle).
	Box *mailbox.Box
	// Handed says where this user's stream was handed over (nil: it was
	// not): publishes that still arrive here are sent there. The owner
	// clears it after a while. A pointer keeps User in the 48-byte size
	// class: every connected user has one.
	Handed *Handoff
}

// Handoff is a user's stream handed to another edge.
type Handoff struct {
	// To is the ring id of the edge the stream went to, At when (Unix ns).
	To uint32
	At int64
	// Gave is the stream as it was handed over, so that a hand-over whose
	// answer was lost can be asked for again (nil: nothing was here).
	Gave *mailbox.Stream
}

// GoneTo returns the ring id of the edge this user's stream was handed
// to, or 0.
func (u *User[C]) GoneTo() uint32 {
	if u.Handed == nil {
		return 0
	}
	return u.Handed.To
}

// Remove deletes c from Conns and reports whether it was there.
func (u *User[C]) Remove(c C) bool {
	for i, x := range u.Conns {
		if x == c {
			copy(u.Conns[i:], u.Conns[i+1:])
			var zero C
			u.Conns[len(u.Conns)-1] = zero
			u.Conns = u.Conns[:len(u.Conns)-1]
			if len(u.Conns) == 0 {
				u.Conns = nil
			}
			return true
		}
	}
	return false
}

func (u *User[C]) empty() bool {
	return len(u.Conns) == 0 && u.Box == nil && u.Handed == nil
}

// Registry is a sharded map from user ID to *User. Safe for concurrent use.
type Registry[C comparable] struct {
	shards []shard[C]
	mask   uint64
}

type shard[C comparable] struct {
	mu    sync.Mutex
	users map[string]*User[C]
	_     [40]byte // keep neighbouring shard locks off one cache line
}

// New returns a registry with the given number of shards, rounded up to a
// power of two.
func New[C comparable](shards int) *Registry[C] {
	n := 1
	for n < shards {
		n <<= 1
	}
	r := &Registry[C]{shards: make([]shard[C], n), mask: uint64(n - 1)}
	for i := range r.shards {
		r.shards[i].users = make(map[string]*User[C])
	}
	return r
}

func (r *Registry[C]) shard(uid string) *shard[C] {
	return &r.shards[xxhash.Sum64String(uid)&r.mask]
}

// Do runs fn on the user's entry under the shard lock. With create, a missing
// entry is created first (keyed by uid, which must not be modified
// afterwards); without it fn gets nil for an unknown user. An entry left with
// no connections and no mailbox is removed after fn returns.
// fn may lock connections (lock order: shard, then connection) but must not
// call back into the registry.
func (r *Registry[C]) Do(uid string, create bool, fn func(u *User[C])) {
	s := r.shard(uid)
	s.mu.Lock()
	u := s.users[uid]
	if u == nil && create {
		u = &User[C]{}
		s.users[uid] = u
	}
	fn(u)
	if u != nil && u.empty() {
		delete(s.users, uid)
	}
	s.mu.Unlock()
}

// Sweep visits every entry, one shard at a time under its lock, and removes
// those that fn leaves empty. Used to expire mailboxes.
func (r *Registry[C]) Sweep(fn func(uid string, u *User[C])) {
	for i := range r.shards {
		s := &r.shards[i]
		s.mu.Lock()
		for uid, u := range s.users {
			fn(uid, u)
			if u.empty() {
				delete(s.users, uid)
			}
		}
		s.mu.Unlock()
	}
}

// Len returns the number of users with an entry.
func (r *Registry[C]) Len() int {
	n := 0
	for i := range r.shards {
		s := &r.shards[i]
		s.mu.Lock()
		n += len(s.users)
		s.mu.Unlock()
	}
	return n
}

// DoGroups runs fn once per shard that uids fall in, under that shard's
// lock, with the indices into uids of that shard (in increasing order)
// and their entries (created first with create; nil for unknown users
// without it). Each shard's lock is taken once however many users of the
// batch it holds, shards in order of their first user in uids. Entries
// left empty are removed after fn returns. The same uid may appear more
// than once; its entries are the same *User. fn follows Do's rules.
func (r *Registry[C]) DoGroups(uids []string, create bool, fn func(idx []int, users []*User[C])) {
	if len(uids) == 0 {
		return
	}
	// A counting sort by shard, shards ranked by first appearance: each
	// group keeps its users in request order.
	rankOf := make(map[uint64]int, 8)
	rank := make([]int, len(uids))
	var shardIDs []uint64
	var sizes []int
	for i, uid := range uids {
		sh := xxhash.Sum64String(uid) & r.mask
		k, ok := rankOf[sh]
		if !ok {
			k = len(shardIDs)
			rankOf[sh] = k
			shardIDs = append(shardIDs, sh)
			sizes = append(sizes, 0)
		}
		rank[i] = k
		sizes[k]++
	}
	start := make([]int, len(sizes)+1)
	for k, n := range sizes {
		start[k+1] = start[k] + n
	}
	sorted := make([]int, len(uids))
	next := append([]int(nil), start[:len(sizes)]...)
	for i, k := range rank {
		sorted[next[k]] = i
		next[k]++
	}
	users := make([]*User[C], len(uids))
	for k, sh := range shardIDs {
		idx, us := sorted[start[k]:start[k+1]], users[start[k]:start[k+1]]
		s := &r.shards[sh]
		s.mu.Lock()
		for j, i := range idx {
			u := s.users[uids[i]]
			if u == nil && create {
				u = &User[C]{}
				s.users[uids[i]] = u
			}
			us[j] = u
		}
		fn(idx, us)
		for j, i := range idx {
			if u := us[j]; u != nil && u.empty() && s.users[uids[i]] == u {
				delete(s.users, uids[i])
			}
		}
		s.mu.Unlock()
	}
}
