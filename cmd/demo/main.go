// Command demo serves the browser demo page of the push cluster: the
// JavaScript client, a page to connect as any user and publish to any user,
// and (with --dev) a token endpoint. Run `demo --help` for its flags; each
// also reads PUSH_<FLAG> from the environment.
package main

import (
	"context"
	"flag"
	"fmt"
	"time"

	"google.golang.org/grpc"

	"github.com/pushcluster/push/pkg/auth"
	"github.com/pushcluster/push/pkg/client"
	"github.com/pushcluster/push/pkg/daemon"
	"github.com/pushcluster/push/pkg/demo"
	"github.com/pushcluster/push/pkg/flagenv"
	"github.com/pushcluster/push/pkg/grpcauth"
	"github.com/pushcluster/push/pkg/store"
	pushv1 "github.com/pushcluster/push/proto/push/v1"
)

func main() { daemon.Main("demo", run) }

// direct publishes through one push.v1.Push address (an edge, or a
// router's forwarder), for a cluster without a ring store.
type direct struct{ c pushv1.PushClient }

func (d direct) Publish(ctx context.Context, uid string, data []byte, ttl time.Duration) (*pushv1.PublishResponse, error) {
	ctx, cancel := context.WithTimeout(ctx, client.DefaultTimeout)
	defer cancel()
	return d.c.Publish(ctx, &pushv1.PublishRequest{UserId: uid, Data: data, TtlSeconds: uint32((ttl + time.Second - 1) / time.Second)})
}

func run(args []string) error {
	fs := flag.NewFlagSet("demo", flag.ContinueOnError)
	var c demo.Config
	fs.StringVar(&c.Listen, "listen", "127.0.0.1:8000", "HTTP address of the demo page")
	fs.StringVar(&c.WSURL, "ws-url", "ws://127.0.0.1:8080/ws", "WebSocket endpoint the page connects to (the router's, or an edge's)")
	fs.BoolVar(&c.Dev, "dev", false, "development: POST /token mints a token for any user and POST /publish publishes to any user (404 without)")
	fs.DurationVar(&c.TokenTTL, "token-ttl", time.Hour, "lifetime of the tokens --dev mints")
	devPublic := fs.Bool("dev-public", false, "allow --dev on a non-loopback --listen (anyone who reaches it gets tokens for any user)")
	ringURL := fs.String("ring", "", "ring store the SDK follows to publish (file:./ring.json or etcd://host:2379/prefix)")
	grpcAddr := fs.String("push-grpc", "127.0.0.1:9090", "without --ring: push.v1.Push address to publish through (an edge or a router)")
	secretFile := fs.String("jwt-secret-file", "", "file with the HS256 secret tokens are minted with (default: $PUSH_JWT_SECRET)")
	// Credentials toward the edges or the router, and etcd (docs/security.md).
	var creds grpcauth.ClientConfig
	creds.RegisterFlags(fs)
	var etcdSec store.EtcdSecurity
	etcdSec.RegisterFlags(fs)
	var logFlags daemon.LogFlags
	logFlags.Bind(fs)
	flagenv.SetUsage(fs, "PUSH", "demo [flags]", "Serves the push cluster's browser demo page and JavaScript client; with --dev also mints tokens and publishes for the page.")
	if err := daemon.ParseFlags(fs, args); err != nil {
		return err
	}
	log, err := logFlags.Logger()
	if err != nil {
		return err
	}
	c.Logger = log
	if c.Dev && !grpcauth.IsLoopback(c.Listen) && !*devPublic {
		// --dev mints a token for any user and publishes to any user:
		// on a reachable address that is everybody's messages.
		return daemon.Usage(fmt.Errorf("--dev on %s, which is not a loopback address, would mint tokens and publish for anyone who reaches it: listen on 127.0.0.1, or add --dev-public if that is what you want", c.Listen))
	}
	if c.Dev {
		if c.Secret, err = auth.LoadSecret(*secretFile); err != nil {
			return err
		}
	}
	dial, err := creds.DialOptions(log)
	if err != nil {
		return err
	}
	if *ringURL != "" {
		st, err := store.Open(*ringURL, log, store.WithEtcdSecurity(etcdSec))
		if err != nil {
			return err
		}
		defer st.Close()
		ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
		sdk, err := client.New(ctx, st, client.WithLogger(log), client.WithDialOptions(dial...))
		cancel()
		if err != nil {
			return err
		}
		defer sdk.Close()
		c.Publisher = sdk
	} else {
		cc, err := grpc.NewClient(*grpcAddr, dial...)
		if err != nil {
			return fmt.Errorf("--push-grpc %s: %w", *grpcAddr, err)
		}
		defer cc.Close()
		c.Publisher = direct{pushv1.NewPushClient(cc)}
	}
	srv, err := demo.New(c)
	if err != nil {
		return err
	}
	errc := make(chan error, 1)
	go func() { errc <- srv.Serve() }()
	log.Info("demo up", "url", "http://"+srv.Addr().String()+"/", "ws_url", c.WSURL, "dev", c.Dev)
	select {
	case sig := <-daemon.Signal():
		log.Info("shutting down", "signal", sig)
	case err := <-errc:
		return err
	}
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	if err := srv.Shutdown(ctx); err != nil {
		log.Warn("shutdown cut short", "err", err)
	}
	log.Info("demo stopped")
	return nil
}
