package wheel_test

import (
	"cmp"
	"math"
	"math/rand/v2"
	"slices"
	"testing"
	"time"
	"unsafe"

	"github.com/pushcluster/push/pkg/wheel"
)

// base is an arbitrary fixed instant; tests never read the real clock.
var base = time.Date(2025, 1, 2, 3, 4, 5, 6, time.UTC)

const ms = time.Millisecond

type conn struct {
	id    int
	timer wheel.Timer[*conn]
}

func newConns(n int) []*conn {
	cs := make([]*conn, n)
	for i := range cs {
		cs[i] = &conn{id: i}
		cs[i].timer.Value = cs[i]
	}
	return cs
}

// ids returns a fire func that appends fired ids to *got.
func ids(got *[]int) func(*wheel.Timer[*conn]) {
	return func(t *wheel.Timer[*conn]) { *got = append(*got, t.Value.id) }
}

func b2i(b bool) int {
	if b {
		return 1
	}
	return 0
}

func TestTimerSize(t *testing.T) {
	if got, want := unsafe.Sizeof(wheel.Timer[*conn]{}), 4*unsafe.Sizeof(uintptr(0)); got != want {
		t.Fatalf("Timer size %d, want %d (two pointers, int64, Value)", got, want)
	}
}

func TestFiresAtDeadlineNeverEarly(t *testing.T) {
	const tick = 10 * ms
	cases := []struct {
		name     string
		deadline time.Duration   // after base
		steps    []time.Duration // successive Advance times, after base
		fireAt   int             // index into steps of the Advance that fires; -1 never
	}{
		{"at start", 0, []time.Duration{0, tick}, 0},
		{"before start", -5 * ms, []time.Duration{0}, 0},
		{"long before start", -time.Hour, []time.Duration{-2 * time.Hour, 0}, 0},
		{"1ns after start", 1, []time.Duration{0, tick - 1, tick}, 2},
		{"exact boundary", tick, []time.Duration{tick - 1, tick, 2 * tick}, 1},
		{"1ns after boundary", tick + 1, []time.Duration{tick, 2*tick - 1, 2 * tick}, 2},
		{"mid tick", 25 * ms, []time.Duration{15 * ms, 29 * ms, 30 * ms}, 2},
		{"sub-tick advances", 30 * ms, []time.Duration{1, 11 * ms, 21 * ms, 29*ms + 999_999, 30 * ms}, 4},
		{"jump past", 35 * ms, []time.Duration{100 * ms}, 0},
		{"not yet", 35 * ms, []time.Duration{5 * ms, 39 * ms}, -1},
		{"jump past a lap", 35 * ms, []time.Duration{39 * ms, 10 * time.Second}, 1},
		{"beyond a lap", 8*tick + 3*ms, []time.Duration{tick, 8 * tick, 9*tick - 1, 9 * tick}, 3},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			w := wheel.New[*conn](tick, 8, base)
			cs := newConns(1)
			w.Add(&cs[0].timer, base.Add(c.deadline))
			got := -1
			for i, s := range c.steps {
				now := base.Add(s)
				n := w.Advance(now, func(tm *wheel.Timer[*conn]) {
					if got >= 0 {
						t.Fatalf("fired twice")
					}
					got = i
				})
				if n != 0 && n != 1 {
					t.Fatalf("Advance returned %d", n)
				}
			}
			if got != c.fireAt {
				t.Fatalf("fired at step %d, want %d", got, c.fireAt)
			}
			if got >= 0 && c.steps[got] < c.deadline && c.deadline > 0 {
				t.Fatalf("fired early: at %v for deadline %v", c.steps[got], c.deadline)
			}
			if want := b2i(got < 0); w.Len() != want || cs[0].timer.Scheduled() != (want == 1) {
				t.Fatalf("Len %d Scheduled %v, want Len %d", w.Len(), cs[0].timer.Scheduled(), want)
			}
		})
	}
}

