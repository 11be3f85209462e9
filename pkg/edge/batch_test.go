package edge_test

import (
	"errors"
	"fmt"
	"strings"
	"testing"
	"time"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/pushcluster/push/pkg/edge"
	pushv1 "github.com/pushcluster/push/proto/push/v1"
)

func preq(id uint64, uid, data, key string) *pushv1.PublishRequest {
	return &pushv1.PublishRequest{RequestId: id, UserId: uid, Data: []byte(data), IdempotencyKey: key}
}

// Every request of a batch gets its own answer in request order: bad ones
// fail alone, a user's requests keep their order (and reach its
// connection in one write), a key repeated inside the batch is applied
// once, and a user who is offline gets hers on connect.
func TestPublishBatchAnswersEachRequest(t *testing.T) {
	e := start(t, nil)
	ann := e.dial("ann", "")
	waitFor(t, "registration", func() bool { return e.srv.Presence("ann") == 1 })
	resp, err := e.push.PublishBatch(ctx(t), &pushv1.PublishBatchRequest{Requests: []*pushv1.PublishRequest{
		preq(1, "ann", `1`, ""),
		preq(2, "bad id", `x`, ""),
		preq(3, "bob", `"stored"`, ""),
		preq(4, "ann", ``, ""),
		preq(5, "ann", `2`, "k"),
		preq(6, "ann", `2`, "k"), // the same key again: not applied twice
		preq(7, "ann", `3`, strings.Repeat("k", 65)),
		preq(8, "ann", `4`, ""),
	}})
	if err != nil {
		t.Fatal(err)
	}
	type want struct {
		code    codes.Code
		outcome pushv1.Outcome
		seq     uint64
		dup     bool
	}
	for i, w := range []want{
		{codes.OK, pushv1.Outcome_OUTCOME_DELIVERED, 1, false},
		{codes.InvalidArgument, 0, 0, false},
		{codes.OK, pushv1.Outcome_OUTCOME_STORED, 1, false},
		{codes.InvalidArgument, 0, 0, false},
		{codes.OK, pushv1.Outcome_OUTCOME_DELIVERED, 2, false},
		{codes.OK, pushv1.Outcome_OUTCOME_DELIVERED, 2, true},
		{codes.InvalidArgument, 0, 0, false},
		{codes.OK, pushv1.Outcome_OUTCOME_DELIVERED, 3, false},
	} {
		r := resp.Responses[i]
		if r.RequestId != uint64(i+1) || codes.Code(r.ErrorCode) != w.code || r.Outcome != w.outcome || r.Seq != w.seq || r.Duplicate != w.dup {
			t.Errorf("answer %d: %+v, want %+v", i+1, r, w)
		}
		if w.code == codes.OK && (r.EdgeId != 7 || r.Epoch == "") {
			t.Errorf("answer %d names edge %d epoch %q", i+1, r.EdgeId, r.Epoch)
		}
	}
	for i, data := range []string{"1", "2", "4"} {
		if m := read(t, ann); m.Seq != uint64(i+1) || string(m.Data) != data {
			t.Fatalf("ann's message %d: seq %d data %s, want %s", i+1, m.Seq, m.Data, data)
		}
	}
	if m := read(t, e.dial("bob", "")); m.Seq != 1 || string(m.Data) != `"stored"` {
		t.Fatalf("bob on connect: %+v", m)
	}
}

// A batch over its bounds is refused whole, naming the bound; so is an
// empty one.
func TestPublishBatchBounds(t *testing.T) {
	e := start(t, nil)
	many := make([]*pushv1.PublishRequest, edge.MaxBatchRequests+1)
	for i := range many {
		many[i] = preq(uint64(i), "u", "1", "")
	}
	for _, tc := range []struct {
		name string
		reqs []*pushv1.PublishRequest
		msg  string
	}{
		{"too many", many, "4097 requests, limit 4096"},
		{"empty", nil, "empty batch"},
	} {
		_, err := e.push.PublishBatch(ctx(t), &pushv1.PublishBatchRequest{Requests: tc.reqs})
		if status.Code(err) != codes.InvalidArgument || !strings.Contains(status.Convert(err).Message(), tc.msg) {
			t.Errorf("%s: %v, want INVALID_ARGUMENT naming %q", tc.name, err, tc.msg)
		}
	}
	// Payload over MaxBatchBytes in total (more than the test's gRPC port
	// takes in one message, so through the Go API).
	big := make([]edge.BatchItem, 20)
	for i := range big {
		big[i] = edge.BatchItem{User: "u", Data: make([]byte, edge.MaxBatchBytes/16)}
		big[i].Data[0] = '1'
	}
	_, _, err := e.srv.PublishBatch(ctx(t), big)
	if !errors.Is(err, edge.ErrBatchTooBig) || !strings.Contains(err.Error(), fmt.Sprintf("1310720 bytes of payload, limit %d", edge.MaxBatchBytes)) {
		t.Errorf("too many bytes: %v", err)
	}
	// Nothing of a refused batch was applied.
	r := e.publish("u", "1")
	if r.Seq != 1 {
		t.Fatalf("after the refused batches the first seq is %d", r.Seq)
	}
}

