package router

import (
	"crypto/tls"
	"errors"
	"flag"
	"fmt"
	"net/netip"
	"strings"
	"time"

	"github.com/pushcluster/push/pkg/daemon"
	"github.com/pushcluster/push/pkg/store"
)

// Options are the router daemon's settings (cmd/router): a Config bound to
// its flags and what the daemon wires around the Router.
type Options struct {
	Config            Config
	GRPC, Admin, Ring string
	// Console serves the cluster console and its API on the admin port
	// (its ring changes need the admin token: --admin-token, or loopback).
	Console         bool
	RingWait        time.Duration
	LeaseTTL        time.Duration
	SourceAddrs     string
	TLSCert, TLSKey string
	Log             daemon.LogFlags
}

// BindFlags adds every router flag to fs, bound to o, with Config's
// defaults.
func (o *Options) BindFlags(fs *flag.FlagSet) {
	c, d := &o.Config, &defaults
	fs.StringVar(&c.Listen, "listen", d.Listen, "plaintext address browsers connect to (GET /ws?uid=...)")
	fs.StringVar(&o.GRPC, "grpc", DefaultGRPC, "gRPC push.v1.Push forwarder address (health and reflection on)")
	fs.StringVar(&o.Admin, "admin", DefaultAdmin, "admin HTTP address: /healthz /readyz /metrics and the cluster console /console/ with its API /api/v1/ open; /debug/pprof and the console's ring changes with --admin-token (or from loopback)")
	fs.BoolVar(&o.Console, "console", true, "serve the cluster console (/console/) and its JSON API (/api/v1/) on the admin port")
	fs.BoolVar(&o.Config.Dev, "dev", false, "development: serve gRPC without authentication or TLS on a non-loopback --grpc")
	fs.StringVar(&o.Ring, "ring", DefaultRing, "ring store URL (file:./ring.json or etcd://host:2379/prefix)")
	fs.DurationVar(&o.RingWait, "ring-wait", DefaultRingWait, "how long to wait at start for the first ring document (and liveness reading)")
	fs.DurationVar(&o.LeaseTTL, "lease-ttl", store.DefaultLeaseTTL, "the edges' --lease-ttl: members whose leases vanish together (a store outage, a mass expiry) stay live for twice this, as on the edges")
	fs.StringVar(&c.HashKey, "hash-key", d.HashKey, "where the user key is: url_param:NAME, hdr:NAME or cookie:NAME")
	fs.DurationVar(&c.HeadTimeout, "head-timeout", d.HeadTimeout, "time allowed from accept to a complete request head")
	fs.IntVar(&c.MaxHeadBytes, "max-head-bytes", d.MaxHeadBytes, "request head size cap (431 beyond)")
	fs.DurationVar(&c.ConnectTimeout, "connect-timeout", d.ConnectTimeout, "one connection attempt to an edge; then the next owner is tried")
	fs.DurationVar(&c.FinTimeout, "fin-timeout", d.FinTimeout, "close a relayed connection this long after one direction ended")
	fs.DurationVar(&c.KeepAlive, "keepalive", d.KeepAlive, "TCP keepalive idle time on relayed sockets (0: off; the edge's WebSocket pings find dead clients)")
	fs.BoolVar(&c.SendProxyV2, "send-proxy-v2", false, "send a PROXY v2 header with the client's address to the edge")
	fs.BoolVar(&c.AcceptProxy, "accept-proxy", false, "require a PROXY v1/v2 header from an upstream L4 balancer")
	fs.StringVar(&o.SourceAddrs, "source-addr", "", "comma-separated local addresses for edge connections, rotated (e.g. 127.0.1.2,127.0.1.3)")
	fs.IntVar(&c.EdgePortSpan, "edge-port-span", d.EdgePortSpan, "edges listen on this many consecutive ports from their ring ws port")
	fs.IntVar(&c.RelayBuffer, "relay-buffer", d.RelayBuffer, "SO_SNDBUF and SO_RCVBUF of both sockets of a relayed connection (the kernel doubles it): bounds what the router holds for a client that stops reading, so the edge's slow-consumer rule (1008) applies as to a direct client; -1: the kernel's autotuning (megabytes per socket)")
	fs.IntVar(&c.Backlog, "backlog", d.Backlog, "listen queue length (capped by net.core.somaxconn)")
	fs.BoolVar(&c.ReusePort, "reuseport", false, "set SO_REUSEPORT on the listeners")
	fs.StringVar(&c.Check, "check", d.Check, "health check for operators (push_router_edge_up, edge up/down logs): grpc (health Check on the member's grpc address), tcp (connect to ws) or none. "+
		"It does not decide routing: users go to their owner in the store's view (ring and leases, as edges and SDKs see it), even while its check fails, and never to a member without a live lease, even while its check passes; a failed dial goes to the view's next owner")
	fs.DurationVar(&c.CheckInterval, "check-interval", d.CheckInterval, "health check period")
	fs.DurationVar(&c.CheckTimeout, "check-timeout", d.CheckTimeout, "one health check's time limit (at most --check-interval)")
	fs.IntVar(&c.Rise, "rise", d.Rise, "consecutive passed checks that report a down edge up (--check)")
	fs.IntVar(&c.Fall, "fall", d.Fall, "consecutive failed checks that report an up edge down (--check)")
	fs.StringVar(&c.TLSListen, "tls-listen", "", "TLS address (needs --tls-cert and --tls-key; a goroutine per connection during its handshake only)")
	fs.StringVar(&o.TLSCert, "tls-cert", "", "PEM certificate chain for --tls-listen")
	fs.StringVar(&o.TLSKey, "tls-key", "", "PEM private key for --tls-listen")
	fs.DurationVar(&c.DrainPeriod, "drain-period", d.DrainPeriod, "on SIGTERM, keep relayed connections this long at most")
	fs.IntVar(&c.Loops, "loops", 0, "epoll event loops (0: GOMAXPROCS)")
	o.Log.Bind(fs)
}

// Resolve fills what the flags describe in text (source addresses, the
// TLS key pair); errors are usage errors, a key pair that cannot be read
// is a failure.
func (o *Options) Resolve() error {
	c := &o.Config
	for _, s := range strings.Split(o.SourceAddrs, ",") {
		if s = strings.TrimSpace(s); s != "" {
			a, err := netip.ParseAddr(s)
			if err != nil {
				return daemon.Usage(fmt.Errorf("--source-addr: %w", err))
			}
			c.SourceAddrs = append(c.SourceAddrs, a)
		}
	}
	if (o.TLSCert == "") != (o.TLSKey == "") || (o.TLSCert != "") != (c.TLSListen != "") {
		return daemon.Usage(errors.New("--tls-listen, --tls-cert and --tls-key go together"))
	}
	if o.TLSCert != "" {
		kp, err := tls.LoadX509KeyPair(o.TLSCert, o.TLSKey)
		if err != nil {
			return fmt.Errorf("tls: %w", err)
		}
		c.TLS = &tls.Config{Certificates: []tls.Certificate{kp}, MinVersion: tls.VersionTLS12}
	}
	return nil
}