// TestRounds checks deadlines several laps out fire on their own lap, for
// step sizes below, at and above one lap.
func TestRounds(t *testing.T) {
	const tick, slots = 10 * ms, 8
	var deadlines []time.Duration
	for d := time.Duration(1); d < 5*slots*tick; d += 3*ms + 7 {
		deadlines = append(deadlines, d)
	}
	for _, step := range []int{1, 2, 3, 7, slots, slots + 1, 3*slots + 5} {
		w := wheel.New[*conn](tick, slots, base)
		cs := newConns(len(deadlines))
		for i, d := range deadlines {
			w.Add(&cs[i].timer, base.Add(d))
		}
		firedAt := make([]time.Duration, len(cs))
		for s := time.Duration(0); s < 5*slots*tick+time.Duration(step)*tick; s += time.Duration(step) * tick {
			w.Advance(base.Add(s), func(tm *wheel.Timer[*conn]) {
				if firedAt[tm.Value.id] != 0 {
					t.Fatalf("step %d: timer %d fired twice", step, tm.Value.id)
				}
				firedAt[tm.Value.id] = s
			})
		}
		for i, d := range deadlines {
			// First Advance time at or after the deadline rounded up to a tick.
			k := (int64(d) + int64(tick) - 1) / int64(tick)
			want := time.Duration((k+int64(step)-1)/int64(step)*int64(step)) * tick
			if firedAt[i] != want {
				t.Fatalf("step %d: deadline %v fired at %v, want %v", step, d, firedAt[i], want)
			}
		}
		if w.Len() != 0 {
			t.Fatalf("step %d: Len %d after all fired", step, w.Len())
		}
	}
}

func TestCancelAndReschedule(t *testing.T) {
	w := wheel.New[*conn](10*ms, 16, base)
	cs := newConns(3)
	var zero wheel.Timer[*conn]
	if zero.Scheduled() || w.Cancel(&zero) {
		t.Fatal("zero Timer must be unscheduled")
	}
	w.Add(&cs[0].timer, base.Add(50*ms))
	w.Add(&cs[1].timer, base.Add(50*ms))
	w.Add(&cs[2].timer, base.Add(500*ms))
	if !cs[0].timer.Scheduled() || w.Len() != 3 {
		t.Fatalf("after Add: scheduled=%v Len=%d", cs[0].timer.Scheduled(), w.Len())
	}
	if !w.Cancel(&cs[0].timer) || w.Cancel(&cs[0].timer) {
		t.Fatal("Cancel must report true once, then false")
	}
	if cs[0].timer.Scheduled() || w.Len() != 2 {
		t.Fatalf("after Cancel: scheduled=%v Len=%d", cs[0].timer.Scheduled(), w.Len())
	}
	// Move 1 later (past the Advance) and 2 earlier (before it).
	w.Add(&cs[1].timer, base.Add(200*ms))
	w.Add(&cs[2].timer, base.Add(60*ms))
	if w.Len() != 2 {
		t.Fatalf("reschedule changed Len to %d", w.Len())
	}
	var got []int
	w.Advance(base.Add(100*ms), ids(&got))
	if !slices.Equal(got, []int{2}) {
		t.Fatalf("fired %v, want [2]", got)
	}
	got = nil
	w.Advance(base.Add(time.Second), ids(&got))
	if !slices.Equal(got, []int{1}) || w.Len() != 0 {
		t.Fatalf("fired %v Len %d, want [1] and 0", got, w.Len())
	}
	if w.Cancel(&cs[1].timer) {
		t.Fatal("Cancel after fire must report false")
	}
}

