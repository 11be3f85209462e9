package store

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"net/url"
	"strconv"
	"strings"
	"sync"
	"time"

	clientv3 "go.etcd.io/etcd/client/v3"

	"github.com/pushcluster/push/pkg/ring"
)

// Etcd keeps the desired ring document under <prefix>/ring and the
// liveness of each edge under <prefix>/live/<id>, a key bound to the
// edge's lease.
//
// Load and CompareAndSwap work on the desired document (what operators
// change with pushctl; CAS on its version, guarded by the key's etcd
// revision). Watch delivers the effective document: the desired members
// that are live, with a member whose live key says draining marked
// draining. So a dead edge leaves the ring for every router, edge and SDK
// at once when its lease expires, and comes back when it registers again.
// The effective document's version is the etcd revision of the newest
// change that shaped it, so it increases with liveness changes too.
type Etcd struct {
	cli    *clientv3.Client
	prefix string
	log    *slog.Logger
}

// liveValue is what an edge stores under its live key.
type liveValue struct {
	State ring.State `json:"state"`
	Since time.Time  `json:"since"`
}

// OpenEtcd connects to an etcd URL: etcd://host:2379[,host2:2379][/prefix]
// (prefix default "/push").
func OpenEtcd(raw string, log *slog.Logger) (*Etcd, error) {
	u, err := url.Parse(raw)
	if err != nil || u.Scheme != "etcd" || u.Host == "" {
		return nil, fmt.Errorf("store %q: want etcd://host:port[,host:port...][/prefix]", raw)
	}
	var eps []string
	for _, h := range strings.Split(u.Host, ",") {
		if h = strings.TrimSpace(h); h != "" {
			eps = append(eps, "http://"+h)
		}
	}
	prefix := strings.TrimRight(u.Path, "/")
	if prefix == "" {
		prefix = "/push"
	}
	if log == nil {
		log = slog.Default()
	}
	cli, err := clientv3.New(clientv3.Config{
		Endpoints:   eps,
		DialTimeout: 5 * time.Second,
		// The etcd client logs through zap; ours go through slog.
		Logger: nil,
	})
	if err != nil {
		return nil, fmt.Errorf("store %q: %w", raw, err)
	}
	return &Etcd{cli: cli, prefix: prefix, log: log}, nil
}

func (e *Etcd) ringKey() string          { return e.prefix + "/ring" }
func (e *Etcd) livePrefix() string       { return e.prefix + "/live/" }
func (e *Etcd) liveKey(id uint32) string { return e.livePrefix() + strconv.FormatUint(uint64(id), 10) }
func (e *Etcd) String() string           { return "etcd " + e.prefix }
func parseLiveID(key, prefix string) (uint32, bool) {
	n, err := strconv.ParseUint(strings.TrimPrefix(key, prefix), 10, 32)
	return uint32(n), err == nil
}

// Load returns the desired document.
func (e *Etcd) Load(ctx context.Context) (*ring.Document, error) {
	r, err := e.cli.Get(ctx, e.ringKey())
	if err != nil {
		return nil, fmt.Errorf("etcd get %s: %w", e.ringKey(), err)
	}
	if len(r.Kvs) == 0 {
		return nil, ErrNotFound
	}
	d, err := ring.Parse(r.Kvs[0].Value)
	if err != nil {
		return nil, fmt.Errorf("etcd %s: stored document: %w", e.ringKey(), err)
	}
	return d, nil
}

