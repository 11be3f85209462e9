// Package evloop is the event loop the edge and the router share: epoll
// loops (package poller) over raw non-blocking descriptors (package rawtcp)
// that accept in batches, a descriptor table that maps a descriptor to its
// connection object with a generation tag so that a stale event for a
// closed and reused descriptor number is recognised and dropped, and the
// timing wheel (package wheel) behind every deadline, advanced by one
// ticker.
//
// The package owns no connection state and no protocol: a server keeps its
// own objects in a Table, implements Handler for what happens on accept and
// on readiness, and keeps its own locking (the Table is lock-free; the
// Timers lock is a leaf, taken after any connection lock).
//
// Nothing here allocates per event: Loop.Run hands each event to the
// Handler through one interface call, and Table lookups are atomic loads.
package evloop

import (
	"errors"
	"fmt"
	"sync"
	"sync/atomic"
	"time"

	"golang.org/x/sys/unix"

	"github.com/pushcluster/push/pkg/poller"
	"github.com/pushcluster/push/pkg/rawtcp"
	"github.com/pushcluster/push/pkg/wheel"
)

// ListenTag is the tag of listening sockets' events. Generations handed
// out by Table.Gen are never ListenTag (nor 0), so a connection's events
// cannot be taken for a listener's.
const ListenTag = ^uint32(0)

// AcceptBatch bounds the connections one listener event takes, so a
// reconnect storm cannot starve established connections (level-triggered
// epoll reports the listener again while connections are pending).
const AcceptBatch = 64

// acceptPause is how long a loop stops accepting after a temporary accept
// error (out of descriptors or memory): long enough for closes to free
// some, short enough not to let the backlog overflow.
const acceptPause = 5 * time.Millisecond

// Table maps descriptors to connection objects. It is sized once to the
// process's hard RLIMIT_NOFILE (at most 1<<22 slots of one pointer each)
// and never grows, so a lookup is one bounds check and an atomic load.
//
// A slot is cleared (Clear) before its descriptor is closed, so a
// descriptor number that the kernel reuses never finds the previous
// object; an event that was already queued for the old descriptor carries
// the old generation, which the caller compares with the object's own.
type Table[T any] struct {
	slots []atomic.Pointer[T]
	gen   atomic.Uint32
	top   atomic.Int64 // highest descriptor stored, -1 if none; bounds scans
}

// NewTable sizes a table for every descriptor this process may open.
func NewTable[T any]() *Table[T] {
	_, hard := rawtcp.FDLimit()
	size := hard
	if size == 0 || size > 1<<22 {
		size = 1 << 22
	}
	return NewTableSize[T](int(size))
}

// NewTableSize makes a table for descriptors 0..size-1.
func NewTableSize[T any](size int) *Table[T] {
	t := &Table[T]{slots: make([]atomic.Pointer[T], size)}
	t.top.Store(-1)
	return t
}

// Gen returns a new generation for a descriptor's epoll events: unique
// among the 2^32-2 most recent ones, never 0 or ListenTag.
func (t *Table[T]) Gen() uint32 {
	for {
		if g := t.gen.Add(1); g != 0 && g != ListenTag {
			return g
		}
	}
}

// Fits reports whether fd has a slot (a descriptor beyond the table, only
// possible if the limit was raised after NewTable, must be closed).
func (t *Table[T]) Fits(fd int) bool { return fd >= 0 && fd < len(t.slots) }

// Store sets fd's object; fd must fit.
func (t *Table[T]) Store(fd int, v *T) {
	t.slots[fd].Store(v)
	for m := t.top.Load(); int64(fd) > m && !t.top.CompareAndSwap(m, int64(fd)); m = t.top.Load() {
	}
}

// Load returns fd's object, nil if none or if fd does not fit.
func (t *Table[T]) Load(fd int) *T {
	if uint(fd) >= uint(len(t.slots)) {
		return nil
	}
	return t.slots[fd].Load()
}

// Clear empties fd's slot if it still holds v (call before closing fd).
func (t *Table[T]) Clear(fd int, v *T) {
	if uint(fd) < uint(len(t.slots)) {
		t.slots[fd].CompareAndSwap(v, nil)
	}
}

// Top is one past the highest descriptor ever stored: scans stop there.
func (t *Table[T]) Top() int { return int(t.top.Load()) + 1 }

// Range calls fn for every stored object, in descriptor order, until fn
// returns false. Objects stored or cleared during the scan may or may not
// be seen.
func (t *Table[T]) Range(fn func(fd int, v *T) bool) {
	top := t.Top()
	for i := 0; i < top; i++ {
		if v := t.slots[i].Load(); v != nil && !fn(i, v) {
			return
		}
	}
}

// Count returns the number of stored objects (a scan up to Top).
func (t *Table[T]) Count() int {
	n := 0
	t.Range(func(int, *T) bool { n++; return true })
	return n
}

// Handler is what a server does with its loops' events. Every method runs
// on the loop's own goroutine, one event at a time.
type Handler interface {
	// Accept takes a new non-blocking descriptor accepted from ln by loop
	// l. It owns fd from now on (it closes it to refuse it).
	Accept(l *Loop, ln *rawtcp.Listener, fd int)
	// Event reports readiness ev of descriptor fd, registered with tag
	// (compare it with the object's generation: the event may be stale).
	Event(fd int, tag uint32, ev poller.Event)
	// AcceptError reports a failed accept other than "none pending";
	// after a temporary one (rawtcp.IsTemporary) the loop stops accepting
	// for a few milliseconds.
	AcceptError(err error, temporary bool)
}