func TestPeriodicReAddFromFire(t *testing.T) {
	const tick, period = 10 * ms, 30 * ms
	w := wheel.New[*conn](tick, 4, base)
	cs := newConns(1)
	var now time.Time
	var fires []time.Duration
	fire := func(tm *wheel.Timer[*conn]) {
		if tm.Scheduled() {
			t.Fatal("timer still scheduled inside fire")
		}
		fires = append(fires, now.Sub(base))
		w.Add(tm, now.Add(period))
	}
	w.Add(&cs[0].timer, base.Add(period))
	for s := time.Duration(0); s <= time.Second; s += tick {
		now = base.Add(s)
		if n := w.Advance(now, fire); n > 1 {
			t.Fatalf("fired %d times in one Advance", n)
		}
	}
	if len(fires) != int(time.Second/period) {
		t.Fatalf("fired %d times, want %d", len(fires), time.Second/period)
	}
	for i, f := range fires {
		if want := time.Duration(i+1) * period; f != want {
			t.Fatalf("fire %d at %v, want %v", i, f, want)
		}
	}

	// Re-adding to a time already past fires on each later call, once per
	// call, even when the clock does not move.
	calls := 0
	w.Add(&cs[0].timer, now)
	for range 5 {
		calls += w.Advance(now, func(tm *wheel.Timer[*conn]) { w.Add(tm, base) })
	}
	if calls != 5 || w.Len() != 1 {
		t.Fatalf("past re-add fired %d times over 5 calls, Len %d", calls, w.Len())
	}
}

func TestFireMayCancelAndAddOthers(t *testing.T) {
	w := wheel.New[*conn](10*ms, 8, base)
	cs := newConns(4)
	for _, c := range cs {
		w.Add(&c.timer, base.Add(10*ms))
	}
	var got []int
	w.Advance(base.Add(10*ms), func(tm *wheel.Timer[*conn]) {
		got = append(got, tm.Value.id)
		if tm.Value.id == 0 {
			w.Cancel(&cs[1].timer)                   // due in this call: must not fire
			w.Add(&cs[2].timer, base.Add(time.Hour)) // moved out of this call
		}
	})
	if !slices.Equal(got, []int{0, 3}) || w.Len() != 1 || !cs[2].timer.Scheduled() {
		t.Fatalf("fired %v Len %d", got, w.Len())
	}
}

func TestAdvanceFromFirePanics(t *testing.T) {
	w := wheel.New[*conn](10*ms, 8, base)
	cs := newConns(1)
	w.Add(&cs[0].timer, base)
	defer func() {
		if recover() == nil {
			t.Fatal("reentrant Advance did not panic")
		}
	}()
	w.Advance(base, func(*wheel.Timer[*conn]) { w.Advance(base, nil) })
}

// TestOrder checks non-decreasing deadline order and insertion order for
// ties, both within a lap (tick walk) and across many laps (sorted jump).
func TestOrder(t *testing.T) {
	const tick, slots = 10 * ms, 16
	for _, jump := range []int{slots - 1, slots, slots + 1, 1000 * slots} {
		rng := rand.New(rand.NewPCG(1, uint64(jump)))
		w := wheel.New[*conn](tick, slots, base)
		cs := newConns(2000)
		when := make([]time.Duration, len(cs))
		for i, c := range cs {
			// Few distinct deadlines, so many ties land in the same bucket.
			when[i] = time.Duration(rng.IntN(jump)+1) * tick
			w.Add(&c.timer, base.Add(when[i]-time.Duration(rng.IntN(int(tick)))))
		}
		// Rescheduling moves a timer to the back of its tie group.
		for i := 0; i < len(cs); i += 7 {
			w.Add(&cs[i].timer, base.Add(when[i]))
		}
		want := make([]int, len(cs))
		for i := range want {
			want[i] = i
		}
		seq := make([]int, len(cs))
		for i := range seq {
			seq[i] = i
			if i%7 == 0 {
				seq[i] += len(cs)
			}
		}
		slices.SortStableFunc(want, func(a, b int) int {
			return cmp.Or(cmp.Compare(when[a], when[b]), cmp.Compare(seq[a], seq[b]))
		})
		var got []int
		if n := w.Advance(base.Add(time.Duration(jump)*tick), ids(&got)); n != len(cs) {
			t.Fatalf("jump %d: fired %d of %d", jump, n, len(cs))
		}
		if !slices.Equal(got, want) {
			t.Fatalf("jump %d: wrong order", jump)
		}
	}
}

