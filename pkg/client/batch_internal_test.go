package client

import (
	"context"
	"sync"
	"testing"
	"time"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	pushv1 "github.com/pushcluster/push/proto/push/v1"
)

// recTransport records the batches a pubStream sends and answers each
// request at once (seq = its position in everything sent).
type recTransport struct {
	mu      sync.Mutex
	batches [][]string // user ids per batch
	at      []time.Time
	sent    int
	answers chan []*pushv1.PublishResponse
}

func newRecTransport() *recTransport {
	return &recTransport{answers: make(chan []*pushv1.PublishResponse, 1024)}
}

func (t *recTransport) send(reqs []*pushv1.PublishRequest) error {
	t.mu.Lock()
	defer t.mu.Unlock()
	var uids []string
	var out []*pushv1.PublishResponse
	for _, r := range reqs {
		uids = append(uids, r.UserId)
		t.sent++
		resp := &pushv1.PublishResponse{RequestId: r.RequestId, Seq: uint64(t.sent), Reason: r.UserId}
		if r.UserId == "refused" {
			resp = &pushv1.PublishResponse{RequestId: r.RequestId, ErrorCode: uint32(codes.Unavailable), Error: "not the owner", OwnerId: 9}
		}
		out = append(out, resp)
	}
	t.batches = append(t.batches, uids)
	t.at = append(t.at, time.Now())
	t.answers <- out
	return nil
}

func (t *recTransport) recv() ([]*pushv1.PublishResponse, error) { return <-t.answers, nil }

func (t *recTransport) sizes() []int {
	t.mu.Lock()
	defer t.mu.Unlock()
	var n []int
	for _, b := range t.batches {
		n = append(n, len(b))
	}
	return n
}

// newTestStream is a pubStream over tr whose sender starts only when
// start is called, so that requests can be queued first.
func newTestStream(tr streamTransport, cfg batchConfig) (s *pubStream, start func()) {
	s = &pubStream{stream: tr, batch: true, cfg: cfg, cancel: func() {}, sendq: make(chan streamReq, 64),
		dead: make(chan struct{}), pending: map[uint64]chan *pushv1.PublishResponse{}}
	go s.receive()
	return s, func() { go s.send() }
}

type answer struct {
	resp  *pushv1.PublishResponse
	named uint32
	err   error
}

// queue starts a publish for each user and waits until all are queued.
func queue(t *testing.T, s *pubStream, ctxs []context.Context, uids []string) []chan answer {
	out := make([]chan answer, len(uids))
	for i, uid := range uids {
		out[i] = make(chan answer, 1)
		go func() {
			r, named, err := s.publish(ctxs[i], &pushv1.PublishRequest{UserId: uid, Data: []byte("x")})
			out[i] <- answer{r, named, err}
		}()
		// One at a time, so the queue holds them in this order.
		deadline := time.Now().Add(10 * time.Second)
		for len(s.sendq) != i+1 {
			if time.Now().After(deadline) {
				t.Fatalf("request %d never queued", i)
			}
			time.Sleep(time.Millisecond)
		}
	}
	return out
}

func bg(n int) []context.Context {
	out := make([]context.Context, n)
	for i := range out {
		out[i] = context.Background()
	}
	return out
}

// With linger 0 the sender sends what is queued at once, in batches of at
// most maxItems; every call gets its own answer.
func TestBatchLingerZeroAndSizeFlush(t *testing.T) {
	tr := newRecTransport()
	s, start := newTestStream(tr, batchConfig{maxItems: 4, maxBytes: 1 << 20, linger: 0})
	uids := []string{"a", "b", "c", "d", "e", "f", "g", "h", "i", "j"}
	answers := queue(t, s, bg(len(uids)), uids)
	start()
	for i, ch := range answers {
		a := <-ch
		if a.err != nil || a.resp.Reason != uids[i] || a.resp.Seq != uint64(i+1) {
			t.Fatalf("call %d (%s): %+v %v", i, uids[i], a.resp, a.err)
		}
	}
	if got := tr.sizes(); len(got) != 3 || got[0] != 4 || got[1] != 4 || got[2] != 2 {
		t.Fatalf("batches %v, want [4 4 2]", got)
	}
}

