package wheel_test

import (
	"runtime"
	"runtime/debug"
	"testing"
	"time"
	"unsafe"

	"github.com/pushcluster/push/pkg/wheel"
)

// The comparison the wheel exists for: 100k connections, each with a
// deadline 30 s or more out, against one runtime timer per connection.
const (
	benchN    = 100_000
	benchTick = 100 * time.Millisecond
)

// benchConn stands in for a connection struct with the Timer embedded.
type benchConn struct {
	wheel.Timer[*int]
	_ [96]byte
}

func noop() {}

// stagger spreads deadlines over 30–40 s so they do not share a bucket.
func stagger(i int) time.Duration {
	return 30*time.Second + time.Duration(i%benchN)*(10*time.Second/benchN)
}

// scatter gives reschedule i a deadline hopping around a 60 s window, as
// heartbeats from unrelated connections would.
func scatter(i int) time.Duration {
	return 30*time.Second + time.Duration(i*7919%60000)*time.Millisecond
}

func BenchmarkWheelAddCancel100k(b *testing.B) {
	w := wheel.New[*int](benchTick, 1024, base)
	cs := make([]benchConn, benchN)
	for i := range cs {
		w.Add(&cs[i].Timer, base.Add(stagger(i)))
	}
	i := 0
	for b.Loop() {
		w.Add(&cs[i%benchN].Timer, base.Add(scatter(i)))
		i++
	}
}

func BenchmarkTimeTimerStartStop100k(b *testing.B) {
	ts := make([]*time.Timer, benchN)
	for i := range ts {
		ts[i] = time.AfterFunc(stagger(i), noop)
	}
	defer func() {
		for _, t := range ts {
			t.Stop()
		}
	}()
	i := 0
	for b.Loop() {
		ts[i%benchN].Reset(scatter(i))
		i++
	}
}

func BenchmarkWheelSchedule100k(b *testing.B) {
	w := wheel.New[*int](benchTick, 1024, base)
	cs := make([]benchConn, benchN) // allocated with the connections, not per timer
	for b.Loop() {
		for i := range cs {
			w.Add(&cs[i].Timer, base.Add(stagger(i)))
		}
		for i := range cs {
			w.Cancel(&cs[i].Timer)
		}
	}
	b.ReportMetric(float64(b.Elapsed().Nanoseconds())/float64(b.N*benchN), "ns/entry")
	b.ReportMetric(float64(unsafe.Sizeof(wheel.Timer[*int]{})), "B/entry")
}

func BenchmarkTimeTimerSchedule100k(b *testing.B) {
	ts := make([]*time.Timer, benchN)
	perEntry := heapPerTimer(ts)
	for b.Loop() {
		for i := range ts {
			ts[i] = time.AfterFunc(stagger(i), noop)
		}
		for _, t := range ts {
			t.Stop()
		}
	}
	b.ReportMetric(float64(b.Elapsed().Nanoseconds())/float64(b.N*benchN), "ns/entry")
	b.ReportMetric(perEntry, "B/entry")
}

// heapPerTimer measures the live heap per AfterFunc while len(ts) are
// scheduled, with GC off so a collection cannot shrink the delta.
func heapPerTimer(ts []*time.Timer) float64 {
	defer debug.SetGCPercent(debug.SetGCPercent(-1))
	var before, after runtime.MemStats
	runtime.GC()
	runtime.ReadMemStats(&before)
	for i := range ts {
		ts[i] = time.AfterFunc(stagger(i), noop)
	}
	runtime.ReadMemStats(&after)
	for _, t := range ts {
		t.Stop()
	}
	return float64(after.HeapAlloc-before.HeapAlloc) / float64(len(ts))
}

func BenchmarkWheelAdvance100k(b *testing.B) {
	w := wheel.New[*int](benchTick, 512, base)
	cs := make([]benchConn, benchN)
	fired := 0
	fire := func(*wheel.Timer[*int]) { fired++ }
	now := base
	for b.Loop() {
		b.StopTimer()
		for i := range cs {
			w.Add(&cs[i].Timer, now.Add(time.Duration(i)*(30*time.Second/benchN)))
		}
		b.StartTimer()
		for w.Len() > 0 {
			now = now.Add(benchTick)
			w.Advance(now, fire)
		}
	}
	b.ReportMetric(float64(b.Elapsed().Nanoseconds())/float64(fired), "ns/fired")
}
