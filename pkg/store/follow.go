package store

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"sync"
	"time"

	"github.com/pushcluster/push/pkg/owner"
	"github.com/pushcluster/push/pkg/ring"
)

// FollowOptions tunes a Follower; the zero value serves.
type FollowOptions struct {
	// Poll is how often liveness is read (default 250ms).
	Poll time.Duration
	// ReadTimeout bounds one reading (default 1s); a reading that fails or
	// times out marks the store unreachable and changes nothing.
	ReadTimeout time.Duration
	// Grace is owner.Tracker's grace (default 2 × DefaultLeaseTTL).
	Grace time.Duration
	// Log receives changes and problems (slog.Default() when nil).
	Log *slog.Logger
}

// Follower keeps one process's ownership view (owner.View) current: the
// newest desired ring document from the store's Watch, and the live
// members from the store's leases through an owner.Tracker. Router, edge
// and SDK each run one, so they all apply the same rule to the same
// inputs. Safe for concurrent use.
type Follower struct {
	st   Store
	ls   Leaser // nil: no liveness
	opt  FollowOptions
	stop context.CancelFunc
	done sync.WaitGroup

	mu        sync.Mutex // guards the fields below
	view      *owner.View
	rg        *ring.Ring
	tracker   owner.Tracker
	gen       uint64
	changed   chan struct{}
	reachable bool
	lastRead  time.Time
}

// Follow starts following st and returns once the first document (and, for
// a store with leases, the first liveness reading) is in, or with an error
// when ctx ends first; ctx bounds only that wait.
func Follow(ctx context.Context, st Store, opt FollowOptions) (*Follower, error) {
	if opt.Poll <= 0 {
		opt.Poll = 250 * time.Millisecond
	}
	if opt.ReadTimeout <= 0 {
		opt.ReadTimeout = time.Second
	}
	if opt.Grace <= 0 {
		opt.Grace = 2 * DefaultLeaseTTL
	}
	if opt.Log == nil {
		opt.Log = slog.Default()
	}
	wctx, stop := context.WithCancel(context.Background())
	// The watch outlives ctx, but its first read of the store (an etcd
	// that does not answer) is bounded by it.
	unbind := context.AfterFunc(ctx, stop)
	docs, err := st.Watch(wctx)
	if !unbind() {
		stop()
		return nil, fmt.Errorf("no ring document: the store did not answer: %w", ctx.Err())
	}
	if err != nil {
		stop()
		return nil, fmt.Errorf("watch the ring: %w", err)
	}
	f := &Follower{st: st, opt: opt, stop: stop, changed: make(chan struct{})}
	f.tracker.Grace = opt.Grace
	if ls, ok := st.(Leaser); ok {
		f.ls = ls
	}
	for f.rg == nil {
		select {
		case d, ok := <-docs:
			if !ok {
				stop()
				return nil, errors.New("the ring store closed before a document arrived")
			}
			r, err := ring.New(d)
			if err != nil {
				opt.Log.Warn("ring document dropped", "version", d.Version, "err", err)
				continue
			}
			f.rg = r
		case <-ctx.Done():
			stop()
			return nil, fmt.Errorf("no ring document: %w", ctx.Err())
		}
	}
	if f.ls != nil {
		for !f.read(wctx) {
			select {
			case <-ctx.Done():
				stop()
				return nil, fmt.Errorf("no liveness reading from the store: %w", ctx.Err())
			case <-time.After(opt.Poll):
			}
		}
	}
	f.publish()
	f.done.Add(1)
	go f.follow(wctx, docs)
	if f.ls != nil {
		f.done.Add(1)
		go f.poll(wctx)
	}
	return f, nil
}

// read takes one liveness reading and reports whether it succeeded.
func (f *Follower) read(ctx context.Context) bool {
	rctx, cancel := context.WithTimeout(ctx, f.opt.ReadTimeout)
	live, err := f.ls.ReadLive(rctx)
	cancel()
	now := time.Now()
	f.mu.Lock()
	defer f.mu.Unlock()
	wasReachable := f.reachable || !f.tracker.Known()
	changed := f.tracker.Observe(now, live, err == nil)
	f.reachable = err == nil
	if err == nil {
		f.lastRead = now
	}
	if err != nil && wasReachable && ctx.Err() == nil {
		f.opt.Log.Warn("ring store unreachable: keeping the last live members", "err", err)
	} else if err == nil && !wasReachable {
		f.opt.Log.Info("ring store reachable again", "grace", f.opt.Grace)
	}
	if changed && f.view != nil {
		f.publishLocked()
	}
	return err == nil
}

func (f *Follower) poll(ctx context.Context) {
	defer f.done.Done()
	t := time.NewTicker(f.opt.Poll)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
		f.read(ctx)
	}
}

func (f *Follower) follow(ctx context.Context, docs <-chan *ring.Document) {
	defer f.done.Done()
	for d := range docs {
		r, err := ring.New(d)
		if err != nil {
			f.opt.Log.Warn("ring document dropped", "version", d.Version, "err", err)
			continue
		}
		f.mu.Lock()
		if r.Version() > f.rg.Version() {
			f.rg = r
			f.publishLocked()
		}
		f.mu.Unlock()
	}
	if ctx.Err() == nil {
		f.opt.Log.Warn("the ring store's watch ended; keeping the ring in use")
	}
}

func (f *Follower) publish() {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.publishLocked()
}

func (f *Follower) publishLocked() {
	f.gen++
	var live map[uint32]owner.Live
	if f.ls != nil {
		live = f.tracker.Live()
	}
	f.view = owner.NewView(f.rg, live, f.gen)
	close(f.changed)
	f.changed = make(chan struct{})
}

// View returns the view in force.
func (f *Follower) View() *owner.View {
	f.mu.Lock()
	defer f.mu.Unlock()
	return f.view
}

// Changed returns a channel closed at the next change of the view.
func (f *Follower) Changed() <-chan struct{} {
	f.mu.Lock()
	defer f.mu.Unlock()
	return f.changed
}

// Reachable reports whether the last liveness reading succeeded (always
// true for a store without leases), and when the last good one was.
func (f *Follower) Reachable() (bool, time.Time) {
	f.mu.Lock()
	defer f.mu.Unlock()
	if f.ls == nil {
		return true, time.Now()
	}
	return f.reachable, f.lastRead
}

// Holding returns how many members are live only by the tracker's grace.
func (f *Follower) Holding() int {
	f.mu.Lock()
	defer f.mu.Unlock()
	return f.tracker.Holding()
}

// Store returns the followed store.
func (f *Follower) Store() Store { return f.st }

// Close stops following. The store stays the caller's to close.
func (f *Follower) Close() {
	f.stop()
	f.done.Wait()
}