func TestBigJump(t *testing.T) {
	const tick, slots, n = 10 * ms, 64, 10000
	w := wheel.New[*conn](tick, slots, base)
	cs := newConns(n)
	rng := rand.New(rand.NewPCG(2, 3))
	deadline := make([]time.Duration, n)
	for i, c := range cs {
		deadline[i] = time.Duration(rng.Int64N(int64(1000 * slots * tick)))
		w.Add(&c.timer, base.Add(deadline[i]))
	}
	seen := make([]bool, n)
	var last time.Duration
	fired := w.Advance(base.Add(1000*slots*tick), func(tm *wheel.Timer[*conn]) {
		id := tm.Value.id
		if seen[id] {
			t.Fatalf("timer %d fired twice", id)
		}
		seen[id] = true
		// Order is by tick, so compare deadlines rounded up to one.
		d := (deadline[id] + tick - 1) / tick
		if d < last {
			t.Fatalf("timer %d (tick %d) fired after tick %d", id, d, last)
		}
		last = d
	})
	if fired != n || w.Len() != 0 {
		t.Fatalf("fired %d of %d, Len %d", fired, n, w.Len())
	}

	// A walk of every elapsed tick would not finish: 100 years at 1ms.
	w = wheel.New[*conn](ms, slots, base)
	for i, c := range cs {
		w.Add(&c.timer, base.Add(time.Duration(i)*24*time.Hour))
	}
	if fired := w.Advance(base.Add(100*365*24*time.Hour), func(*wheel.Timer[*conn]) {}); fired != n {
		t.Fatalf("100-year jump fired %d of %d", fired, n)
	}
}

// model is the reference: a slice of entries sorted on each Advance.
type model struct {
	tick    time.Duration
	cur     int64 // tick the wheel has reached
	seq     int   // insertion counter, for tie order
	entries []modelEntry
}

type modelEntry struct {
	sched bool
	when  int64
	seq   int
}

func (m *model) add(id int, at time.Time) {
	// Float division is exact enough here and independent of the wheel's
	// integer rounding.
	when := int64(math.Ceil(float64(at.Sub(base)) / float64(m.tick)))
	when = max(when, m.cur)
	m.seq++
	m.entries[id] = modelEntry{sched: true, when: when, seq: m.seq}
}

func (m *model) cancel(id int) bool {
	was := m.entries[id].sched
	m.entries[id].sched = false
	m.seq++
	m.entries[id].seq = m.seq
	return was
}

func (m *model) len() int {
	n := 0
	for _, e := range m.entries {
		if e.sched {
			n++
		}
	}
	return n
}

// due moves the model to now and returns the ids due, in firing order, with
// their seq so that entries changed by fire can be skipped.
func (m *model) due(now time.Time) [][2]int {
	m.cur = max(m.cur, int64(math.Floor(float64(now.Sub(base))/float64(m.tick))))
	var d [][2]int
	for id, e := range m.entries {
		if e.sched && e.when <= m.cur {
			d = append(d, [2]int{id, e.seq})
		}
	}
	slices.SortFunc(d, func(a, b [2]int) int {
		ea, eb := m.entries[a[0]], m.entries[b[0]]
		return cmp.Or(cmp.Compare(ea.when, eb.when), cmp.Compare(ea.seq, eb.seq))
	})
	return d
}

