package router

import (
	"testing"

	"github.com/pushcluster/push/pkg/edge/edgetest"
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
