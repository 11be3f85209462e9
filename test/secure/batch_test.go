package secure_test

import (
	"strings"
	"testing"
	"time"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/pushcluster/push/pkg/grpcauth"
	pushv1 "github.com/pushcluster/push/proto/push/v1"
)

// PublishBatch and PublishBatchStream need the publish scope exactly as
// Publish does, on an edge and on a router; a forwarded request inside a
// backend's batch is refused like a forwarded Publish.
func TestBatchNeedsThePublishScope(t *testing.T) {
	e := newEnv(t)
	s, _ := e.server(t, "edge-1", nil)
	ed := startEdge(t, s)
	rs, _ := e.server(t, "router-1", nil)
	router := startRouter(t, rs, ringOf(t, ed))
	now := time.Now()
	noPublish := token(t, backendSecret, "billing", "presence kick publish_multi", time.Hour, now)
	publish := token(t, backendSecret, "billing", "publish", time.Hour, now)
	batch := func(forwarded bool) *pushv1.PublishBatchRequest {
		return &pushv1.PublishBatchRequest{Requests: []*pushv1.PublishRequest{
			{UserId: "alice", Data: []byte(`1`), RequestId: 1}, {UserId: "bob", Data: []byte(`2`), RequestId: 2, Forwarded: forwarded}}}
	}
	for _, addr := range []struct{ name, addr string }{{"edge", ed.GRPCAddr()}, {"router", router}} {
		pc := func(tok string) pushv1.PushClient {
			return pushv1.NewPushClient(e.dial(t, addr.addr, grpcauth.ClientConfig{Token: tok}))
		}
		_, err := pc(noPublish).PublishBatch(ctxT(t), batch(false))
		if code(err) != codes.PermissionDenied || !strings.Contains(status.Convert(err).Message(), `needs scope "publish"`) {
			t.Errorf("%s: PublishBatch without the publish scope: %v", addr.name, err)
		}
		_, err = pc("").PublishBatch(ctxT(t), batch(false))
		if code(err) != codes.Unauthenticated {
			t.Errorf("%s: PublishBatch without credentials: %v", addr.name, err)
		}
		_, err = pc(publish).PublishBatch(ctxT(t), batch(true))
		if code(err) != codes.PermissionDenied || !strings.Contains(err.Error(), "cluster members") {
			t.Errorf("%s: a forwarded request in a backend's batch: %v", addr.name, err)
		}
		resp, err := pc(publish).PublishBatch(ctxT(t), batch(false))
		if err != nil || len(resp.Responses) != 2 || resp.Responses[0].ErrorCode != 0 || resp.Responses[1].ErrorCode != 0 {
			t.Errorf("%s: PublishBatch with the publish scope: %+v %v", addr.name, resp, err)
		}
	}
	// The stream form, on the edge (the router serves PublishBatch only).
	st, err := pushv1.NewPushClient(e.dial(t, ed.GRPCAddr(), grpcauth.ClientConfig{Token: noPublish})).PublishBatchStream(ctxT(t))
	if err == nil {
		_, err = st.Recv()
	}
	if code(err) != codes.PermissionDenied {
		t.Errorf("PublishBatchStream without the publish scope: %v", err)
	}
	st, err = pushv1.NewPushClient(e.dial(t, ed.GRPCAddr(), grpcauth.ClientConfig{Token: publish})).PublishBatchStream(ctxT(t))
	if err != nil {
		t.Fatal(err)
	}
	if err := st.Send(batch(false)); err != nil {
		t.Fatal(err)
	}
	if m, err := st.Recv(); err != nil || len(m.Responses) != 2 || m.Responses[0].ErrorCode != 0 {
		t.Fatalf("PublishBatchStream with the publish scope: %+v %v", m, err)
	}
	st.Send(batch(true))
	if _, err := st.Recv(); code(err) != codes.PermissionDenied {
		t.Errorf("a forwarded request inside a backend's batch stream: %v", err)
	}
}