func TestModel(t *testing.T) {
	const tick, ops, timers = 10 * ms, 10000, 48
	for _, slots := range []int{1, 3, 8, 64} {
		rng := rand.New(rand.NewPCG(42, uint64(slots)))
		w := wheel.New[*conn](tick, slots, base)
		m := &model{tick: tick, entries: make([]modelEntry, timers)}
		cs := newConns(timers)
		now := base
		randAt := func() time.Time {
			return now.Add(time.Duration(rng.Int64N(int64(3*slots+8)*int64(tick))) - 5*tick)
		}
		var expect [][2]int
		fire := func(tm *wheel.Timer[*conn]) {
			for len(expect) > 0 && m.entries[expect[0][0]].seq != expect[0][1] {
				expect = expect[1:] // cancelled or moved by an earlier fire
			}
			if len(expect) == 0 || expect[0][0] != tm.Value.id {
				t.Fatalf("slots %d: fired %d, model expects %v", slots, tm.Value.id, expect)
			}
			expect = expect[1:]
			m.cancel(tm.Value.id)
			switch r := rng.IntN(10); {
			case r < 3:
				at := randAt()
				w.Add(tm, at)
				m.add(tm.Value.id, at)
			case r < 4:
				id := rng.IntN(timers)
				if w.Cancel(&cs[id].timer) != m.cancel(id) {
					t.Fatalf("slots %d: Cancel(%d) in fire disagrees", slots, id)
				}
			case r < 5:
				id, at := rng.IntN(timers), randAt()
				w.Add(&cs[id].timer, at)
				m.add(id, at)
			}
		}
		for op := range ops {
			switch r := rng.IntN(10); {
			case r < 4:
				id, at := rng.IntN(timers), randAt()
				w.Add(&cs[id].timer, at)
				m.add(id, at)
			case r < 6:
				id := rng.IntN(timers)
				if got, want := w.Cancel(&cs[id].timer), m.cancel(id); got != want {
					t.Fatalf("slots %d op %d: Cancel(%d)=%v, model %v", slots, op, id, got, want)
				}
			default:
				var step time.Duration
				switch rng.IntN(20) {
				case 0: // far beyond a lap
					step = time.Duration(rng.Int64N(int64(50*slots+50) * int64(tick)))
				case 1: // clock stepped back
					step = -time.Duration(rng.Int64N(int64(3 * tick)))
				default:
					step = time.Duration(rng.Int64N(int64(3 * tick)))
				}
				now = now.Add(step)
				expect = m.due(now)
				want := len(expect)
				n := w.Advance(now, fire)
				for len(expect) > 0 && m.entries[expect[0][0]].seq != expect[0][1] {
					expect = expect[1:]
				}
				if len(expect) != 0 {
					t.Fatalf("slots %d op %d: did not fire %v", slots, op, expect)
				}
				if n > want {
					t.Fatalf("slots %d op %d: Advance returned %d, at most %d due", slots, op, n, want)
				}
			}
			if w.Len() != m.len() {
				t.Fatalf("slots %d op %d: Len %d, model %d", slots, op, w.Len(), m.len())
			}
			for id, c := range cs {
				if c.timer.Scheduled() != m.entries[id].sched {
					t.Fatalf("slots %d op %d: timer %d Scheduled %v, model %v", slots, op, id, c.timer.Scheduled(), m.entries[id].sched)
				}
			}
		}
	}
}

func TestZeroAllocs(t *testing.T) {
	w := wheel.New[*conn](10*ms, 64, base)
	cs := newConns(1000)
	now := base
	i := 0
	fired := 0
	fire := func(*wheel.Timer[*conn]) { fired++ }
	check := func(name string, f func()) {
		t.Helper()
		if a := testing.AllocsPerRun(1000, f); a != 0 {
			t.Errorf("%s: %v allocs per run, want 0", name, a)
		}
	}
	check("Add", func() {
		i++
		w.Add(&cs[i%len(cs)].timer, now.Add(time.Duration(i%5000)*ms))
	})
	check("Cancel", func() {
		i++
		w.Cancel(&cs[i%len(cs)].timer)
		w.Add(&cs[(i+500)%len(cs)].timer, now.Add(time.Duration(i%5000)*ms))
	})
	check("Advance", func() {
		now = now.Add(7 * ms)
		w.Advance(now, fire)
	})
	check("Advance big jump", func() {
		for j := range 100 {
			w.Add(&cs[j].timer, now.Add(time.Duration(j)*time.Second))
		}
		now = now.Add(time.Hour)
		w.Advance(now, fire)
	})
	if fired == 0 {
		t.Fatal("nothing fired")
	}
}
