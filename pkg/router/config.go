// Package router is the cluster's stateless front door: it accepts browser
// connections, peeks at the HTTP request head without consuming it, finds
// the user key's owner in the ownership view (package owner, fed by a
// store.Follower: the same function and inputs as the edges and the SDK),
// dials the owning edge and then only moves bytes between the two sockets.
// A failed dial goes to the view's next owner (view.OwnerExcept); the
// health check is for operators and does not route (see Router).
//
// Like the edge, connections are raw non-blocking descriptors on the event
// loops of package evloop; every loop also accepts (EPOLLEXCLUSIVE,
// TCP_DEFER_ACCEPT).
// An idle relayed connection owns a session struct and its two descriptors:
// no goroutine, no buffer and no pipe. Bytes move when a side is readable,
// through the loop's scratch buffer for small reads and a pooled pipe with
// splice(2) for bulk; what the destination does not take stays in flight
// (the pipe, or a right-sized copy) and the source is not read again until
// EPOLLOUT drains it.
//
// TLS connections take the same path: one goroutine per connection only for
// the handshake and the request head, then the same dispatch and relay on
// the loops, with crypto/tls over a non-blocking socket (tls.go); an idle
// TLS connection holds no goroutine either.
//
// Lock order: session.mu, then the timers' lock (evloop.Timers), then
// pipePool.mu. Router.mu (view swaps, health checkers) is never held
// together with those. The routing table is an atomic snapshot
// read without a lock; health state is an atomic per member.
package router

import (
	"crypto/tls"
	"errors"
	"fmt"
	"log/slog"
	"net/netip"
	"runtime"
	"strings"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"
)

// ErrConfig wraps every configuration error.
var ErrConfig = errors.New("invalid router config")

// Check kinds. A health check is for operators: it drives Router.Up, the
// push_router_edge_up gauge and the "edge up"/"edge down" logs, and does
// not decide routing (see Router).
const (
	CheckGRPC = "grpc" // gRPC health Check on the member's grpc address
	CheckTCP  = "tcp"  // TCP connect to the member's ws address
	CheckNone = "none" // no probe: Up reports whether the address resolved
)

