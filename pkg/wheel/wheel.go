// Package wheel is a hashed timing wheel for very many coarse timers: the
// handshake deadlines, heartbeat pings and idle timeouts of 100k+ WebSocket
// connections, all driven by one ticker.
//
// A time.Timer per connection is a separate heap object (over 100 B) kept
// in the runtime's O(log n) timer heaps, and each AfterFunc that fires runs
// on its own goroutine. Here the timer is intrusive: Timer is embedded in
// the caller's per-connection struct, so scheduling never allocates, no map
// from id to timer is needed, add, reschedule and cancel are O(1) list
// splices, and expiries are delivered in batches on the caller's goroutine.
//
// The package is pure: no goroutines, no locks and no clock. The caller
// reads the time, passes it to Add and Advance, and serialises every call on
// a Wheel and on the Timers in it (typically one event-loop goroutine, or
// one mutex around the wheel). This keeps it deterministic and testable.
package wheel

import (
	"fmt"
	"time"
)

// Timer is one deadline. Embed it as a field in the struct that owns the
// deadline and point Value back at that struct. The zero value is
// unscheduled. A Timer must not be copied while scheduled, and may be in at
// most one Wheel at a time.
type Timer[T any] struct {
	next, prev *Timer[T] // nil while unscheduled
	when       int64     // absolute tick number of the deadline
	Value      T         // the caller's back-reference, e.g. *conn
}

// Scheduled reports whether t is in a wheel and has not yet fired or been
// cancelled. It is false inside fire for the timer being fired.
func (t *Timer[T]) Scheduled() bool { return t.next != nil }

// Wheel schedules Timers at tick resolution. Use it through the pointer
// returned by New; the zero value is not usable.
type Wheel[T any] struct {
	tick    time.Duration
	start   time.Time
	cur     int64      // last tick Advance reached; deadlines <= cur are overdue
	mask    int64      // len(buckets)-1
	buckets []Timer[T] // list sentinels; timer goes to buckets[when&mask]
	overdue Timer[T]   // sentinel: added at or before cur, fire on next Advance
	firing  Timer[T]   // sentinel: detached by the running Advance, in order
	n       int
	busy    bool // inside Advance
}

// New returns a wheel with resolution tick (> 0) and slots buckets (rounded
// up to a power of two, at least 1) whose tick 0 starts at now. Timers due
// more than slots ticks ahead simply wait extra laps in their bucket, so
// slots trades memory for fewer skipped entries per tick; slots*tick of
// about the longest common timeout is a good choice.
func New[T any](tick time.Duration, slots int, now time.Time) *Wheel[T] {
	if tick <= 0 {
		panic(fmt.Sprintf("wheel: non-positive tick %v", tick))
	}
	if slots > 1<<30 {
		panic(fmt.Sprintf("wheel: %d slots is too many", slots))
	}
	n := 1
	for n < slots {
		n <<= 1
	}
	w := &Wheel[T]{tick: tick, start: now, mask: int64(n - 1), buckets: make([]Timer[T], n)}
	for i := range w.buckets {
		initList(&w.buckets[i])
	}
	initList(&w.overdue)
	initList(&w.firing)
	return w
}

// Add schedules t to fire at the first tick boundary at or after at, so it
// never fires early. A deadline at or before the wheel's current tick
// (including before the start time) is due on the next Advance. If t is
// already scheduled it is moved, which is how deadlines are extended.
func (w *Wheel[T]) Add(t *Timer[T], at time.Time) {
	if t.next != nil {
		t.unlink()
	} else {
		w.n++
	}
	d := at.Sub(w.start) // saturates rather than overflows
	when := int64(d / w.tick)
	if d%w.tick > 0 {
		when++
	}
	head := &w.buckets[when&w.mask]
	if when <= w.cur {
		// A list of its own rather than a bucket already passed: it fires on
		// the next Advance whatever that call's time, never in the Advance
		// that is running fire, and overdue timers tie at the current tick.
		when, head = w.cur, &w.overdue
	}
	t.when = when
	t.linkBefore(head)
}

// Cancel unschedules t and reports whether it was scheduled.
func (w *Wheel[T]) Cancel(t *Timer[T]) bool {
	if t.next == nil {
		return false
	}
	t.unlink()
	t.next, t.prev = nil, nil
	w.n--
	return true
}

