package client_test

import (
	"context"
	"fmt"
	"io"
	"log"
	"log/slog"
	"os"
	"path/filepath"
	"strings"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"

	"github.com/pushcluster/push/pkg/auth"
	"github.com/pushcluster/push/pkg/client"
	"github.com/pushcluster/push/pkg/daemon"
	"github.com/pushcluster/push/pkg/edge"
	"github.com/pushcluster/push/pkg/ring"
	"github.com/pushcluster/push/pkg/store"
	pushv1 "github.com/pushcluster/push/proto/push/v1"
)

var secret = []byte("client-test-secret-client-test-secret-01")

func quiet() *slog.Logger { return slog.New(slog.NewTextHandler(io.Discard, nil)) }

// testEdge is a real edge: the WebSocket server and its gRPC service.
type testEdge struct {
	id       uint32
	srv      *edge.Server
	g        *daemon.GRPC
	ws, grpc string
}

// startEdge runs a real edge with the given ring id, as cmd/edge does,
// until the returned stop is called.
func startEdge(id uint32) (*testEdge, func(), error) {
	v, err := auth.NewVerifier(auth.Config{HMACSecret: secret})
	if err != nil {
		return nil, nil, err
	}
	srv, err := edge.New(edge.Config{ID: id, Listen: "127.0.0.1:0", Verifier: v, Loops: 1,
		Logger: quiet(), DrainPeriod: time.Millisecond, CloseTimeout: 100 * time.Millisecond})
	if err != nil {
		return nil, nil, err
	}
	if err := srv.Start(); err != nil {
		return nil, nil, err
	}
	g, err := daemon.NewGRPC("127.0.0.1:0", 1<<20)
	if err != nil {
		return nil, nil, err
	}
	pushv1.RegisterPushServer(g.Server, edge.NewService(srv))
	go g.Serve()
	e := &testEdge{id: id, srv: srv, g: g, ws: srv.Addr().String(), grpc: g.Addr().String()}
	return e, func() {
		g.Server.Stop()
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		srv.Shutdown(ctx)
	}, nil
}

// exampleCluster starts one in-process edge (ring id 1) and a file store
// in a temporary directory naming it; stop tears both down.
func exampleCluster() (st store.Store, stop func()) {
	e, stopEdge, err := startEdge(1)
	if err != nil {
		log.Fatal(err)
	}
	dir, err := os.MkdirTemp("", "ring")
	if err != nil {
		log.Fatal(err)
	}
	st, err = store.Open("file:"+filepath.Join(dir, "ring.json"), quiet())
	if err != nil {
		log.Fatal(err)
	}
	doc := &ring.Document{Version: 1, Members: []ring.Member{
		{ID: 1, Name: "edge-1", WS: e.ws, GRPC: e.grpc, Weight: 1},
	}}
	if err := st.CompareAndSwap(context.Background(), 0, doc, false); err != nil {
		log.Fatal(err)
	}
	return st, func() { st.Close(); stopEdge(); os.RemoveAll(dir) }
}

// A backend follows the ring store and publishes straight to the edge that
// owns the user.
func Example() {
	st, stop := exampleCluster()
	defer stop()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()

	c, err := client.New(ctx, st, client.WithLogger(quiet()))
	if err != nil {
		log.Fatal(err)
	}
	defer c.Close()

	// alice is not connected: the owner keeps the message for her.
	r, err := c.Publish(ctx, "alice", []byte(`{"text":"hello"}`), time.Minute)
	if err != nil {
		log.Fatal(err)
	}
	fmt.Println(r.Outcome, "seq", r.Seq, "on edge", r.EdgeId, "of ring version", c.Ring().Version())
	// Output: OUTCOME_STORED seq 1 on edge 1 of ring version 1
}

func ExampleClient_PublishMulti() {
	st, stop := exampleCluster()
	defer stop()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	c, err := client.New(ctx, st, client.WithLogger(quiet()))
	if err != nil {
		log.Fatal(err)
	}
	defer c.Close()

	r, err := c.PublishMulti(ctx, []string{"bob", "alice", "bob"}, []byte(`"news"`), 0)
	if err != nil {
		log.Fatal(err)
	}
	for _, res := range r.Results { // in request order
		fmt.Println(res.UserId, res.Outcome, res.Seq)
	}
	// Output:
	// bob OUTCOME_STORED 1
	// alice OUTCOME_STORED 1
	// bob OUTCOME_STORED 2
}

func ExampleClient_Broadcast() {
	st, stop := exampleCluster()
	defer stop()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	c, err := client.New(ctx, st, client.WithLogger(quiet()))
	if err != nil {
		log.Fatal(err)
	}
	defer c.Close()

	r, err := c.Broadcast(ctx, []byte(`"maintenance at 10:00"`))
	if err != nil {
		log.Fatal(err)
	}
	fmt.Printf("%d connections on %d edges\n", r.Connections, r.Edges)
	// Output: 0 connections on 1 edges
}

func ExampleClient_Presence() {
	st, stop := exampleCluster()
	defer stop()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	c, err := client.New(ctx, st, client.WithLogger(quiet()))
	if err != nil {
		log.Fatal(err)
	}
	defer c.Close()

	// Bad input is refused locally with INVALID_ARGUMENT.
	_, err = c.Presence(ctx, []string{"carol", "not valid"})
	fmt.Println(err)
	r, err := c.Presence(ctx, []string{"carol"})
	if err != nil {
		log.Fatal(err)
	}
	fmt.Println(r.Users[0].UserId, "online:", r.Users[0].Online)
	// Output:
	// rpc error: code = InvalidArgument desc = invalid user id: "not valid" (1-128 of A-Z a-z 0-9 - . _ ~ : @)
	// carol online: false
}

// The router serves Server() for backends that speak plain gRPC.
func ExampleClient_Server() {
	st, stop := exampleCluster()
	defer stop()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	c, err := client.New(ctx, st, client.WithLogger(quiet()))
	if err != nil {
		log.Fatal(err)
	}
	defer c.Close()

	g, err := daemon.NewGRPC("127.0.0.1:0", 1<<20)
	if err != nil {
		log.Fatal(err)
	}
	pushv1.RegisterPushServer(g.Server, c.Server())
	go g.Serve()
	defer g.Server.Stop()

	// A backend without the SDK talks to the forwarder.
	cc, err := grpc.NewClient(g.Addr().String(), grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		log.Fatal(err)
	}
	defer cc.Close()
	r, err := pushv1.NewPushClient(cc).Publish(ctx, &pushv1.PublishRequest{UserId: "dave", Data: []byte("hi")})
	if err != nil {
		log.Fatal(err)
	}
	fmt.Println(strings.TrimPrefix(r.Outcome.String(), "OUTCOME_"), "on edge", r.EdgeId)
	// Output: STORED on edge 1
}