// In a cluster a batch mixes users this edge owns with users another
// owns: those are refused one by one with the owner, the others applied.
func TestPublishBatchMixedOwnership(t *testing.T) {
	st := fileStore(t)
	c := newCluster(t, st, []uint32{1, 2}, []uint32{1, 2}, time.Second)
	all := viewOf(t, []uint32{1, 2}, []uint32{1, 2}, c.nodes)
	mine := userOwnedBy(t, all, all, 1, 1)
	theirs := userOwnedBy(t, all, all, 2, 2)
	c.waitOwner(mine, 1)
	c.waitOwner(theirs, 2)
	ws := c.dial(1, mine, "")
	waitFor(t, "registration", func() bool { return c.nodes[1].Srv.Presence(mine) == 1 })
	resp, err := c.nodes[1].pc.PublishBatch(ctx(t), &pushv1.PublishBatchRequest{Requests: []*pushv1.PublishRequest{
		preq(1, mine, `1`, ""), preq(2, theirs, `1`, ""), preq(3, "bad id", `1`, ""), preq(4, mine, `2`, ""),
	}})
	if err != nil {
		t.Fatal(err)
	}
	r := resp.Responses
	if r[0].ErrorCode != 0 || r[0].Seq != 1 || r[3].ErrorCode != 0 || r[3].Seq != 2 {
		t.Fatalf("owned user: %+v %+v", r[0], r[3])
	}
	if codes.Code(r[1].ErrorCode) != codes.Unavailable || r[1].OwnerId != 2 || r[1].RingVersion != 1 {
		t.Fatalf("user of edge 2: %+v, want UNAVAILABLE naming owner 2 in ring version 1", r[1])
	}
	if codes.Code(r[2].ErrorCode) != codes.InvalidArgument {
		t.Fatalf("bad user id: %+v", r[2])
	}
	for i := uint64(1); i <= 2; i++ {
		if m := readE(t, ws); m.Seq != i {
			t.Fatalf("message %d: %+v", i, m)
		}
	}
}

