// Command router is the cluster's stateless front door: it peeks at each
// browser's HTTP request head, finds the user's owner and relays the
// connection to that edge on epoll, and forwards push.v1.Push calls for
// backends that do not embed the SDK. Run `router --help` for its flags;
// each also reads PUSH_<FLAG> from the environment. Exit codes: 0 drained
// after a signal, 1 failed, 2 bad flags.
//
// Ownership: the router follows the ring store through one store.Follower
// (the ring document and the edges' leases, the inputs edges and SDKs use
// too). The relay routes each user to the view's owner (a failed dial goes
// to the view's next owner) and the gRPC forwarder's SDK shares the same
// Follower, so browsers and backends reach the same edge. The health check
// (--check) is for operators only: /metrics, logs.
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"log/slog"
	"net/http"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/pushcluster/push/pkg/admin"
	"github.com/pushcluster/push/pkg/client"
	"github.com/pushcluster/push/pkg/console"
	"github.com/pushcluster/push/pkg/daemon"
	"github.com/pushcluster/push/pkg/flagenv"
	"github.com/pushcluster/push/pkg/grpcauth"
	"github.com/pushcluster/push/pkg/rawtcp"
	"github.com/pushcluster/push/pkg/router"
	"github.com/pushcluster/push/pkg/store"
	pushv1 "github.com/pushcluster/push/proto/push/v1"
)

func main() { daemon.Main("router", run) }

func run(args []string) error {
	var o router.Options
	var sec daemon.Security
	fs := flag.NewFlagSet("router", flag.ContinueOnError)
	o.BindFlags(fs)
	sec.BindFlags(fs)
	flagenv.SetUsage(fs, "PUSH", "router [flags]", "Routes browser WebSockets to the edge that owns the user (the ring store's view: ring document and edge leases) and relays the bytes on epoll; forwards push.v1.Push calls to the owning edges.\n\n"+
		"Exit codes: 0 drained after SIGTERM/SIGINT, 1 failed, 2 bad flags or arguments.")
	if err := daemon.ParseFlags(fs, args); err != nil {
		return err
	}
	log, err := o.Log.Logger()
	if err != nil {
		return err
	}
	if err := o.Resolve(); err != nil {
		return err
	}
	c := &o.Config
	c.Logger = log
	reg := admin.NewRegistry()
	c.Metrics = reg
	gauth, err := grpcauth.NewServer(sec.GRPC, "router", log, reg)
	if err != nil {
		return err
	}
	if err := gauth.CheckListen(o.GRPC, c.Dev); err != nil {
		return err
	}
	c.ClusterDial = gauth.ClusterDialOptions()
	soft, hard := rawtcp.FDLimit()
	log.Info("file descriptor limit", "soft", soft, "hard", hard, "relayed_connections_max", soft/2)
	if w := rawtcp.BacklogWarning(c.Backlog); w != "" {
		log.Warn(w)
	}

	st, err := store.Open(o.Ring, log, store.WithEtcdSecurity(sec.Etcd))
	if err != nil {
		return err
	}
	defer st.Close()
	rt, err := router.New(*c)
	if errors.Is(err, router.ErrConfig) {
		return daemon.Usage(err)
	}
	if err != nil {
		return err
	}
	// One Follower for the relay and the forwarder: the ring document and
	// the edges' leases, the view edges and SDKs take ownership from.
	ctx, cancel := context.WithTimeout(context.Background(), o.RingWait)
	f, err := store.Follow(ctx, st, store.FollowOptions{Grace: 2 * o.LeaseTTL, Log: log})
	cancel()
	if err != nil {
		return fmt.Errorf("--ring %s (waited --ring-wait %v): %w", o.Ring, o.RingWait, err)
	}
	defer f.Close() // after the SDK's Close and the router's Shutdown
	rt.Follow(f)
	// The forwarder checks each caller (scope, limits) and calls the edges
	// as a member, marking its calls forwarded (docs/security.md).
	sdk := client.NewWithFollower(f, client.WithLogger(log), client.WithDialOptions(c.ClusterDial...), client.WithForwarded())
	defer sdk.Close()
	return serve(&o, rt, sdk, f, reg, gauth, sec.Admin, log)
}

// serve runs the router until a signal, then drains it.
func serve(o *router.Options, rt *router.Router, sdk *client.Client, f *store.Follower, reg *prometheus.Registry, gauth *grpcauth.Server, adminAuth admin.Auth, log *slog.Logger) error {
	c := &o.Config
	// Room for the largest payload an edge can be set to accept (its
	// --max-payload-bytes, at most 16 MiB): the edge decides.
	g, err := daemon.NewGRPC(o.GRPC, 16<<20+64<<10, gauth.ServerOptions()...)
	if err != nil {
		return err
	}
	pushv1.RegisterPushServer(g.Server, sdk.Server())
	adminToken, err := adminAuth.Current()
	if err != nil {
		return err
	}
	var open map[string]http.Handler
	if o.Console {
		cons, err := console.New(console.Config{Follower: f, TokenSource: adminAuth.Current, Sessions: rt.Sessions, Logger: log, Dial: c.ClusterDial})
		if err != nil {
			return err
		}
		open = cons.Routes() // readable; its ring changes check the admin token themselves
	}
	adm, err := admin.New(admin.Config{Addr: o.Admin, Registry: reg, Ready: rt.Ready, Logger: log, Open: open, Auth: adminAuth})
	if err != nil {
		return err
	}
	if err := rt.Start(); err != nil {
		return err
	}
	go func() {
		if err := g.Serve(); err != nil {
			log.Error("grpc serve", "err", err)
		}
	}()
	go func() {
		if err := adm.Serve(); err != nil {
			log.Error("admin serve", "err", err)
		}
	}()
	v := rt.View()
	log.Info("router up", "listen", rt.Addr().String(), "tls", c.TLSListen, "grpc", g.Addr().String(),
		"admin", adm.Addr().String(), "console", o.Console, "admin_token", adminToken != "", "grpc_tls", gauth.TLS(), "grpc_open", gauth.Open(), "ring_version", v.Version(), "liveness", v.HasLiveness(), "hash_key", c.HashKey)

	sig := daemon.WaitForSignal()
	log.Info("shutting down", "signal", sig, "drain_period", c.DrainPeriod.String())
	sctx, scancel := context.WithTimeout(context.Background(), c.DrainPeriod+5*time.Second)
	defer scancel()
	if err := rt.Shutdown(sctx); err != nil {
		log.Warn("drain cut short", "err", err)
	}
	g.Stop(sctx)
	adm.Shutdown(sctx)
	log.Info("router stopped")
	return nil
}