// A full batch goes without waiting for the linger; one that is not full
// and follows another within the linger waits for the rest of it, and one
// after a quiet spell goes at once. A batch over maxBytes is cut before
// the request that would overflow it.
func TestBatchLingerAndBytes(t *testing.T) {
	tr := newRecTransport()
	const linger = 200 * time.Millisecond
	s, start := newTestStream(tr, batchConfig{maxItems: 3, maxBytes: 1 << 20, linger: linger})
	answers := queue(t, s, bg(4), []string{"a", "b", "c", "d"})
	begin := time.Now()
	start()
	for _, ch := range answers {
		if a := <-ch; a.err != nil {
			t.Fatal(a.err)
		}
	}
	if got := tr.sizes(); len(got) != 2 || got[0] != 3 || got[1] != 1 {
		t.Fatalf("batches %v, want [3 1]", got)
	}
	if waited := tr.at[1].Sub(tr.at[0]); waited < linger {
		t.Fatalf("the lone request went %v after the full batch, before the linger of %v", waited, linger)
	}
	if waited := tr.at[0].Sub(begin); waited >= linger {
		t.Fatalf("the first batch (full, after a quiet spell) waited %v", waited)
	}
	// After a quiet spell longer than the linger a lone request leaves at
	// once, not a linger after it was queued.
	time.Sleep(linger)
	queued := time.Now()
	if _, _, err := s.publish(context.Background(), &pushv1.PublishRequest{UserId: "e", Data: []byte("x")}); err != nil {
		t.Fatal(err)
	}
	tr.mu.Lock()
	waited := tr.at[2].Sub(queued)
	tr.mu.Unlock()
	if waited >= linger {
		t.Fatalf("a lone request after a quiet spell waited %v, the whole linger", waited)
	}

	tr = newRecTransport()
	s, start = newTestStream(tr, batchConfig{maxItems: 100, maxBytes: 2, linger: 0})
	answers = queue(t, s, bg(5), []string{"a", "b", "c", "d", "e"}) // 1 byte each
	start()
	for _, ch := range answers {
		if a := <-ch; a.err != nil {
			t.Fatal(a.err)
		}
	}
	if got := tr.sizes(); len(got) != 3 || got[0] != 2 || got[1] != 2 || got[2] != 1 {
		t.Fatalf("batches %v, want [2 2 1] with 2 bytes a batch", got)
	}
}

// A call whose context ends while it is queued is left out of its batch
// and gets its context's error; the others in the batch are answered, a
// not-owner answer with the owner it names.
func TestBatchCancelledCallLeftOut(t *testing.T) {
	tr := newRecTransport()
	s, start := newTestStream(tr, batchConfig{maxItems: 10, maxBytes: 1 << 20, linger: 0})
	ctxs := bg(3)
	cctx, cancel := context.WithCancel(context.Background())
	ctxs[1] = cctx
	answers := queue(t, s, ctxs, []string{"a", "gone", "refused"})
	cancel()
	if a := <-answers[1]; status.Code(a.err) != codes.Canceled {
		t.Fatalf("cancelled call: %+v %v", a.resp, a.err)
	}
	start()
	if a := <-answers[0]; a.err != nil || a.resp.Reason != "a" {
		t.Fatalf("first call: %+v %v", a.resp, a.err)
	}
	if a := <-answers[2]; status.Code(a.err) != codes.Unavailable || a.named != 9 {
		t.Fatalf("refused call: %+v %d %v, want UNAVAILABLE naming 9", a.resp, a.named, a.err)
	}
	if got := tr.batches; len(got) != 1 || len(got[0]) != 2 || got[0][0] != "a" || got[0][1] != "refused" {
		t.Fatalf("batches %v, want one of a and refused", got)
	}
}

func TestBatchOptions(t *testing.T) {
	for _, tc := range []struct {
		opts   []Option
		size   int
		linger time.Duration
	}{
		{nil, DefaultBatchSize, DefaultBatchLinger},
		{[]Option{WithBatchSize(0), WithBatchLinger(-1)}, DefaultBatchSize, DefaultBatchLinger},
		{[]Option{WithBatchSize(1), WithBatchLinger(0)}, 1, 0},
		{[]Option{WithBatchSize(1 << 20), WithBatchLinger(time.Second)}, MaxBatchSize, MaxBatchLinger},
		{[]Option{WithBatchSize(32), WithBatchLinger(300 * time.Microsecond)}, 32, 300 * time.Microsecond},
	} {
		o := makeOptions(tc.opts)
		if o.batchSize != tc.size || o.linger != tc.linger {
			t.Errorf("options %d: size %d linger %v, want %d %v", len(tc.opts), o.batchSize, o.linger, tc.size, tc.linger)
		}
	}
}
