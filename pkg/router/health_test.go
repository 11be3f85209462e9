package router

import (
	"context"
	"net"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/pushcluster/push/pkg/daemon"
	"github.com/pushcluster/push/pkg/edge"
	pushv1 "github.com/pushcluster/push/proto/push/v1"
)

// TestGRPCCheckRecoversAfterLongOutage stops a real edge's gRPC server,
// keeps its port closed for several seconds (long enough for a gRPC
// channel's default reconnect backoff, 1 s × 1.6ⁿ ± 20 % up to 120 s, to
// have grown past 3 s), then briefly listens on the port itself to see the
// router's next connection attempt, and right after that attempt starts a
// gRPC server for the same edge on the same port. It asserts that the
// router marks the edge up within Rise × CheckInterval + 1 s, the promise,
// plus 1 s of slack for scheduling on a busy 2-core machine.
//
// Restarting right after an attempt is the worst case for one long-lived
// health-check channel: its next attempt is a whole backoff later (3.3 s
// or more here), and until then every check failed at once on the
// channel's cached TRANSIENT_FAILURE (15–18 s at the default 2 s
// interval). Without the observer the restart would land at a random point
// of the backoff and the old behaviour would pass about half the time.
func TestGRPCCheckRecoversAfterLongOutage(t *testing.T) {
	const (
		interval = 300 * time.Millisecond
		rise     = 2
		fall     = 2
		outage   = 6 * time.Second
	)
	e := startEdge(t, 1)
	grpcAddr := e.GRPCAddr()
	r, err := New(Config{Listen: "127.0.0.1:0", Logger: quiet, Metrics: prometheus.NewRegistry(),
		Check: CheckGRPC, CheckInterval: interval, CheckTimeout: interval, Rise: rise, Fall: fall,
		Loops: 1, Tick: 20 * time.Millisecond})
	if err != nil {
		t.Fatal(err)
	}
	if err := r.SetRing(newRing(t, 1, e.member())); err != nil {
		t.Fatal(err)
	}
	if err := r.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		defer cancel()
		r.Shutdown(ctx)
	})
	// Let a few checks pass so that the checker's connection is up, as in
	// production before an edge restarts.
	time.Sleep(3 * interval)
	if !r.Up(1) {
		t.Fatal("edge 1 is not up while it serves")
	}

	// The edge's gRPC server goes away (its WebSocket side stays: the
	// check is on gRPC only) and its port refuses connections.
	e.GRPC.Server.Stop()
	waitFor(t, "edge 1 marked down", func() bool { return !r.Up(1) })
	time.Sleep(outage)
	if r.Up(1) {
		t.Fatal("edge 1 marked up while its gRPC port is closed")
	}

	// Wait for the router's next attempt on the port (the edge is still not
	// serving: the connection is closed at once) ...
	ln, err := net.Listen("tcp", grpcAddr)
	if err != nil {
		t.Skipf("port %s taken meanwhile: %v", grpcAddr, err)
	}
	ln.(*net.TCPListener).SetDeadline(time.Now().Add(30 * time.Second))
	c, err := ln.Accept()
	if err != nil {
		ln.Close()
		t.Fatalf("the router did not try edge 1's gRPC port: %v", err)
	}
	c.Close()
	ln.Close()

	// ... then the edge's gRPC server comes back on the same port.
	g, err := daemon.NewGRPC(grpcAddr, 4<<20)
	if err != nil {
		t.Fatalf("listen again on %s: %v", grpcAddr, err)
	}
	back := time.Now() // listening: connections are accepted from here on
	pushv1.RegisterPushServer(g.Server, edge.NewService(e.srv))
	go g.Serve()
	t.Cleanup(g.Server.Stop)

	limit := rise*interval + time.Second // what the router promises
	bound := limit + time.Second         // slack for a busy machine
	for !r.Up(1) {
		if time.Since(back) > bound {
			t.Fatalf("edge 1 still down %v after its gRPC server came back (rise %d × interval %v + 1 s = %v; bound with slack %v)",
				time.Since(back).Round(time.Millisecond), rise, interval, limit, bound)
		}
		time.Sleep(5 * time.Millisecond)
	}
	t.Logf("edge 1 up %v after its gRPC server came back (promise %v)", time.Since(back).Round(time.Millisecond), limit)
}