// CompareAndSwap writes next if the stored desired document has version
// prev (0: none stored), in one etcd transaction on the key's revision.
func (e *Etcd) CompareAndSwap(ctx context.Context, prev uint64, next *ring.Document, force bool) error {
	if err := next.Validate(); err != nil {
		return err
	}
	if next.Version <= prev {
		return fmt.Errorf("%w: next version %d must exceed %d", ring.ErrInvalid, next.Version, prev)
	}
	r, err := e.cli.Get(ctx, e.ringKey())
	if err != nil {
		return fmt.Errorf("etcd get %s: %w", e.ringKey(), err)
	}
	var cmp clientv3.Cmp
	var cur *ring.Document
	switch {
	case len(r.Kvs) == 0:
		if prev != 0 {
			return fmt.Errorf("%w: nothing stored, expected version %d", ErrVersionConflict, prev)
		}
		cmp = clientv3.Compare(clientv3.CreateRevision(e.ringKey()), "=", 0)
	default:
		cur, err = ring.Parse(r.Kvs[0].Value)
		if err != nil && !force {
			return fmt.Errorf("stored document is invalid (%v); pass force to replace it", err)
		}
		if cur != nil && cur.Version != prev {
			return fmt.Errorf("%w: stored version is %d, expected %d", ErrVersionConflict, cur.Version, prev)
		}
		cmp = clientv3.Compare(clientv3.ModRevision(e.ringKey()), "=", r.Kvs[0].ModRevision)
	}
	if cur != nil {
		if err := ring.CheckTransition(cur, next, force); err != nil {
			return err
		}
	}
	data, err := next.Marshal()
	if err != nil {
		return err
	}
	t, err := e.cli.Txn(ctx).If(cmp).Then(clientv3.OpPut(e.ringKey(), string(data))).Commit()
	if err != nil {
		return fmt.Errorf("etcd txn %s: %w", e.ringKey(), err)
	}
	if !t.Succeeded {
		return fmt.Errorf("%w: the document changed under this write", ErrVersionConflict)
	}
	return nil
}

// state is what Watch folds events into.
type etcdState struct {
	desired *ring.Document
	live    map[uint32]ring.State
	rev     int64
}

// effective applies liveness to the desired document.
func (s *etcdState) effective() *ring.Document {
	if s.desired == nil {
		return nil
	}
	d := clone(s.desired)
	d.Version = uint64(s.rev)
	d.Members = d.Members[:0]
	for _, m := range s.desired.Members {
		st, ok := s.live[m.ID]
		if !ok {
			continue
		}
		if st == ring.StateDraining {
			m.State = ring.StateDraining
		}
		d.Members = append(d.Members, m)
	}
	return d
}

// Watch delivers the effective document now and after every change of the
// desired document or of an edge's liveness. Documents that would not
// validate (no live active member) are logged and skipped: followers keep
// the last good ring.
func (e *Etcd) Watch(ctx context.Context) (<-chan *ring.Document, error) {
	r, err := e.cli.Get(ctx, e.prefix+"/", clientv3.WithPrefix())
	if err != nil {
		return nil, fmt.Errorf("etcd get %s/: %w", e.prefix, err)
	}
	st := &etcdState{live: map[uint32]ring.State{}, rev: r.Header.Revision}
	for _, kv := range r.Kvs {
		e.apply(st, string(kv.Key), kv.Value, false)
	}
	out := make(chan *ring.Document, 1)
	var lastSent uint64
	send := func() {
		d := st.effective()
		if d == nil {
			return
		}
		if err := d.Validate(); err != nil {
			e.log.Warn("effective ring skipped", "revision", st.rev, "err", err)
			return
		}
		if d.Version <= lastSent {
			return
		}
		lastSent = d.Version
		select { // keep only the newest for a slow reader
		case <-out:
		default:
		}
		out <- d
	}
	send()
	wch := e.cli.Watch(clientv3.WithRequireLeader(ctx), e.prefix+"/", clientv3.WithPrefix(), clientv3.WithRev(r.Header.Revision+1))
	go func() {
		defer close(out)
		for resp := range wch {
			if err := resp.Err(); err != nil {
				e.log.Warn("etcd watch", "err", err)
				continue
			}
			for _, ev := range resp.Events {
				e.apply(st, string(ev.Kv.Key), ev.Kv.Value, ev.Type == clientv3.EventTypeDelete)
				st.rev = max(st.rev, ev.Kv.ModRevision)
			}
			send()
		}
	}()
	return out, nil
}

