package evloop

import (
	"testing"

	"github.com/pushcluster/push/pkg/poller"
	"github.com/pushcluster/push/pkg/rawtcp"
)

type countHandler struct {
	tb *Table[int]
	n  int
}

func (h *countHandler) Accept(*Loop, *rawtcp.Listener, int) {}
func (h *countHandler) AcceptError(error, bool)             {}
func (h *countHandler) Event(fd int, tag uint32, ev poller.Event) {
	if h.tb.Load(fd) != nil {
		h.n++
	}
}

// Dispatching an event and looking its descriptor up allocates nothing.
func TestEventDispatchAllocatesNothing(t *testing.T) {
	h := &countHandler{tb: NewTableSize[int](64)}
	l, err := New(0, h)
	if err != nil {
		t.Fatal(err)
	}
	defer l.Release()
	v := 1
	h.tb.Store(7, &v)
	if a := testing.AllocsPerRun(1000, func() { l.onEvent(7, 3, poller.Read) }); a != 0 {
		t.Fatalf("%v allocations per event", a)
	}
	if h.n == 0 {
		t.Fatal("the handler never saw the event")
	}
}