// A batch that reaches the new owner while the user's stream is still on
// the old one waits for the hand-over and continues the stream in order;
// the old owner refuses the rest of the batch with the new owner. Nothing
// is lost or numbered twice, over PublishBatch and PublishBatchStream.
func TestPublishBatchStraddlesAMove(t *testing.T) {
	st := fileStore(t)
	c := newCluster(t, st, []uint32{1, 2}, []uint32{1}, time.Second)
	uid := userOwnedBy(t, viewOf(t, []uint32{1}, []uint32{1, 2}, c.nodes), viewOf(t, []uint32{1, 2}, []uint32{1, 2}, c.nodes), 1, 2)
	other := userOwnedBy(t, viewOf(t, []uint32{1}, []uint32{1, 2}, c.nodes), viewOf(t, []uint32{1, 2}, []uint32{1, 2}, c.nodes), 1, 1)
	c.waitOwner(uid, 1)
	ws := c.dial(1, uid, "")
	waitFor(t, "registration", func() bool { return c.nodes[1].Srv.Presence(uid) == 1 })
	resp, err := c.nodes[1].pc.PublishBatch(ctx(t), &pushv1.PublishBatchRequest{Requests: []*pushv1.PublishRequest{
		preq(1, uid, `1`, ""), preq(2, uid, `2`, ""),
	}})
	if err != nil || resp.Responses[1].Seq != 2 {
		t.Fatalf("before the move: %+v %v", resp, err)
	}
	epoch := resp.Responses[0].Epoch
	d, _ := st.Load(ctx(t))
	d.Version = 2
	d.Members = append(d.Members, c.nodes[2].Member(2, 1))
	if err := st.CompareAndSwap(ctx(t), 1, d, false); err != nil {
		t.Fatal(err)
	}
	c.waitOwner(uid, 2)
	// The new owner takes the stream over for the batch: same epoch, next seqs.
	bs, err := c.nodes[2].pc.PublishBatchStream(ctx(t))
	if err != nil {
		t.Fatal(err)
	}
	if err := bs.Send(&pushv1.PublishBatchRequest{Requests: []*pushv1.PublishRequest{
		preq(10, uid, `3`, "a"), preq(11, other, `y`, ""), preq(12, uid, `4`, "b"),
	}}); err != nil {
		t.Fatal(err)
	}
	got := map[uint64]*pushv1.PublishResponse{}
	for len(got) < 3 {
		m, err := bs.Recv()
		if err != nil {
			t.Fatal(err)
		}
		for _, r := range m.Responses {
			got[r.RequestId] = r
		}
	}
	if r := got[10]; r.ErrorCode != 0 || r.Epoch != epoch || r.Seq != 3 {
		t.Fatalf("first after the move: %+v, want epoch %s seq 3", r, epoch)
	}
	if r := got[12]; r.ErrorCode != 0 || r.Epoch != epoch || r.Seq != 4 {
		t.Fatalf("second after the move: %+v, want epoch %s seq 4", r, epoch)
	}
	if r := got[11]; codes.Code(r.ErrorCode) != codes.Unavailable || r.OwnerId != 1 {
		t.Fatalf("edge 1's user on edge 2: %+v", r)
	}
	// The old owner still takes its other user but refuses the moved one.
	resp, err = c.nodes[1].pc.PublishBatch(ctx(t), &pushv1.PublishBatchRequest{Requests: []*pushv1.PublishRequest{
		preq(1, other, `x`, ""), preq(2, uid, `x`, ""),
	}})
	if err != nil || resp.Responses[0].ErrorCode != 0 || codes.Code(resp.Responses[1].ErrorCode) != codes.Unavailable || resp.Responses[1].OwnerId != 2 {
		t.Fatalf("old owner: %+v %v", resp, err)
	}
	// A retry of the same batch (the answer was lost) applies nothing twice.
	if err := bs.Send(&pushv1.PublishBatchRequest{Requests: []*pushv1.PublishRequest{preq(20, uid, `3`, "a"), preq(21, uid, `4`, "b")}}); err != nil {
		t.Fatal(err)
	}
	m, err := bs.Recv()
	if err != nil || len(m.Responses) != 2 || !m.Responses[0].Duplicate || !m.Responses[1].Duplicate || m.Responses[1].Seq != 4 {
		t.Fatalf("retried batch: %+v %v", m, err)
	}
	bs.CloseSend()
	for i := uint64(1); i <= 2; i++ {
		if m := readE(t, ws); m.Seq != i {
			t.Fatalf("before the move: %+v", m)
		}
	}
	ws2 := c.dial(2, uid, "&last_seq=2&epoch="+epoch)
	for i := uint64(3); i <= 4; i++ {
		if m := readE(t, ws2); m.Seq != i || m.Epoch != epoch || m.Gap || m.Data != fmt.Sprint(i) {
			t.Fatalf("after the move: %+v, want seq %d epoch %s", m, i, epoch)
		}
	}
}

// A fenced edge refuses every request of a batch (UNAVAILABLE) and applies
// none: once it has rejoined, the user's stream starts afresh.
func TestPublishBatchWhileFenced(t *testing.T) {
	st := &ctlStore{File: fileStore(t)}
	c, uid, ws := pairWithUserOn1(t, st)
	st.freeze(1)
	if _, _, err := ws.Read(ctx(t)); err == nil {
		t.Fatal("the fenced edge's user was not closed")
	}
	waitFor(t, "rejoined", func() bool {
		resp, err := c.nodes[1].pc.PublishBatch(ctx(t), &pushv1.PublishBatchRequest{Requests: []*pushv1.PublishRequest{
			preq(1, uid, `1`, ""), preq(2, uid, `2`, ""),
		}})
		if err != nil {
			t.Fatal(err)
		}
		a, b := resp.Responses[0], resp.Responses[1]
		if codes.Code(a.ErrorCode) != codes.OK || codes.Code(b.ErrorCode) != codes.OK {
			if a.ErrorCode != b.ErrorCode || codes.Code(a.ErrorCode) != codes.Unavailable {
				t.Fatalf("while fenced: %+v %+v, want both UNAVAILABLE", a, b)
			}
			return false
		}
		if a.Seq != 1 || b.Seq != 2 {
			t.Fatalf("rejoined: seqs %d %d, want a new stream from 1", a.Seq, b.Seq)
		}
		return true
	})
}
