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
	"time"

	"go.etcd.io/etcd/api/v3/v3rpc/rpctypes"
	clientv3 "go.etcd.io/etcd/client/v3"
	"go.uber.org/zap"

	"github.com/pushcluster/push/pkg/owner"
	"github.com/pushcluster/push/pkg/ring"
)

// Etcd keeps the desired ring document under <prefix>/ring and the
// liveness of each edge under <prefix>/live/<id>, a key bound to the
// edge's lease (JSON owner.Live: state, incarnation, users).
//
// Load, CompareAndSwap and Watch work on the desired document (what
// operators change with pushctl; CAS on its version, guarded by the key's
// etcd revision). Liveness is read with ReadLive and applied by package
// owner through a Follower, the same way in every process.
type Etcd struct {
	cli    *clientv3.Client
	prefix string
	log    *slog.Logger
}

// OpenEtcd connects to an etcd URL: etcd://host:2379[,host2:2379][/prefix]
// (prefix default "/push").
func OpenEtcd(raw string, log *slog.Logger, opts ...Option) (*Etcd, error) {
	var o options
	for _, f := range opts {
		f(&o)
	}
	u, err := url.Parse(raw)
	if err != nil || u.Scheme != "etcd" || u.Host == "" {
		return nil, fmt.Errorf("store %q: want etcd://host:port[,host:port...][/prefix]", raw)
	}
	scheme := "http://"
	if o.etcd.tls() {
		scheme = "https://"
	}
	var eps []string
	for _, h := range strings.Split(u.Host, ",") {
		if h = strings.TrimSpace(h); h != "" {
			eps = append(eps, scheme+h)
		}
	}
	prefix := strings.TrimRight(u.Path, "/")
	if prefix == "" {
		prefix = "/push"
	}
	if log == nil {
		log = slog.Default()
	}
	cfg := clientv3.Config{
		Endpoints:   eps,
		DialTimeout: 5 * time.Second,
		// The etcd client logs through zap, as JSON lines of its own
		// (a retry warning per failed call while etcd is unreachable);
		// quiet: the error it returns is logged, or printed, through
		// slog by the caller, once and in the caller's words.
		Logger: zap.NewNop(),
	}
	if err := o.etcd.config(&cfg, log); err != nil {
		return nil, fmt.Errorf("store %q: %w", raw, err)
	}
	cli, err := clientv3.New(cfg)
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

// Watch delivers the desired document now and after every change of it.
// Liveness is read apart (ReadLive) and applied by package owner, so that a
// dead edge moves only its own users and an unreachable etcd changes
// nothing. Documents that do not validate are logged and skipped: followers
// keep the last good ring.
func (e *Etcd) Watch(ctx context.Context) (<-chan *ring.Document, error) {
	r, err := e.cli.Get(ctx, e.ringKey())
	if err != nil {
		return nil, fmt.Errorf("etcd get %s: %w", e.ringKey(), err)
	}
	out := make(chan *ring.Document, 1)
	var lastSent uint64
	send := func(val []byte) {
		d, err := ring.Parse(val)
		if err != nil {
			e.log.Warn("ring document in etcd refused", "err", err)
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
	if len(r.Kvs) > 0 {
		send(r.Kvs[0].Value)
	}
	wch := e.cli.Watch(ctx, e.ringKey(), clientv3.WithRev(r.Header.Revision+1))
	go func() {
		defer close(out)
		for resp := range wch {
			if err := resp.Err(); err != nil {
				e.log.Warn("etcd watch", "err", err)
				continue
			}
			for _, ev := range resp.Events {
				if ev.Type == clientv3.EventTypePut {
					send(ev.Kv.Value)
				}
			}
		}
	}()
	return out, nil
}

// Close closes the etcd client.
func (e *Etcd) Close() error { return e.cli.Close() }

var _ Leaser = (*Etcd)(nil)

// ReadLive implements Leaser: the members whose live key exists.
func (e *Etcd) ReadLive(ctx context.Context) (map[uint32]owner.Live, error) {
	r, err := e.cli.Get(ctx, e.livePrefix(), clientv3.WithPrefix())
	if err != nil {
		return nil, fmt.Errorf("etcd get %s: %w", e.livePrefix(), err)
	}
	out := make(map[uint32]owner.Live, len(r.Kvs))
	for _, kv := range r.Kvs {
		if id, ok := parseLiveID(string(kv.Key), e.livePrefix()); ok {
			var v owner.Live
			if json.Unmarshal(kv.Value, &v) != nil || v.State == "" {
				v.State = ring.StateActive
			}
			out[id] = v
		}
	}
	return out, nil
}

// Live lists the members whose live key exists, with their state.
func (e *Etcd) Live(ctx context.Context) (map[uint32]ring.State, error) {
	l, err := e.ReadLive(ctx)
	if err != nil {
		return nil, err
	}
	out := make(map[uint32]ring.State, len(l))
	for id, v := range l {
		out[id] = v.State
	}
	return out, nil
}

// etcdLease is an edge's registration: its live key exists while the etcd
// lease is kept alive. Renewals are single KeepAliveOnce calls timed from
// before they are sent, so Renewed never runs ahead of etcd's own count.
type etcdLease struct {
	leaseCore
	e         *Etcd
	id        uint32
	lease     clientv3.LeaseID
	published int64 // users as last put; guarded by mu
}

// Register implements Leaser: it grants a lease of ttl (whole seconds,
// rounded up), puts the live key under it, and renews it every TTL/3. Lost
// is closed when etcd answers that the lease is gone.
func (e *Etcd) Register(ctx context.Context, id uint32, ttl time.Duration, info owner.Live) (Lease, error) {
	secs := int64((ttl + time.Second - 1) / time.Second)
	if secs < 1 {
		secs = 1
	}
	ttl = time.Duration(secs) * time.Second
	start := time.Now()
	g, err := e.cli.Grant(ctx, secs)
	if err != nil {
		return nil, fmt.Errorf("etcd lease grant: %w", err)
	}
	l := &etcdLease{e: e, id: id, lease: g.ID}
	l.init(ttl, info)
	l.renewed = start
	if err := l.put(ctx); err != nil {
		e.cli.Revoke(context.Background(), g.ID)
		return nil, err
	}
	go l.renew()
	return l, nil
}

func (l *etcdLease) put(ctx context.Context) error {
	l.mu.Lock()
	v := l.info
	l.mu.Unlock()
	v.Users = l.users.Load()
	data, _ := json.Marshal(v)
	if _, err := l.e.cli.Put(ctx, l.e.liveKey(l.id), string(data), clientv3.WithLease(l.lease)); err != nil {
		return fmt.Errorf("etcd put %s: %w", l.e.liveKey(l.id), err)
	}
	l.mu.Lock()
	l.published = v.Users
	l.mu.Unlock()
	return nil
}

func (l *etcdLease) renew() {
	defer close(l.done)
	wait := renewEvery(l.ttl)
	for {
		select {
		case <-l.stop:
			return
		case <-time.After(wait):
		}
		start := time.Now()
		ctx, cancel := context.WithTimeout(context.Background(), renewEvery(l.ttl))
		_, err := l.e.cli.KeepAliveOnce(ctx, l.lease)
		cancel()
		if errors.Is(err, rpctypes.ErrLeaseNotFound) {
			l.e.log.Error("etcd lease lost: it expired before it could be renewed", "id", l.id)
			l.markLost()
			return
		}
		if err != nil {
			wait = retryEvery(l.ttl)
			continue
		}
		l.mu.Lock()
		l.renewed = start
		stale := l.published != l.users.Load()
		l.mu.Unlock()
		if stale {
			ctx, cancel := context.WithTimeout(context.Background(), renewEvery(l.ttl))
			l.put(ctx) // users are informational: a failed put waits for the next renewal
			cancel()
		}
		wait = renewEvery(l.ttl)
	}
}

// SetState marks the edge draining (or active) for everybody.
func (l *etcdLease) SetState(ctx context.Context, st ring.State) error {
	l.setState(st)
	return l.put(ctx)
}

// Close revokes the lease, removing the edge from everybody's live set now.
func (l *etcdLease) Close() error {
	if !l.shutdown() {
		return nil
	}
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	_, err := l.e.cli.Revoke(ctx, l.lease)
	return err
}