func (e *Etcd) apply(st *etcdState, key string, val []byte, deleted bool) {
	switch {
	case key == e.ringKey():
		if deleted {
			st.desired = nil
			return
		}
		d, err := ring.Parse(val)
		if err != nil {
			e.log.Warn("ring document in etcd refused", "err", err)
			return
		}
		st.desired = d
	case strings.HasPrefix(key, e.livePrefix()):
		id, ok := parseLiveID(key, e.livePrefix())
		if !ok {
			return
		}
		if deleted {
			delete(st.live, id)
			return
		}
		var v liveValue
		if json.Unmarshal(val, &v) != nil || v.State == "" {
			v.State = ring.StateActive
		}
		st.live[id] = v.State
	}
}

// Close closes the etcd client.
func (e *Etcd) Close() error { return e.cli.Close() }

// Live lists the ids of the edges whose live key exists, with their state.
func (e *Etcd) Live(ctx context.Context) (map[uint32]ring.State, error) {
	r, err := e.cli.Get(ctx, e.livePrefix(), clientv3.WithPrefix())
	if err != nil {
		return nil, err
	}
	out := map[uint32]ring.State{}
	for _, kv := range r.Kvs {
		if id, ok := parseLiveID(string(kv.Key), e.livePrefix()); ok {
			var v liveValue
			if json.Unmarshal(kv.Value, &v) != nil || v.State == "" {
				v.State = ring.StateActive
			}
			out[id] = v.State
		}
	}
	return out, nil
}

// Lease is an edge's registration: its live key exists while the lease is
// kept alive.
type Lease struct {
	e     *Etcd
	id    uint32
	lease clientv3.LeaseID
	stop  context.CancelFunc
	lost  chan struct{}
	once  sync.Once
}

// ErrLeaseLost is returned by a Lease whose keep-alive ended.
var ErrLeaseLost = errors.New("etcd lease lost")

// Register creates the edge's live key under a lease of ttl and keeps it
// alive (draining the keep-alive channel) until Close. Lost is closed if
// the lease cannot be kept (etcd unreachable past ttl): the edge has then
// left the ring for everybody.
func (e *Etcd) Register(ctx context.Context, id uint32, ttl time.Duration) (*Lease, error) {
	secs := int64((ttl + time.Second - 1) / time.Second)
	if secs < 1 {
		secs = 1
	}
	g, err := e.cli.Grant(ctx, secs)
	if err != nil {
		return nil, fmt.Errorf("etcd lease grant: %w", err)
	}
	l := &Lease{e: e, id: id, lease: g.ID, lost: make(chan struct{})}
	if err := l.put(ctx, ring.StateActive); err != nil {
		e.cli.Revoke(context.Background(), g.ID)
		return nil, err
	}
	kctx, stop := context.WithCancel(context.Background())
	l.stop = stop
	ka, err := e.cli.KeepAlive(kctx, g.ID)
	if err != nil {
		stop()
		return nil, fmt.Errorf("etcd keep-alive: %w", err)
	}
	go func() {
		for range ka { // drain: an undrained channel makes the client warn and lag
		}
		if kctx.Err() == nil {
			e.log.Error("etcd lease lost: this edge has left the ring", "id", id)
		}
		l.once.Do(func() { close(l.lost) })
	}()
	return l, nil
}

func (l *Lease) put(ctx context.Context, st ring.State) error {
	v, _ := json.Marshal(liveValue{State: st, Since: time.Now().UTC()})
	if _, err := l.e.cli.Put(ctx, l.e.liveKey(l.id), string(v), clientv3.WithLease(l.lease)); err != nil {
		return fmt.Errorf("etcd put %s: %w", l.e.liveKey(l.id), err)
	}
	return nil
}

// SetDraining marks the edge draining for everybody: it keeps its users
// until they have moved but gets no new ones.
func (l *Lease) SetDraining(ctx context.Context) error { return l.put(ctx, ring.StateDraining) }

// Lost is closed when the lease could not be kept alive.
func (l *Lease) Lost() <-chan struct{} { return l.lost }

// Close revokes the lease, removing the edge from the effective ring now.
func (l *Lease) Close() error {
	l.stop()
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	_, err := l.e.cli.Revoke(ctx, l.lease)
	return err
}
