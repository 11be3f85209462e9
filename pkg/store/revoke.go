package store

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"slices"
	"sort"
	"sync"
	"syscall"
	"time"

	clientv3 "go.etcd.io/etcd/client/v3"

	"github.com/pushcluster/push/pkg/userid"
)

// Revocation refuses the tokens of User issued before Before (their iat;
// a token without iat counts as issued before it), until Expires. Expires
// is Before plus the longest lifetime a token may have: by then every token
// it covers has expired anyway, so the store forgets it.
type Revocation struct {
	User    string    `json:"user"`
	Before  time.Time `json:"before"`
	Expires time.Time `json:"expires"`
}

// ErrInvalidRevocation wraps every refusal of a malformed Revocation.
var ErrInvalidRevocation = errors.New("invalid revocation")

// Validate checks the user id and that the revocation ends after it starts.
func (r Revocation) Validate() error {
	switch {
	case !userid.Valid(r.User):
		return fmt.Errorf("%w: user %q (%s)", ErrInvalidRevocation, r.User, userid.Rule)
	case r.Before.IsZero():
		return fmt.Errorf("%w: user %q: no before time", ErrInvalidRevocation, r.User)
	case !r.Expires.After(r.Before):
		return fmt.Errorf("%w: user %q: expires %s is not after before %s", ErrInvalidRevocation, r.User,
			r.Expires.Format(time.RFC3339), r.Before.Format(time.RFC3339))
	}
	return nil
}

// merge combines two revocations of one user: the later Before covers
// everything the earlier one did, and the later Expires outlives both.
func (r Revocation) merge(o Revocation) Revocation {
	if o.Before.After(r.Before) {
		r.Before = o.Before
	}
	if o.Expires.After(r.Expires) {
		r.Expires = o.Expires
	}
	return r
}

// Revoker is a Store that keeps token revocations beside the ring document,
// where every edge reads them (edge.Join polls Revocations as often as it
// reads leases, every 250 ms):
//
//   - file: <ring file>.revoked, JSON {"revocations":[...]}, written like
//     the ring (flock(2) on <ring file>.revoked.lock, temporary file,
//     fsync, rename); expired entries are dropped at every write.
//   - etcd: one key <prefix>/revoked/<user> per user holding the JSON
//     Revocation, bound to an etcd lease that ends at Expires (whole
//     seconds, rounded up), so etcd deletes it then.
//
// A second revocation of a user merges with the first (the later Before and
// the later Expires win).
type Revoker interface {
	// Revoke stores r (merged with the user's stored revocation).
	Revoke(ctx context.Context, r Revocation) error
	// Revocations returns the revocations still in force at now (Expires
	// after now), sorted by user.
	Revocations(ctx context.Context, now time.Time) ([]Revocation, error)
}

var (
	_ Revoker = (*File)(nil)
	_ Revoker = (*Etcd)(nil)
)

// MaxRevocationsSize bounds the file store's revocations file (about
// 100,000 revocations); a larger file is refused rather than read.
const MaxRevocationsSize = 16 << 20

// inForce keeps the revocations that expire after now, sorted by user.
func inForce(list []Revocation, now time.Time) []Revocation {
	out := list[:0]
	for _, r := range list {
		if r.Expires.After(now) {
			out = append(out, r)
		}
	}
	sort.Slice(out, func(i, j int) bool { return out[i].User < out[j].User })
	return out
}

type revocationsFile struct {
	Revocations []Revocation `json:"revocations"`
}

// RevocationsPath is the file store's revocations file.
func (f *File) RevocationsPath() string { return f.path + ".revoked" }

// readRevocations reads the revocations file; a missing file holds none.
func (f *File) readRevocations() ([]Revocation, error) {
	fh, err := os.Open(f.RevocationsPath())
	if errors.Is(err, fs.ErrNotExist) {
		return nil, nil
	}
	if err != nil {
		return nil, fmt.Errorf("revocations %s: %w", f.RevocationsPath(), err)
	}
	defer fh.Close()
	data, err := io.ReadAll(io.LimitReader(fh, MaxRevocationsSize+1))
	if err != nil {
		return nil, fmt.Errorf("revocations %s: %w", f.RevocationsPath(), err)
	}
	if len(data) > MaxRevocationsSize {
		return nil, fmt.Errorf("revocations %s: more than %d bytes", f.RevocationsPath(), MaxRevocationsSize)
	}
	var doc revocationsFile
	if err := json.Unmarshal(data, &doc); err != nil {
		return nil, fmt.Errorf("revocations %s: %w", f.RevocationsPath(), err)
	}
	return doc.Revocations, nil
}

// Revoke implements Revoker. A revocations file that does not parse is
// not overwritten: the error names it, for the operator to repair.
func (f *File) Revoke(ctx context.Context, r Revocation) error {
	if f.isClosed() {
		return ErrClosed
	}
	if err := r.Validate(); err != nil {
		return err
	}
	unlock, err := lockFile(ctx, f.RevocationsPath()+".lock")
	if err != nil {
		return fmt.Errorf("revocations %s: %w", f.RevocationsPath(), err)
	}
	defer unlock()
	list, err := f.readRevocations()
	if err != nil {
		return err
	}
	merged := false
	for i := range list {
		if list[i].User == r.User {
			list[i], merged = list[i].merge(r), true
		}
	}
	if !merged {
		list = append(list, r)
	}
	data, err := json.MarshalIndent(revocationsFile{Revocations: inForce(list, time.Now())}, "", "  ")
	if err != nil {
		return fmt.Errorf("revocations %s: %w", f.RevocationsPath(), err)
	}
	if len(data) > MaxRevocationsSize {
		return fmt.Errorf("revocations %s: would exceed %d bytes", f.RevocationsPath(), MaxRevocationsSize)
	}
	if err := writeAtomic(f.RevocationsPath(), append(data, '\n')); err != nil {
		return fmt.Errorf("revocations %s: %w", f.RevocationsPath(), err)
	}
	return nil
}

