package client_test

import (
	"context"
	"sync"
	"testing"
	"time"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/pushcluster/push/pkg/client"
)

// Concurrent publishes to a cluster go in batches per edge, and each call
// still gets its own answer: users of either edge, one whose edge says it
// is not the owner (re-sent to the owner it names), an invalid id refused
// locally, and a call whose deadline passes while its edge hangs.
func TestBatchedPublishesAnswerEachCall(t *testing.T) {
	cl := newCluster(t, 2)
	c := cl.client(client.WithBatchLinger(time.Millisecond), client.WithBatchSize(16))
	v := c.View()
	u1, u2 := userOwnedBy(t, v, 1), userOwnedBy(t, v, 2)
	moved := userOwnedBy(t, v, 1, u1) // edge 1 says edge 2 owns it now
	hung := userOwnedBy(t, v, 2, u2)
	cl.edges[1].set(func(e *fakeEdge) { e.echoUser = true; e.refuse[moved] = 2 })
	cl.edges[2].set(func(e *fakeEdge) { e.echoUser = true; e.hang[hung] = true })
	type want struct {
		uid  string
		edge uint32
		code codes.Code
	}
	var calls []want
	for range 10 {
		calls = append(calls, want{u1, 1, codes.OK}, want{u2, 2, codes.OK})
	}
	calls = append(calls, want{moved, 2, codes.OK}, want{"bad id", 0, codes.InvalidArgument}, want{hung, 0, codes.DeadlineExceeded})
	var wg sync.WaitGroup
	for i, w := range calls {
		wg.Go(func() {
			cx, cancel := context.WithTimeout(ctx(t), 5*time.Second)
			if w.uid == hung {
				cx, cancel = context.WithTimeout(ctx(t), 200*time.Millisecond)
			}
			defer cancel()
			r, err := c.Publish(cx, w.uid, []byte(`1`), 0)
			if status.Code(err) != w.code {
				t.Errorf("call %d to %s: %v, want %v", i, w.uid, err, w.code)
				return
			}
			if err == nil && (r.Reason != w.uid || r.EdgeId != w.edge || r.RequestId != 0) {
				t.Errorf("call %d to %s: answer %+v, want edge %d's for this user", i, w.uid, r, w.edge)
			}
		})
	}
	wg.Wait()
	// Every request reached its edge in a PublishBatchStream message.
	for id, e := range cl.edges {
		e.mu.Lock()
		sent := 0
		for _, n := range e.batches {
			sent += n
		}
		e.mu.Unlock()
		if got := len(e.seen("Stream")); got != sent || sent == 0 {
			t.Errorf("edge %d: %d requests served, %d sent in batches", id, got, sent)
		}
	}
	if seq := cl.edges[1].seen("Stream"); len(seq) < 11 {
		t.Errorf("edge 1 saw %d publishes, want 10 and the moved user's", len(seq))
	}
}

// An edge without PublishBatchStream gets the calls over PublishStream.
func TestBatchFallsBackToPublishStream(t *testing.T) {
	cl := newCluster(t, 1)
	cl.edges[1].set(func(e *fakeEdge) { e.noBatch = true })
	c := cl.client()
	for i := range 3 {
		if _, err := c.Publish(ctx(t), userOwnedBy(t, c.View(), 1), []byte(`1`), 0); err != nil {
			t.Fatalf("publish %d: %v", i, err)
		}
	}
	if n := len(cl.edges[1].seen("Stream")); n != 3 {
		t.Fatalf("%d publishes on PublishStream, want 3", n)
	}
}

// A payload too large for the edge's gRPC messages fails alone, at once
// and with the edge's answer (RESOURCE_EXHAUSTED): it goes as a unary call,
// not on the batch stream, where the edge's transport would end the stream
// and with it every other call in flight (they failed as UNAVAILABLE and
// the large one only at its deadline).
func TestOversizedPayloadFailsAlone(t *testing.T) {
	cl := newCluster(t, 1)
	c := cl.client(client.WithBatchLinger(time.Millisecond))
	u := userOwnedBy(t, c.View(), 1)
	huge := make([]byte, 2*maxFakePayload+1024)
	var wg sync.WaitGroup
	for i := range 40 {
		wg.Go(func() {
			cx, cancel := context.WithTimeout(ctx(t), 5*time.Second)
			defer cancel()
			if i%8 == 0 {
				start := time.Now()
				_, err := c.Publish(cx, u, huge, 0)
				if status.Code(err) != codes.ResourceExhausted {
					t.Errorf("call %d (%d bytes): %v, want RESOURCE_EXHAUSTED", i, len(huge), err)
				}
				if d := time.Since(start); d > 3*time.Second {
					t.Errorf("call %d (%d bytes) took %v", i, len(huge), d)
				}
				return
			}
			if _, err := c.Publish(cx, u, []byte(`1`), 0); err != nil {
				t.Errorf("call %d beside the oversized ones: %v", i, err)
			}
		})
	}
	wg.Wait()
}
