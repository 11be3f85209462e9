// Command router is the cluster's stateless front door: it peeks at each
// browser's HTTP request head, finds the user's owner and relays the
// connection to that edge on epoll, and forwards push.v1.Push calls for
// backends that do not embed the SDK. Run `router --help` for its flags;
// each also reads PUSH_<FLAG> from the environment.
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
	"crypto/tls"
	"errors"
	"flag"
	"fmt"
	"net/netip"
	"strings"
	"time"

	"github.com/pushcluster/push/pkg/admin"
	"github.com/pushcluster/push/pkg/client"
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
	fs := flag.NewFlagSet("router", flag.ContinueOnError)
	var c router.Config
	fs.StringVar(&c.Listen, "listen", "127.0.0.1:8000", "plaintext address browsers connect to (GET /ws?uid=...)")
	grpcAddr := fs.String("grpc", "127.0.0.1:9000", "gRPC push.v1.Push forwarder address (health and reflection on)")
	adminAddr := fs.String("admin", "127.0.0.1:9001", "admin HTTP address: /healthz /readyz /metrics open; /debug/pprof with --admin-token")
	ringURL := fs.String("ring", "file:./ring.json", "ring store URL (file:./ring.json or etcd://host:2379/prefix)")
	ringWait := fs.Duration("ring-wait", 30*time.Second, "how long to wait at start for the first ring document (and liveness reading)")
	leaseTTL := fs.Duration("lease-ttl", store.DefaultLeaseTTL, "the edges' --lease-ttl: members whose leases vanish together (a store outage, a mass expiry) stay live for twice this, as on the edges")
	fs.StringVar(&c.HashKey, "hash-key", "url_param:uid", "where the user key is: url_param:NAME, hdr:NAME or cookie:NAME")
	fs.DurationVar(&c.HeadTimeout, "head-timeout", 5*time.Second, "time allowed from accept to a complete request head")
	fs.IntVar(&c.MaxHeadBytes, "max-head-bytes", 8192, "request head size cap (431 beyond)")
	fs.DurationVar(&c.ConnectTimeout, "connect-timeout", 3*time.Second, "one connection attempt to an edge; then the next owner is tried")
	fs.DurationVar(&c.FinTimeout, "fin-timeout", 30*time.Second, "close a relayed connection this long after one direction ended")
	fs.DurationVar(&c.KeepAlive, "keepalive", 0, "TCP keepalive idle time on relayed sockets (0: off; the edge's WebSocket pings find dead clients)")
	fs.BoolVar(&c.SendProxyV2, "send-proxy-v2", false, "send a PROXY v2 header with the client's address to the edge")
	fs.BoolVar(&c.AcceptProxy, "accept-proxy", false, "require a PROXY v1/v2 header from an upstream L4 balancer")
	sources := fs.String("source-addr", "", "comma-separated local addresses for edge connections, rotated (e.g. 127.0.1.2,127.0.1.3)")
	fs.IntVar(&c.EdgePortSpan, "edge-port-span", 1, "edges listen on this many consecutive ports from their ring ws port")
	fs.IntVar(&c.Backlog, "backlog", 4096, "listen queue length (capped by net.core.somaxconn)")
	fs.BoolVar(&c.ReusePort, "reuseport", false, "set SO_REUSEPORT on the listeners")
	fs.StringVar(&c.Check, "check", router.CheckGRPC, "health check for operators (push_router_edge_up, edge up/down logs): grpc (health Check on the member's grpc address), tcp (connect to ws) or none. "+
		"It does not decide routing: users go to their owner in the store's view (ring and leases, as edges and SDKs see it), even while its check fails, and never to a member without a live lease, even while its check passes; a failed dial goes to the view's next owner")
	fs.DurationVar(&c.CheckInterval, "check-interval", 2*time.Second, "health check period")
	fs.DurationVar(&c.CheckTimeout, "check-timeout", time.Second, "one health check's time limit")
	fs.IntVar(&c.Rise, "rise", 2, "consecutive passed checks that report a down edge up (--check)")
	fs.IntVar(&c.Fall, "fall", 3, "consecutive failed checks that report an up edge down (--check)")
	fs.StringVar(&c.TLSListen, "tls-listen", "", "TLS address (needs --tls-cert and --tls-key; goroutines per connection)")
	cert := fs.String("tls-cert", "", "PEM certificate chain for --tls-listen")
	key := fs.String("tls-key", "", "PEM private key for --tls-listen")
	fs.DurationVar(&c.DrainPeriod, "drain-period", 10*time.Second, "on SIGTERM, keep relayed connections this long at most")
	fs.IntVar(&c.Loops, "loops", router.DefaultLoops(), "epoll event loops")
	// Security of the other planes (docs/security.md): gRPC callers, etcd,
	// the admin port.
	var grpcAuth grpcauth.Config
	grpcAuth.RegisterFlags(fs)
	var etcdSec store.EtcdSecurity
	etcdSec.RegisterFlags(fs)
	var adminAuth admin.Auth
	adminAuth.RegisterFlags(fs)
	fs.BoolVar(&c.Dev, "dev", false, "development: serve gRPC without authentication or TLS on a non-loopback --grpc")
	logLevel := fs.String("log-level", "info", "debug, info, warn or error")
	logFormat := fs.String("log-format", "json", "json or text")
	flagenv.SetUsage(fs, "PUSH", "router [flags]", "Routes browser WebSockets to the edge that owns the user (the ring store's view: ring document and edge leases) and relays the bytes on epoll; forwards push.v1.Push calls to the owning edges.")
	if _, err := flagenv.Parse(fs, "PUSH", args, nil); err != nil {
		return err
	}
	log, err := daemon.Logger(*logLevel, *logFormat)
	if err != nil {
		return err
	}
	c.Logger = log
	for _, s := range strings.Split(*sources, ",") {
		if s = strings.TrimSpace(s); s != "" {
			a, err := netip.ParseAddr(s)
			if err != nil {
				return fmt.Errorf("--source-addr: %w", err)
			}
			c.SourceAddrs = append(c.SourceAddrs, a)
		}
	}
	if (*cert == "") != (*key == "") || (*cert != "") != (c.TLSListen != "") {
		return errors.New("--tls-listen, --tls-cert and --tls-key go together")
	}
	if *cert != "" {
		kp, err := tls.LoadX509KeyPair(*cert, *key)
		if err != nil {
			return fmt.Errorf("tls: %w", err)
		}
		c.TLS = &tls.Config{Certificates: []tls.Certificate{kp}, MinVersion: tls.VersionTLS12}
	}
	reg := admin.NewRegistry()
	c.Metrics = reg
	gauth, err := grpcauth.NewServer(grpcAuth, "router", log, reg)
	if err != nil {
		return err
	}
	if err := gauth.CheckListen(*grpcAddr, c.Dev); err != nil {
		return err
	}
	c.ClusterDial = gauth.ClusterDialOptions()

	soft, hard := rawtcp.FDLimit()
	log.Info("file descriptor limit", "soft", soft, "hard", hard, "relayed_connections_max", soft/2)
	if w := rawtcp.BacklogWarning(c.Backlog); w != "" {
		log.Warn(w)
	}

	st, err := store.Open(*ringURL, log, store.WithEtcdSecurity(etcdSec))
	if err != nil {
		return err
	}
	defer st.Close()
	rt, err := router.New(c)
	if err != nil {
		return err
	}
	// One Follower for the relay and the forwarder: the ring document and
	// the edges' leases, the view edges and SDKs take ownership from.
	ctx, cancel := context.WithTimeout(context.Background(), *ringWait)
	f, err := store.Follow(ctx, st, store.FollowOptions{Grace: 2 * *leaseTTL, Log: log})
	cancel()
	if err != nil {
		return err
	}
	defer f.Close() // after the SDK's Close and the router's Shutdown
	rt.Follow(f)
	// The forwarder checks each caller (scope, limits) and calls the edges
	// as a member, marking its calls forwarded (docs/security.md).
	sdk := client.NewWithFollower(f, client.WithLogger(log), client.WithDialOptions(c.ClusterDial...), client.WithForwarded())
	defer sdk.Close()
	g, err := daemon.NewGRPC(*grpcAddr, 1<<20+64<<10, gauth.ServerOptions()...)
	if err != nil {
		return err
	}
	pushv1.RegisterPushServer(g.Server, sdk.Server())
	adm, err := admin.New(admin.Config{Addr: *adminAddr, Registry: reg, Ready: rt.Ready, Logger: log, Auth: adminAuth})
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
		"admin", adm.Addr().String(), "ring_version", v.Version(), "liveness", v.HasLiveness(), "hash_key", c.HashKey)

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
