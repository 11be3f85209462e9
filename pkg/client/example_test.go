package client_test

import (
	"context"
	"fmt"
	"log"
	"net"
	"os"
	"path/filepath"
	"strings"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"

	"github.com/pushcluster/push/pkg/client"
	"github.com/pushcluster/push/pkg/owner"
	"github.com/pushcluster/push/pkg/ring"
	"github.com/pushcluster/push/pkg/store"
	pushv1 "github.com/pushcluster/push/proto/push/v1"
)

// exampleCluster starts one in-process stand-in for an edge (ring id 1,
// answering like one) and a file store in a temporary directory naming
// it, with the edge's lease; stop tears them down.
func exampleCluster() (st store.Store, stop func()) {
	e := newFake(1)
	if err := e.start(); err != nil {
		log.Fatal(err)
	}
	dir, err := os.MkdirTemp("", "ring")
	if err != nil {
		log.Fatal(err)
	}
	fs, err := store.OpenFile(filepath.Join(dir, "ring.json"), quiet())
	if err != nil {
		log.Fatal(err)
	}
	doc := &ring.Document{Version: 1, Members: []ring.Member{
		{ID: 1, Name: "edge-1", WS: e.addr, GRPC: e.addr, Weight: 1},
	}}
	if err := fs.CompareAndSwap(context.Background(), 0, doc, false); err != nil {
		log.Fatal(err)
	}
	// What an edge does when it starts: take its lease.
	lease, err := fs.Register(context.Background(), 1, store.DefaultLeaseTTL, owner.Live{})
	if err != nil {
		log.Fatal(err)
	}
	return fs, func() { lease.Close(); fs.Close(); e.stop(); os.RemoveAll(dir) }
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
	fmt.Println(r.Outcome, "epoch", r.Epoch, "seq", r.Seq, "on edge", r.EdgeId, "of ring version", c.View().Version())
	// Output: OUTCOME_STORED epoch e1 seq 1 on edge 1 of ring version 1
}

// A process that already follows the store (the router, an edge) shares
// its Follower, so that it reads the store once and decides ownership from
// one view.
func ExampleNewWithFollower() {
	st, stop := exampleCluster()
	defer stop()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()

	f, err := store.Follow(ctx, st, store.FollowOptions{Log: quiet()})
	if err != nil {
		log.Fatal(err)
	}
	defer f.Close() // after the Client: deferred calls run last in, first out
	c := client.NewWithFollower(f, client.WithLogger(quiet()))
	defer c.Close()

	id, _ := f.View().Owner("alice")
	r, err := c.Publish(ctx, "alice", []byte(`"hi"`), 0)
	if err != nil {
		log.Fatal(err)
	}
	fmt.Println("owner", id, "answered by edge", r.EdgeId)
	// Output: owner 1 answered by edge 1
}

// A backend that retries a message itself (after the SDK gave up, or after
// a restart) sets the idempotency key, so the message is applied once.
func ExampleWithIdempotencyKey() {
	st, stop := exampleCluster()
	defer stop()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	c, err := client.New(ctx, st, client.WithLogger(quiet()))
	if err != nil {
		log.Fatal(err)
	}
	defer c.Close()

	// One key per logical message, e.g. derived from the backend's own id.
	kctx := client.WithIdempotencyKey(ctx, "order-1234-shipped")
	for range 2 {
		r, err := c.Publish(kctx, "alice", []byte(`{"order":1234}`), 0)
		if err != nil {
			log.Fatal(err)
		}
		fmt.Println("epoch", r.Epoch, "seq", r.Seq, "duplicate", r.Duplicate)
	}
	// Output:
	// epoch e1 seq 1 duplicate false
	// epoch e1 seq 1 duplicate true
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

	r, err := c.PublishMulti(ctx, []string{"bob", "alice", "carol"}, []byte(`"news"`), 0)
	if err != nil {
		log.Fatal(err)
	}
	for _, res := range r.Results { // in request order
		fmt.Println(res.UserId, res.Outcome, res.Epoch, res.Seq)
	}
	// Output:
	// bob OUTCOME_STORED e1 1
	// alice OUTCOME_STORED e1 1
	// carol OUTCOME_STORED e1 1
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
	c, err := client.New(ctx, st, client.WithLogger(quiet()), client.WithForwardTimeout(2*time.Second))
	if err != nil {
		log.Fatal(err)
	}
	defer c.Close()

	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		log.Fatal(err)
	}
	g := grpc.NewServer()
	pushv1.RegisterPushServer(g, c.Server())
	go g.Serve(ln)
	defer g.Stop()

	// A backend without the SDK talks to the forwarder, with its own
	// idempotency key so that its retries are applied once.
	cc, err := grpc.NewClient(ln.Addr().String(), grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		log.Fatal(err)
	}
	defer cc.Close()
	req := &pushv1.PublishRequest{UserId: "dave", Data: []byte("hi"), IdempotencyKey: "msg-77"}
	for range 2 {
		r, err := pushv1.NewPushClient(cc).Publish(ctx, req)
		if err != nil {
			log.Fatal(err)
		}
		fmt.Println(strings.TrimPrefix(r.Outcome.String(), "OUTCOME_"), "on edge", r.EdgeId, "epoch", r.Epoch, "seq", r.Seq, "duplicate", r.Duplicate)
	}
	// Output:
	// STORED on edge 1 epoch e1 seq 1 duplicate false
	// STORED on edge 1 epoch e1 seq 1 duplicate true
}