// Revocations implements Revoker.
func (f *File) Revocations(ctx context.Context, now time.Time) ([]Revocation, error) {
	if err := ctx.Err(); err != nil {
		return nil, err
	}
	if f.isClosed() {
		return nil, ErrClosed
	}
	list, err := f.cachedRevocations()
	if err != nil {
		return nil, err
	}
	return inForce(list, now), nil
}

// revCache is the last parse of the revocations file and the file's
// identity then: edges read the revocations four times a second, and the
// file only changes when somebody revokes.
type revCache struct {
	mu    sync.Mutex
	ok    bool
	size  int64
	mtime time.Time
	ino   uint64
	list  []Revocation
}

// cachedRevocations is readRevocations, parsed again only when the file's
// size, modification time or inode (the writer replaces it by rename)
// changed.
func (f *File) cachedRevocations() ([]Revocation, error) {
	c := &f.revs
	c.mu.Lock()
	defer c.mu.Unlock()
	fi, err := os.Stat(f.RevocationsPath())
	if errors.Is(err, fs.ErrNotExist) {
		c.ok, c.list = false, nil
		return nil, nil
	}
	if err != nil {
		return nil, fmt.Errorf("revocations %s: %w", f.RevocationsPath(), err)
	}
	var ino uint64
	if st, ok := fi.Sys().(*syscall.Stat_t); ok {
		ino = st.Ino
	}
	if c.ok && fi.Size() == c.size && fi.ModTime().Equal(c.mtime) && ino == c.ino {
		return slices.Clone(c.list), nil // the caller filters its copy in place
	}
	list, err := f.readRevocations()
	if err != nil {
		c.ok = false
		return nil, err
	}
	c.ok, c.size, c.mtime, c.ino, c.list = true, fi.Size(), fi.ModTime(), ino, list
	return slices.Clone(list), nil
}

func (e *Etcd) revokedPrefix() string { return e.prefix + "/revoked/" }

// Revoke implements Revoker: a transaction on the user's key (merged with
// what it holds), under a new lease that ends at the merged Expires.
func (e *Etcd) Revoke(ctx context.Context, r Revocation) error {
	if err := r.Validate(); err != nil {
		return err
	}
	key := e.revokedPrefix() + r.User
	for attempt := 0; attempt < 8; attempt++ {
		got, err := e.cli.Get(ctx, key)
		if err != nil {
			return fmt.Errorf("etcd get %s: %w", key, err)
		}
		next := r
		cmp := clientv3.Compare(clientv3.CreateRevision(key), "=", 0)
		var oldLease clientv3.LeaseID
		if len(got.Kvs) > 0 {
			var cur Revocation
			if json.Unmarshal(got.Kvs[0].Value, &cur) == nil && cur.User == r.User {
				next = next.merge(cur)
			}
			cmp = clientv3.Compare(clientv3.ModRevision(key), "=", got.Kvs[0].ModRevision)
			oldLease = clientv3.LeaseID(got.Kvs[0].Lease)
		}
		ttl := int64((time.Until(next.Expires) + time.Second - 1) / time.Second)
		if ttl < 1 {
			return nil // already expired: nothing left to refuse
		}
		data, err := json.Marshal(next)
		if err != nil {
			return fmt.Errorf("etcd %s: %w", key, err)
		}
		g, err := e.cli.Grant(ctx, ttl)
		if err != nil {
			return fmt.Errorf("etcd lease grant for %s: %w", key, err)
		}
		t, err := e.cli.Txn(ctx).If(cmp).Then(clientv3.OpPut(key, string(data), clientv3.WithLease(g.ID))).Commit()
		if err != nil {
			e.cli.Revoke(context.Background(), g.ID)
			return fmt.Errorf("etcd txn %s: %w", key, err)
		}
		if !t.Succeeded {
			e.cli.Revoke(context.Background(), g.ID)
			continue // another revocation of the user landed first: merge with it
		}
		if oldLease != 0 {
			// The key moved to the new lease; the old one holds nothing now.
			e.cli.Revoke(ctx, oldLease)
		}
		return nil
	}
	return fmt.Errorf("etcd %s: %w: concurrent revocations of user %q kept changing it", key, ErrVersionConflict, r.User)
}

// Revocations implements Revoker.
func (e *Etcd) Revocations(ctx context.Context, now time.Time) ([]Revocation, error) {
	got, err := e.cli.Get(ctx, e.revokedPrefix(), clientv3.WithPrefix())
	if err != nil {
		return nil, fmt.Errorf("etcd get %s: %w", e.revokedPrefix(), err)
	}
	list := make([]Revocation, 0, len(got.Kvs))
	for _, kv := range got.Kvs {
		var r Revocation
		if err := json.Unmarshal(kv.Value, &r); err != nil || r.Validate() != nil {
			e.log.Debug("revocation in etcd skipped: not a valid revocation", "key", string(kv.Key))
			continue
		}
		list = append(list, r)
	}
	return inForce(list, now), nil
}
