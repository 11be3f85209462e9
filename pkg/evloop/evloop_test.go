package evloop_test

import (
	"net"
	"sync"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"github.com/pushcluster/push/pkg/evloop"
	"github.com/pushcluster/push/pkg/poller"
	"github.com/pushcluster/push/pkg/rawtcp"
	"github.com/pushcluster/push/pkg/wheel"
)

type obj struct {
	gen uint32
	fd  int
}

func TestTableGenerationsAndScan(t *testing.T) {
	tb := evloop.NewTableSize[obj](8)
	if tb.Top() != 0 || tb.Count() != 0 {
		t.Fatalf("empty table: top %d count %d", tb.Top(), tb.Count())
	}
	a := &obj{gen: tb.Gen(), fd: 5}
	tb.Store(5, a)
	if tb.Load(5) != a || tb.Top() != 6 {
		t.Fatalf("stored 5: load %v top %d", tb.Load(5), tb.Top())
	}
	if tb.Load(8) != nil || tb.Load(-1) != nil || tb.Fits(8) || !tb.Fits(7) {
		t.Fatal("out-of-range descriptors must not resolve")
	}
	// A reused descriptor number gets a new object with a new generation;
	// clearing with the old object leaves the new one alone.
	b := &obj{gen: tb.Gen(), fd: 5}
	tb.Clear(5, a)
	tb.Store(5, b)
	tb.Clear(5, a)
	if got := tb.Load(5); got != b || got.gen == a.gen {
		t.Fatalf("reused slot holds %+v, want the new object with a new generation", got)
	}
	tb.Store(2, &obj{fd: 2})
	var seen []int
	tb.Range(func(fd int, o *obj) bool { seen = append(seen, fd); return true })
	if len(seen) != 2 || seen[0] != 2 || seen[1] != 5 || tb.Count() != 2 {
		t.Fatalf("scan saw %v", seen)
	}
}

func TestGenSkipsZeroAndListenTag(t *testing.T) {
	tb := evloop.NewTableSize[obj](1)
	for i := 0; i < 1000; i++ {
		if g := tb.Gen(); g == 0 || g == evloop.ListenTag {
			t.Fatalf("generation %#x", g)
		}
	}
}

type handler struct {
	mu       sync.Mutex
	tb       *evloop.Table[obj]
	accepted []int
	events   map[int]poller.Event
	stale    int
	done     chan int
}

func (h *handler) Accept(l *evloop.Loop, _ *rawtcp.Listener, fd int) {
	o := &obj{gen: h.tb.Gen(), fd: fd}
	h.tb.Store(fd, o)
	h.mu.Lock()
	h.accepted = append(h.accepted, fd)
	h.mu.Unlock()
	if err := l.Poll.Start(fd, o.gen, poller.Read); err != nil {
		panic(err)
	}
}

func (h *handler) Event(fd int, tag uint32, ev poller.Event) {
	o := h.tb.Load(fd)
	if o == nil || o.gen != tag {
		h.mu.Lock()
		h.stale++
		h.mu.Unlock()
		return
	}
	var b [16]byte
	n, _ := rawtcp.Read(fd, b[:])
	h.done <- n
}

func (h *handler) AcceptError(error, bool) {}

// A loop accepts from its listener in batches and hands readiness of the
// accepted descriptors to the handler, on real loopback sockets.
func TestLoopAcceptsAndDispatches(t *testing.T) {
	ln, err := rawtcp.Listen("127.0.0.1:0", rawtcp.Options{})
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	h := &handler{tb: evloop.NewTable[obj](), done: make(chan int, 16)}
	l, err := evloop.New(0, h)
	if err != nil {
		t.Fatal(err)
	}
	if err := l.Listen(ln); err != nil {
		t.Fatal(err)
	}
	ran := make(chan error, 1)
	go func() { ran <- l.Run() }()
	var clients []net.Conn
	for i := 0; i < 3; i++ {
		c, err := net.Dial("tcp", ln.Addr.String())
		if err != nil {
			t.Fatal(err)
		}
		defer c.Close()
		clients = append(clients, c)
	}
	for i, c := range clients {
		c.Write([]byte("hello"[:i+1]))
		select {
		case n := <-h.done:
			if n < 1 {
				t.Fatalf("client %d: read %d", i, n)
			}
		case <-time.After(20 * time.Second):
			t.Fatalf("client %d: no event", i)
		}
	}
	h.mu.Lock()
	if len(h.accepted) != 3 {
		t.Fatalf("accepted %v", h.accepted)
	}
	h.mu.Unlock()
	l.Unlisten(ln)
	l.Close()
	if err := <-ran; err != nil {
		t.Fatalf("Run after Close: %v", err)
	}
	h.tb.Range(func(fd int, _ *obj) bool { unix.Close(fd); return true })
}

// Timers fire their values once due, in deadline order, and not after
// Cancel.
func TestTimersFireInOrder(t *testing.T) {
	type item struct {
		name string
		tm   wheel.Timer[*item]
	}
	ts := evloop.NewTimers[*item](5*time.Millisecond, 64, time.Now())
	a, b, c := &item{name: "a"}, &item{name: "b"}, &item{name: "c"}
	for _, it := range []*item{a, b, c} {
		it.tm.Value = it
	}
	now := time.Now()
	ts.Schedule(&b.tm, now.Add(40*time.Millisecond))
	ts.Schedule(&a.tm, now.Add(10*time.Millisecond))
	ts.Schedule(&c.tm, now.Add(20*time.Millisecond))
	ts.Cancel(&c.tm)
	if ts.Len() != 2 {
		t.Fatalf("scheduled %d, want 2", ts.Len())
	}
	stop := make(chan struct{})
	fired := make(chan string, 4)
	ticks := 0
	done := make(chan struct{})
	go func() {
		ts.Run(stop, func(v *item, _ time.Time) { fired <- v.name }, func(time.Time) { ticks++ })
		close(done)
	}()
	for _, want := range []string{"a", "b"} {
		select {
		case got := <-fired:
			if got != want {
				t.Fatalf("fired %s, want %s", got, want)
			}
		case <-time.After(20 * time.Second):
			t.Fatalf("%s never fired", want)
		}
	}
	close(stop)
	<-done
	if len(fired) != 0 || ticks == 0 {
		t.Fatalf("extra fires %d, ticks %d", len(fired), ticks)
	}
}
