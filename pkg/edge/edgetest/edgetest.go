// Package edgetest runs real edges in-process for tests: an edge.Server on
// a loopback port with its gRPC push.v1.Push service beside it, stopped
// when the test ends.
package edgetest

import (
	"context"
	"fmt"
	"io"
	"log/slog"
	"sync"
	"testing"
	"time"

	"google.golang.org/grpc"

	"github.com/pushcluster/push/pkg/auth"
	"github.com/pushcluster/push/pkg/daemon"
	"github.com/pushcluster/push/pkg/edge"
	"github.com/pushcluster/push/pkg/ring"
)

// Edge is a running edge and its gRPC server.
type Edge struct {
	Srv  *edge.Server
	GRPC *daemon.GRPC
	once sync.Once
}

// Start runs an edge whose tokens are HS256 with secret. Fields of cfg left
// zero get test defaults: a loopback port, no logs, a 20 ms tick and short
// drain and close waits (Verifier is set from secret when nil). opts are
// added to the gRPC server's (grpcauth's TLS and interceptors).
func Start(t testing.TB, secret []byte, cfg edge.Config, opts ...grpc.ServerOption) *Edge {
	t.Helper()
	if cfg.Verifier == nil {
		v, err := auth.NewVerifier(auth.Config{HMACSecret: secret})
		if err != nil {
			t.Fatal(err)
		}
		cfg.Verifier = v
	}
	if cfg.Listen == "" {
		cfg.Listen = "127.0.0.1:0"
	}
	if cfg.Logger == nil {
		cfg.Logger = slog.New(slog.NewTextHandler(io.Discard, nil))
	}
	if cfg.Tick == 0 {
		cfg.Tick = 20 * time.Millisecond
	}
	if cfg.DrainPeriod == 0 {
		cfg.DrainPeriod = 200 * time.Millisecond
	}
	if cfg.CloseTimeout == 0 {
		cfg.CloseTimeout = time.Second
	}
	srv, err := edge.New(cfg)
	if err != nil {
		t.Fatal(err)
	}
	if err := srv.Start(); err != nil {
		t.Fatal(err)
	}
	g, err := daemon.NewGRPC("127.0.0.1:0", 4<<20, opts...)
	if err != nil {
		t.Fatal(err)
	}
	edge.NewService(srv).Register(g.Server)
	go g.Serve()
	e := &Edge{Srv: srv, GRPC: g}
	t.Cleanup(e.Stop)
	return e
}

// WS and GRPCAddr are where clients and backends reach the edge.
func (e *Edge) WS() string       { return e.Srv.Addr().String() }
func (e *Edge) GRPCAddr() string { return e.GRPC.Addr().String() }

// Member is this edge as a ring member with the given id and weight.
func (e *Edge) Member(id uint32, weight int) ring.Member {
	return ring.Member{ID: id, Name: fmt.Sprintf("edge-%d", id), WS: e.WS(), GRPC: e.GRPCAddr(),
		Weight: weight, State: ring.StateActive}
}

// Stop stops the gRPC server and drains the edge; later calls do nothing.
func (e *Edge) Stop() {
	e.once.Do(func() {
		e.GRPC.Server.Stop()
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		e.Srv.Shutdown(ctx)
	})
}
