package router

import (
	"context"
	"testing"
	"time"

	"github.com/pushcluster/push/pkg/edge"
	"github.com/pushcluster/push/pkg/edge/edgetest"
	"github.com/pushcluster/push/pkg/ring"
	pushv1 "github.com/pushcluster/push/proto/push/v1"
)

// Finding 3 through the router: every request head of edgetest.HeadCases
// gets the answer it gets from an edge directly, whether the router
// refuses it while peeking (the same parser, httphead) or relays the
// edge's answer.
func TestRequestHeadsThroughTheRouter(t *testing.T) {
	r, _ := cluster(t, Config{})
	addr := r.Addr().String()
	tok := token("hc")
	for _, tc := range edgetest.HeadCases() {
		t.Run(tc.Name, func(t *testing.T) { edgetest.CheckHead(t, addr, addr, tok, tc) })
	}
}

// Finding 4 through the router: a half-closed long-poll gets its JSON
// array and a half-closed SSE stream its close event, as on an edge (the
// router passes the client's FIN on and keeps relaying the answer).
func TestHalfClosedPollAndSSEThroughTheRouter(t *testing.T) {
	edges := map[uint32]*testEdge{}
	var ms []ring.Member
	for id := uint32(1); id <= 2; id++ {
		edges[id] = startEdgeWith(t, edge.Config{ID: id, DrainPeriod: time.Millisecond, Loops: 1, PollTimeout: 500 * time.Millisecond})
		ms = append(ms, edges[id].member())
	}
	r := startRouter(t, Config{}, newRing(t, 1, ms...))
	owner := func(uid string) *testEdge { return edges[r.Ring().LookupString(uid)] }
	publish := func(uid, data string) {
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		defer cancel()
		if _, err := owner(uid).push.Publish(ctx, &pushv1.PublishRequest{UserId: uid, Data: []byte(data)}); err != nil {
			t.Fatal(err)
		}
	}
	presence := func(uid string) int { return owner(uid).srv.Presence(uid) }
	edgetest.HalfClosedCases(t, r.Addr().String(), publish, presence, token)
}

// Findings 1 and 2 through the router: the refused frame's remainder is
// discarded by the edge behind the router too, and the close handshake
// completes end to end.
func TestRefusedFramesThroughTheRouter(t *testing.T) {
	r, _ := cluster(t, Config{})
	edgetest.RefusedFrameCases(t, r.Addr().String(), token)
}
