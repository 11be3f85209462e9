// Command router is the cluster's stateless front door: it peeks at each
// browser's HTTP request head, hashes the user key on the ring and relays
// the connection to the owning edge on epoll, and forwards push.v1.Push
// calls for backends that do not embed the SDK. Run `router --help` for its
// flags; each also reads PUSH_<FLAG> from the environment.
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
	"github.com/pushcluster/push/pkg/rawtcp"
	"github.com/pushcluster/push/pkg/ring"
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
	adminAddr := fs.String("admin", "127.0.0.1:9001", "admin HTTP address: /healthz /readyz /metrics /debug/pprof")
	ringURL := fs.String("ring", "file:./ring.json", "ring store URL (file:./ring.json or etcd://host:2379/prefix)")
	ringWait := fs.Duration("ring-wait", 30*time.Second, "how long to wait at start for the first ring document")
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
	fs.StringVar(&c.Check, "check", router.CheckGRPC, "health check: grpc (health Check on the member's grpc address), tcp (connect to ws) or none")
	fs.DurationVar(&c.CheckInterval, "check-interval", 2*time.Second, "health check period")
	fs.DurationVar(&c.CheckTimeout, "check-timeout", time.Second, "one health check's time limit")
	fs.IntVar(&c.Rise, "rise", 2, "consecutive passed checks that bring a down edge up")
	fs.IntVar(&c.Fall, "fall", 3, "consecutive failed checks that take an up edge down")
	fs.StringVar(&c.TLSListen, "tls-listen", "", "TLS address (needs --tls-cert and --tls-key; goroutines per connection)")
	cert := fs.String("tls-cert", "", "PEM certificate chain for --tls-listen")
	key := fs.String("tls-key", "", "PEM private key for --tls-listen")
	fs.DurationVar(&c.DrainPeriod, "drain-period", 10*time.Second, "on SIGTERM, keep relayed connections this long at most")
	fs.IntVar(&c.Loops, "loops", router.DefaultLoops(), "epoll event loops")
	logLevel := fs.String("log-level", "info", "debug, info, warn or error")
	logFormat := fs.String("log-format", "json", "json or text")
	flagenv.SetUsage(fs, "PUSH", "router [flags]", "Routes browser WebSockets to the edge that owns the user on the ring and relays the bytes on epoll; forwards push.v1.Push calls to the owning edges.")
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

	soft, hard := rawtcp.FDLimit()
	log.Info("file descriptor limit", "soft", soft, "hard", hard, "relayed_connections_max", soft/2)
	if w := rawtcp.BacklogWarning(c.Backlog); w != "" {
		log.Warn(w)
	}

	st, err := store.Open(*ringURL, log)
	if err != nil {
		return err
	}
	defer st.Close()
	rt, err := router.New(c)
	if err != nil {
		return err
	}
	watchCtx, stopWatch := context.WithCancel(context.Background())
	defer stopWatch()
	docs, err := st.Watch(watchCtx)
	if err != nil {
		return err
	}
	if err := firstRing(rt, docs, *ringWait); err != nil {
		return err
	}
	go rt.Follow(docs)

	ctx, cancel := context.WithTimeout(context.Background(), *ringWait)
	sdk, err := client.New(ctx, st, client.WithUp(rt.Up), client.WithLogger(log))
	cancel()
	if err != nil {
		return err
	}
	defer sdk.Close()
	g, err := daemon.NewGRPC(*grpcAddr, 1<<20+64<<10)
	if err != nil {
		return err
	}
	pushv1.RegisterPushServer(g.Server, sdk.Server())
	adm, err := admin.New(admin.Config{Addr: *adminAddr, Registry: reg, Ready: rt.Ready, Logger: log})
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
	log.Info("router up", "listen", rt.Addr().String(), "tls", c.TLSListen, "grpc", g.Addr().String(),
		"admin", adm.Addr().String(), "ring_version", rt.Ring().Version(), "hash_key", c.HashKey)

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

// firstRing waits for the store's first valid document.
func firstRing(rt *router.Router, docs <-chan *ring.Document, wait time.Duration) error {
	timeout := time.After(wait)
	for {
		select {
		case d, ok := <-docs:
			if !ok {
				return errors.New("ring store closed before a document arrived")
			}
			if err := rt.Apply(d); err != nil {
				rt.Logger().Warn("ring document refused", "version", d.Version, "err", err)
				continue
			}
			return nil
		case <-timeout:
			return fmt.Errorf("no ring document in %v", wait)
		}
	}
}