// Config configures a Router. The zero value of every field takes the
// default shown.
type Config struct {
	// Listen is the plaintext address browsers connect to
	// (default "127.0.0.1:8000").
	Listen string
	// Backlog is the listen queue length (default 4096).
	Backlog int
	// ReusePort sets SO_REUSEPORT on the listeners.
	ReusePort bool
	// HashKey says where the user key is: "url_param:<name>" (default
	// "url_param:uid", HAProxy's balance url_param), "hdr:<name>" (balance
	// hdr) or "cookie:<name>".
	HashKey string
	// HeadTimeout bounds the time from accept to a complete request head
	// (default 5s).
	HeadTimeout time.Duration
	// MaxHeadBytes caps the request head (default 8192; 431 beyond).
	MaxHeadBytes int
	// ConnectTimeout bounds one connection attempt to an edge (default 3s).
	ConnectTimeout time.Duration
	// FinTimeout closes a relayed connection this long after one direction
	// ended if the other has not (HAProxy's timeout client-fin; default 30s).
	FinTimeout time.Duration
	// RelayBuffer is SO_SNDBUF and SO_RCVBUF of both sockets of a relayed
	// connection (set on the listener, which accepted sockets inherit, and
	// on each edge socket before its connect), so that what a client that
	// stops reading leaves in the router is bounded: the client socket's
	// send queue, at most one in-flight transfer (a 64 KiB pipe or copy)
	// and the edge socket's receive queue. Beyond that the edge's own
	// socket fills and its slow-consumer rule (1008) applies as to a
	// direct client. The TLS path's sockets get the same sizes (what it
	// holds in flight is ciphertext of at most one read). The kernel
	// doubles the value
	// for its bookkeeping.
	// Default 32 KiB; -1 leaves the kernel's autotuning (up to
	// net.ipv4.tcp_wmem/tcp_rmem, megabytes per socket).
	RelayBuffer int
	// KeepAlive, when > 0, turns TCP keepalive on with this idle time on
	// both sockets of a relayed connection. Off by default: the edge's
	// WebSocket pings already detect dead clients end to end, and the
	// setsockopt calls cost per connection.
	KeepAlive time.Duration
	// SendProxyV2 writes a PROXY v2 header to the edge before the relay.
	SendProxyV2 bool
	// AcceptProxy requires a PROXY v1 or v2 header from an upstream L4
	// balancer before the request head.
	AcceptProxy bool
	// SourceAddrs are the local addresses edge connections are bound to
	// (IP_BIND_ADDRESS_NO_PORT), in rotation; empty: the kernel's choice.
	SourceAddrs []netip.Addr
	// EdgePortSpan spreads connections over this many consecutive ports
	// starting at each member's ws port (default 1).
	EdgePortSpan int
	// Check is CheckGRPC (default), CheckTCP or CheckNone: the health
	// check behind Router.Up and push_router_edge_up. It does not decide
	// routing: the ownership view does (a member the view holds live is
	// dialed even while its probe fails, and a failed dial is redispatched
	// to the view's next owner; a member the view does not hold live is
	// never dialed, even while its probe passes). Its checker also
	// re-resolves the member's ws name before every probe.
	Check string
	// CheckInterval is the health check period (default 2s).
	CheckInterval time.Duration
	// CheckTimeout bounds one check (default 1s, at most CheckInterval).
	CheckTimeout time.Duration
	// Rise and Fall are the consecutive successes that bring a down member
	// up and the failures that bring an up member down (default 2 and 3),
	// as the health check reports it. A new member starts up, like
	// HAProxy's servers.
	Rise, Fall int
	// TLSListen, with TLS, serves TLS-terminated connections on a second
	// listener through crypto/tls, on the same loops (a goroutine per
	// connection only during its handshake and head, within HeadTimeout).
	TLSListen string
	TLS       *tls.Config
	// DrainPeriod bounds how long Shutdown keeps relayed connections
	// (default 10s).
	DrainPeriod time.Duration
	// Loops is the number of epoll loops (default GOMAXPROCS). Loops park
	// in Go's netpoller between events (poller.Run): loops blocked in
	// epoll_wait held their Ps in system calls, and with every P in one,
	// sysmon retook them every 20 µs (2 loops cost 50-60 µs of CPU per
	// forwarded message on 2 cores, 1 loop 36-39 µs, HAProxy 37-43 µs).
	Loops int
	// Tick is the timing wheel's resolution (default 100ms).
	Tick time.Duration
	// Logger receives structured logs (default slog.Default()).
	Logger *slog.Logger
	// Metrics, when set, receives the router's collectors.
	Metrics prometheus.Registerer
	// Dev lets the gRPC forwarder serve without authentication or TLS on
	// a non-loopback address (cmd/router checks it).
	Dev bool
	// ClusterDial are the dial options toward the edges' gRPC ports (the
	// grpc health check; the forwarder's SDK takes the same): their TLS and
	// the router's cluster credential (grpcauth.Server.ClusterDialOptions).
	// Default: plaintext, no credential (an open, loopback cluster).
	ClusterDial []grpc.DialOption
}

// defaults holds every default of Config in one place: setDefaults fills
// the zero fields of a Config from it and BindFlags shows it as the flags'
// defaults. Loops (GOMAXPROCS) and CheckTimeout (at most CheckInterval)
// are derived.
var defaults = Config{
	Listen:         "127.0.0.1:8000",
	Backlog:        4096,
	HashKey:        "url_param:uid",
	HeadTimeout:    5 * time.Second,
	MaxHeadBytes:   8192,
	ConnectTimeout: 3 * time.Second,
	FinTimeout:     30 * time.Second,
	RelayBuffer:    DefaultRelayBuffer,
	EdgePortSpan:   1,
	Check:          CheckGRPC,
	CheckInterval:  2 * time.Second,
	CheckTimeout:   time.Second,
	Rise:           2,
	Fall:           3,
	DrainPeriod:    10 * time.Second,
	Tick:           100 * time.Millisecond,
}

// The router daemon's own defaults (Options, cmd/router), beside Config's.
const (
	DefaultGRPC     = "127.0.0.1:9000"
	DefaultAdmin    = "127.0.0.1:9001"
	DefaultRing     = "file:./ring.json"
	DefaultRingWait = 30 * time.Second
)