// Loop is one epoll instance and the goroutine that waits on it (Run).
// Every loop of a server watches the same listeners with EPOLLEXCLUSIVE,
// so one new connection wakes one loop, which accepts up to AcceptBatch
// connections from that listener at once.
type Loop struct {
	ID   int
	Poll *poller.Poller
	h    Handler
	lns  []*rawtcp.Listener // set by Listen before Run; read by Run's goroutine
}

// New creates loop id with its own epoll instance.
func New(id int, h Handler) (*Loop, error) {
	p, err := poller.New(256)
	if err != nil {
		return nil, err
	}
	return &Loop{ID: id, Poll: p, h: h}, nil
}

// Listen makes the loop accept from ln; call it for every listener before
// Run.
func (l *Loop) Listen(ln *rawtcp.Listener) error {
	if err := l.Poll.StartExclusive(ln.FD, ListenTag); err != nil {
		return fmt.Errorf("watch listener %v: %w", ln.Addr, err)
	}
	l.lns = append(l.lns, ln)
	return nil
}

// Unlisten stops accepting from ln (before closing it, at a drain).
func (l *Loop) Unlisten(ln *rawtcp.Listener) { l.Poll.Stop(ln.FD) }

// Run handles events until Close and then releases the epoll instance.
// It returns nil after Close, or the error that stopped the loop.
func (l *Loop) Run() error {
	defer l.Poll.Release()
	if err := l.Poll.Run(l.onEvent); !errors.Is(err, poller.ErrClosed) {
		return err
	}
	return nil
}

// Close stops Run (call once, after the server stopped using the loop).
func (l *Loop) Close() { l.Poll.Close() }

// Release frees the epoll instance of a loop that never ran.
func (l *Loop) Release() { l.Poll.Release() }

func (l *Loop) onEvent(fd int, tag uint32, ev poller.Event) {
	if tag == ListenTag {
		for _, ln := range l.lns {
			if ln.FD == fd {
				l.acceptBatch(ln)
				return
			}
		}
		return
	}
	l.h.Event(fd, tag, ev)
}

func (l *Loop) acceptBatch(ln *rawtcp.Listener) {
	for i := 0; i < AcceptBatch; i++ {
		fd, err := ln.AcceptFD()
		if err != nil {
			if err == unix.EAGAIN {
				return
			}
			temp := rawtcp.IsTemporary(err)
			l.h.AcceptError(err, temp)
			if temp {
				time.Sleep(acceptPause) // let closes free descriptors
			}
			return
		}
		l.h.Accept(l, ln, fd)
	}
}

// Timers is a timing wheel behind a lock, advanced by Run's ticker: every
// deadline of a server's connections (handshake, ping, idle, close, dial)
// is one wheel.Timer in its connection object, so an idle connection owns
// no runtime timer. Its lock is a leaf: taken after a connection's lock,
// never before, and never held while a timer's callback runs.
type Timers[T any] struct {
	mu sync.Mutex
	w  *wheel.Wheel[T]
}

// NewTimers makes a wheel of the given resolution and slot count starting
// at now.
func NewTimers[T any](tick time.Duration, slots int, now time.Time) *Timers[T] {
	return &Timers[T]{w: wheel.New[T](tick, slots, now)}
}

// Schedule (re)arms tm to fire at at (rounded up to the next tick).
//
// at may come without a monotonic clock reading (time.Unix, as for the
// Unix-nanosecond deadlines of package wire); the wheel advances by the
// monotonic clock from its start and would measure such an at by the wall
// clock instead, so a wall clock stepped after the start would shift
// every deadline by the step. Schedule re-anchors at on now's monotonic
// reading, the same distance ahead.
func (t *Timers[T]) Schedule(tm *wheel.Timer[T], at time.Time) {
	at = monotonic(time.Now(), at)
	t.mu.Lock()
	t.w.Add(tm, at)
	t.mu.Unlock()
}

// monotonic returns at as now plus what is left until it, carrying now's
// monotonic clock reading.
func monotonic(now, at time.Time) time.Time { return now.Add(at.Sub(now)) }

// Cancel disarms tm if it is scheduled.
func (t *Timers[T]) Cancel(tm *wheel.Timer[T]) {
	t.mu.Lock()
	t.w.Cancel(tm)
	t.mu.Unlock()
}

// Len returns the number of scheduled timers.
func (t *Timers[T]) Len() int {
	t.mu.Lock()
	defer t.mu.Unlock()
	return t.w.Len()
}

// Run advances the wheel every tick until stop is closed: fire is called
// for each due timer's value, in deadline order, without the lock (it may
// Schedule or Cancel), then after(now) if after is not nil.
func (t *Timers[T]) Run(stop <-chan struct{}, fire func(v T, now time.Time), after func(now time.Time)) {
	tk := time.NewTicker(t.w.Tick())
	defer tk.Stop()
	var due []T
	var zero T
	collect := func(tm *wheel.Timer[T]) { due = append(due, tm.Value) }
	for {
		select {
		case <-stop:
			return
		case now := <-tk.C:
			t.mu.Lock()
			t.w.Advance(now, collect)
			t.mu.Unlock()
			for i, v := range due {
				fire(v, now)
				due[i] = zero
			}
			due = due[:0]
			if after != nil {
				after(now)
			}
		}
	}
}