// Advance moves the wheel to now and calls fire for every timer whose
// deadline tick is at or before now's tick, in non-decreasing deadline
// order, ties in the order they were (last) added; a deadline already past
// when added counts as the tick it was added at. It returns the number
// fired. Time moving backwards fires only overdue timers.
//
// Each timer is unscheduled before fire sees it, so fire may Add it again
// (a periodic timer) or Add and Cancel others. Anything fire makes due is
// left for the next Advance, so one call always terminates. fire must not
// call Advance. The whole due set is detached before the first fire, which
// makes the cost O(elapsed ticks + due timers), capped at O(slots + timers +
// due*log(due)) for jumps longer than a lap, e.g. after a suspended process.
func (w *Wheel[T]) Advance(now time.Time, fire func(*Timer[T])) int {
	if w.busy {
		panic("wheel: Advance called from fire")
	}
	w.busy = true
	defer func() { w.busy = false }()

	d := now.Sub(w.start)
	to := int64(d / w.tick)
	if d%w.tick < 0 {
		to--
	}
	splice(&w.overdue, &w.firing)
	if to > w.cur {
		if to-w.cur <= int64(len(w.buckets)) {
			// Within one lap each bucket holds at most one due deadline, so
			// visiting ticks in order is deadline order.
			for tk := w.cur + 1; tk <= to; tk++ {
				moveDue(&w.buckets[tk&w.mask], tk, &w.firing)
			}
		} else {
			w.collectSorted(to)
		}
		w.cur = to
	}

	fired := 0
	for w.firing.next != &w.firing {
		t := w.firing.next
		t.unlink()
		t.next, t.prev = nil, nil
		w.n--
		fired++
		fire(t)
	}
	return fired
}

// collectSorted moves every timer due by tick to the end of w.firing in
// deadline order, visiting each bucket once instead of each elapsed tick.
// Equal deadlines share a bucket, whose list is in insertion order, and the
// sort is stable, so ties keep insertion order.
func (w *Wheel[T]) collectSorted(to int64) {
	var head *Timer[T] // singly linked through next while detached
	tail := &head
	for i := range w.buckets {
		s := &w.buckets[i]
		for t := s.next; t != s; {
			nx := t.next
			if t.when <= to {
				t.unlink()
				t.next = nil
				*tail = t
				tail = &t.next
			}
			t = nx
		}
	}
	for t := mergeSort(head); t != nil; {
		nx := t.next
		t.linkBefore(&w.firing)
		t = nx
	}
}

// mergeSort stably sorts a nil-terminated list linked through next by when.
// It does not allocate; recursion depth is log2 of the length.
func mergeSort[T any](head *Timer[T]) *Timer[T] {
	if head == nil || head.next == nil {
		return head
	}
	slow, fast := head, head.next
	for fast != nil && fast.next != nil {
		slow, fast = slow.next, fast.next.next
	}
	b := slow.next
	slow.next = nil
	a := mergeSort(head)
	b = mergeSort(b)
	var out *Timer[T]
	tail := &out
	for a != nil && b != nil {
		if b.when < a.when {
			*tail, b = b, b.next
		} else {
			*tail, a = a, a.next
		}
		tail = &(*tail).next
	}
	if a != nil {
		*tail = a
	} else {
		*tail = b
	}
	return out
}

// Len returns the number of scheduled timers.
func (w *Wheel[T]) Len() int { return w.n }

// Tick returns the resolution.
func (w *Wheel[T]) Tick() time.Duration { return w.tick }

func initList[T any](s *Timer[T]) { s.next, s.prev = s, s }

func (t *Timer[T]) unlink() {
	t.prev.next = t.next
	t.next.prev = t.prev
}

// linkBefore appends t to the list whose sentinel is head.
func (t *Timer[T]) linkBefore(head *Timer[T]) {
	t.prev = head.prev
	t.next = head
	head.prev.next = t
	head.prev = t
}

// moveDue appends the timers in bucket s due by tick to the list dst,
// leaving later laps in place.
func moveDue[T any](s *Timer[T], tick int64, dst *Timer[T]) {
	for t := s.next; t != s; {
		nx := t.next
		if t.when <= tick {
			t.unlink()
			t.linkBefore(dst)
		}
		t = nx
	}
}

// splice moves the whole list headed by src to the end of the list dst.
func splice[T any](src, dst *Timer[T]) {
	if src.next == src {
		return
	}
	first, last := src.next, src.prev
	first.prev = dst.prev
	dst.prev.next = first
	last.next = dst
	dst.prev = last
	initList(src)
}