func (c *Config) setDefaults() {
	if len(c.ClusterDial) == 0 {
		c.ClusterDial = []grpc.DialOption{grpc.WithTransportCredentials(insecure.NewCredentials())}
	}
	defD := func(p *time.Duration, v time.Duration) {
		if *p == 0 {
			*p = v
		}
	}
	def := func(p *int, v int) {
		if *p == 0 {
			*p = v
		}
	}
	defS := func(p *string, v string) {
		if *p == "" {
			*p = v
		}
	}
	d := &defaults
	defS(&c.Listen, d.Listen)
	def(&c.Backlog, d.Backlog)
	defS(&c.HashKey, d.HashKey)
	defD(&c.HeadTimeout, d.HeadTimeout)
	def(&c.MaxHeadBytes, d.MaxHeadBytes)
	defD(&c.ConnectTimeout, d.ConnectTimeout)
	defD(&c.FinTimeout, d.FinTimeout)
	def(&c.RelayBuffer, d.RelayBuffer)
	def(&c.EdgePortSpan, d.EdgePortSpan)
	defS(&c.Check, d.Check)
	defD(&c.CheckInterval, d.CheckInterval)
	defD(&c.CheckTimeout, d.CheckTimeout)
	if c.CheckTimeout > c.CheckInterval {
		c.CheckTimeout = c.CheckInterval
	}
	def(&c.Rise, d.Rise)
	def(&c.Fall, d.Fall)
	defD(&c.DrainPeriod, d.DrainPeriod)
	def(&c.Loops, DefaultLoops())
	defD(&c.Tick, d.Tick)
	if c.Logger == nil {
		c.Logger = slog.Default()
	}
}

// DefaultRelayBuffer is Config.RelayBuffer's default.
const DefaultRelayBuffer = 32 << 10

// DefaultLoops is GOMAXPROCS (see Config.Loops).
func DefaultLoops() int { return runtime.GOMAXPROCS(0) }

// keySource is the parsed HashKey.
type keySource struct {
	kind string // "url_param", "hdr" or "cookie"
	name string
}

func parseHashKey(s string) (keySource, error) {
	kind, name, ok := strings.Cut(s, ":")
	if !ok || name == "" {
		return keySource{}, fmt.Errorf("%w: --hash-key %q: want url_param:<name>, hdr:<name> or cookie:<name>", ErrConfig, s)
	}
	switch kind {
	case "url_param", "hdr", "cookie":
	default:
		return keySource{}, fmt.Errorf("%w: --hash-key %q: unknown source %q", ErrConfig, s, kind)
	}
	return keySource{kind: kind, name: name}, nil
}

func (c *Config) validate() error {
	switch {
	case c.Backlog < 1:
		return fmt.Errorf("%w: backlog %d", ErrConfig, c.Backlog)
	case c.MaxHeadBytes < 256 || c.MaxHeadBytes > 1<<20:
		return fmt.Errorf("%w: max head bytes %d outside 256..1MiB", ErrConfig, c.MaxHeadBytes)
	case c.EdgePortSpan < 1 || c.EdgePortSpan > 1024:
		return fmt.Errorf("%w: edge port span %d outside 1..1024", ErrConfig, c.EdgePortSpan)
	case c.Check != CheckGRPC && c.Check != CheckTCP && c.Check != CheckNone:
		return fmt.Errorf("%w: check %q: want grpc, tcp or none", ErrConfig, c.Check)
	case c.Rise < 1 || c.Fall < 1:
		return fmt.Errorf("%w: rise %d and fall %d must be >= 1", ErrConfig, c.Rise, c.Fall)
	case c.RelayBuffer != -1 && (c.RelayBuffer < 2*c.MaxHeadBytes || c.RelayBuffer > 64<<20):
		// The head is peeked in the client socket's receive queue, so
		// it must fit there.
		return fmt.Errorf("%w: relay buffer %d: want -1 or 2×max head bytes (%d) to 64 MiB", ErrConfig, c.RelayBuffer, 2*c.MaxHeadBytes)
	case c.Loops < 1 || c.Loops > 255:
		return fmt.Errorf("%w: loops %d outside 1..255", ErrConfig, c.Loops)
	case c.Tick <= 0 || c.HeadTimeout <= 0 || c.ConnectTimeout <= 0 || c.FinTimeout <= 0:
		return fmt.Errorf("%w: tick and timeouts must be positive", ErrConfig)
	case (c.TLSListen == "") != (c.TLS == nil):
		return fmt.Errorf("%w: TLS listener needs a certificate and the other way round", ErrConfig)
	}
	for _, a := range c.SourceAddrs {
		if !a.IsValid() || a.Zone() != "" {
			return fmt.Errorf("%w: source address %v", ErrConfig, a)
		}
	}
	_, err := parseHashKey(c.HashKey)
	return err
}
