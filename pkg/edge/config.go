// Package edge is the node that terminates browser WebSockets and delivers
// pushes to users.
//
// Connections are raw non-blocking descriptors driven by epoll (package
// poller): after the upgrade no goroutine, net.Conn or buffer is held per idle
// connection, only a conn struct, a registry entry and a timing-wheel slot.
// Reads borrow the event loop's scratch buffer; writes go straight to the
// socket from the publishing goroutine and queue only what the kernel did not
// take.
//
// Lock order: registry shard, then conn.mu, then the wheel's mutex. A conn
// lock is never held while taking a shard lock.
package edge

import (
	"errors"
	"fmt"
	"log/slog"
	"runtime"
	"strings"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"

	"github.com/pushcluster/push/pkg/auth"
)

// Config configures a Server. The zero value of every field but Verifier
// takes the default shown.
type Config struct {
	// ID is this edge's ring member id, reported in publish answers.
	ID uint32
	// Listen is the WebSocket address ("127.0.0.1:8080").
	Listen string
	// ListenSpan is how many consecutive ports from Listen's are served
	// (default 1); routers spread their connections over them.
	ListenSpan int
	// AcceptProxy expects a PROXY protocol (v1 or v2) header before each
	// request, as sent by the router with --send-proxy-v2.
	AcceptProxy bool
	// Backlog is the listen queue length (default 4096).
	Backlog int
	// ReusePort sets SO_REUSEPORT on the listener.
	ReusePort bool
	// HandshakesPerIP limits new connections per client address and second
	// (burst twice that) with 429 beyond; the address is the browser's from
	// the router's PROXY header with AcceptProxy. 0 turns it off (default:
	// many users may share one NAT address).
	HandshakesPerIP float64
	// MaxConns caps upgraded connections; beyond it upgrades get HTTP 503
	// (default 100000).
	MaxConns int
	// MaxConnsPerUser keeps the newest N connections of a user; an older one
	// is closed with 4002 "replaced" (default 1).
	MaxConnsPerUser int
	// HandshakeTimeout bounds the time from accept to a complete request
	// head (default 5s).
	HandshakeTimeout time.Duration
	// MaxHeaderBytes caps the request head (default 8192).
	MaxHeaderBytes int
	// PingInterval is how often the edge pings an open connection
	// (default 30s).
	PingInterval time.Duration
	// IdleTimeout closes a connection that sent no frame (pongs included)
	// for this long (default 2.5 × PingInterval).
	IdleTimeout time.Duration
	// PollTimeout is how long a long-poll request (GET /poll) is held when
	// there is nothing to answer (default 25s).
	PollTimeout time.Duration
	// CloseTimeout bounds the wait for the client's close frame after the
	// edge sent its own (default 3s).
	CloseTimeout time.Duration
	// MaxMessageBytes caps a message from a client (default 4096).
	MaxMessageBytes int
	// MaxPayloadBytes caps a published payload (default 65536).
	MaxPayloadBytes int
	// NoCompression declines permessage-deflate (RFC 7692); by default a
	// client that offers it gets it, with no context takeover either way.
	NoCompression bool
	// CompressMinBytes is the smallest message (its "data" field as sent)
	// that is compressed for connections that negotiated compression;
	// smaller ones go uncompressed, as deflating them costs CPU and saves
	// a few bytes at most (default 256).
	CompressMinBytes int
	// MaxQueueBytes caps what may wait for one slow connection before it is
	// closed with 1008 (default 262144).
	MaxQueueBytes int
	// MailboxSize is how many recent messages are kept per user for resume
	// (default 64).
	MailboxSize int
	// MailboxTTL is how long a message waits for a user and stays
	// replayable (default 2m); also the upper bound of a publish's ttl.
	MailboxTTL time.Duration
	// DrainPeriod spreads the 1001 closes of a shutdown (default 10s).
	DrainPeriod time.Duration
	// Tick is the timing wheel's resolution (default 100ms).
	Tick time.Duration
	// AllowedOrigins lists the Origin values a browser may connect from
	// ("https://app.example.com"; "https://*.example.com" matches
	// subdomains). A request without Origin (not a browser) or with an
	// Origin matching its Host is always allowed.
	AllowedOrigins []string
	// Dev allows any Origin. It never relaxes authentication.
	Dev bool
	// MigrateRate is how many users a second are closed with 4003 "moved"
	// when the ring gives them to another edge (default 500).
	MigrateRate int
	// GuestGrace is how long a connection whose user this edge does not
	// own (a router sent it here because the owner refused its dial) is
	// kept before it is moved to the owner: long enough for a dead
	// owner's lease to run out everywhere, so nobody bounces the user
	// toward a member that is down (default 10s; Options.Resolve, the
	// edge daemon's, sets twice --lease-ttl plus a second).
	GuestGrace time.Duration
	// MoveLimit is how many times within MoveWindow this edge moves one
	// user for a change of owner; beyond it the user is left in place and
	// counted (push_edge_move_limited_total): a last line of defence
	// against views that disagree (defaults 2 and 1m).
	MoveLimit  int
	MoveWindow time.Duration
	// Verifier checks tokens; required (an *auth.Verifier, or an
	// *auth.Keyring whose keys can change while the edge runs).
	Verifier auth.TokenVerifier
	// BroadcastWriters is how many goroutines write a broadcast, each to a
	// share of the connections (default GOMAXPROCS).
	BroadcastWriters int
	// Loops is the number of epoll loops (default GOMAXPROCS).
	Loops int
	// Logger receives structured logs (default slog.Default()).
	Logger *slog.Logger
	// Metrics, when set, receives the edge's collectors.
	Metrics prometheus.Registerer
	// AdminAddr is the admin HTTP address serving Metrics, published with
	// the edge's lease (owner.Live.Admin) so that the cluster console
	// finds its /metrics. Empty: not published.
	AdminAddr string
	// ClusterDial are the dial options toward other members' gRPC ports
	// (push.v1.Cluster): their TLS and this edge's cluster credential
	// (grpcauth.Server.ClusterDialOptions). Default: plaintext, no
	// credential (an open, loopback cluster).
	ClusterDial []grpc.DialOption
}

// defaults holds every default of Config in one place: setDefaults fills
// the zero fields of a Config from it and BindFlags shows it as the flags'
// defaults. A field left zero here has a derived default: IdleTimeout is
// 2.5 × PingInterval, Loops and BroadcastWriters are GOMAXPROCS.
var defaults = Config{
	Backlog:          4096,
	ListenSpan:       1,
	MigrateRate:      500,
	GuestGrace:       10 * time.Second,
	MoveLimit:        2,
	MoveWindow:       time.Minute,
	MaxConns:         100000,
	MaxConnsPerUser:  1,
	HandshakeTimeout: 5 * time.Second,
	MaxHeaderBytes:   8192,
	PingInterval:     30 * time.Second,
	CloseTimeout:     3 * time.Second,
	PollTimeout:      25 * time.Second,
	MaxMessageBytes:  4096,
	MaxPayloadBytes:  65536,
	MaxQueueBytes:    256 << 10,
	CompressMinBytes: 256,
	MailboxSize:      64,
	MailboxTTL:       2 * time.Minute,
	DrainPeriod:      10 * time.Second,
	Tick:             100 * time.Millisecond,
}

// The edge daemon's own defaults (Options, cmd/edge), beside Config's.
const (
	DefaultListen    = "127.0.0.1:8080"
	DefaultGRPC      = "127.0.0.1:9090"
	DefaultAdmin     = "127.0.0.1:9100"
	DefaultJWTReload = 10 * time.Second
	DefaultGOGC      = 400
)

// idleTimeout is IdleTimeout's default for a ping interval.
func idleTimeout(ping time.Duration) time.Duration { return ping * 5 / 2 }

func (c *Config) setDefaults() {
	def := func(p *int, v int) {
		if *p == 0 {
			*p = v
		}
	}
	defD := func(p *time.Duration, v time.Duration) {
		if *p == 0 {
			*p = v
		}
	}
	d := &defaults
	def(&c.Backlog, d.Backlog)
	def(&c.ListenSpan, d.ListenSpan)
	def(&c.MigrateRate, d.MigrateRate)
	defD(&c.GuestGrace, d.GuestGrace)
	def(&c.MoveLimit, d.MoveLimit)
	defD(&c.MoveWindow, d.MoveWindow)
	def(&c.MaxConns, d.MaxConns)
	def(&c.MaxConnsPerUser, d.MaxConnsPerUser)
	defD(&c.HandshakeTimeout, d.HandshakeTimeout)
	def(&c.MaxHeaderBytes, d.MaxHeaderBytes)
	defD(&c.PingInterval, d.PingInterval)
	defD(&c.IdleTimeout, idleTimeout(c.PingInterval))
	defD(&c.CloseTimeout, d.CloseTimeout)
	defD(&c.PollTimeout, d.PollTimeout)
	def(&c.MaxMessageBytes, d.MaxMessageBytes)
	def(&c.MaxPayloadBytes, d.MaxPayloadBytes)
	def(&c.MaxQueueBytes, d.MaxQueueBytes)
	def(&c.CompressMinBytes, d.CompressMinBytes)
	def(&c.MailboxSize, d.MailboxSize)
	defD(&c.MailboxTTL, d.MailboxTTL)
	defD(&c.DrainPeriod, d.DrainPeriod)
	defD(&c.Tick, d.Tick)
	def(&c.Loops, runtime.GOMAXPROCS(0))
	def(&c.BroadcastWriters, runtime.GOMAXPROCS(0))
	if c.Logger == nil {
		c.Logger = slog.Default()
	}
	if len(c.ClusterDial) == 0 {
		c.ClusterDial = []grpc.DialOption{grpc.WithTransportCredentials(insecure.NewCredentials())}
	}
}

// ErrConfig wraps every configuration error.
var ErrConfig = errors.New("invalid edge config")

func (c *Config) validate() error {
	bad := func(format string, a ...any) error {
		return fmt.Errorf("%w: %s", ErrConfig, fmt.Sprintf(format, a...))
	}
	switch {
	case c.Verifier == nil:
		return bad("a token verifier is required")
	case c.Listen == "":
		return bad("listen address is empty")
	case c.MaxConns < 1, c.MaxConnsPerUser < 1, c.Backlog < 1, c.Loops < 1, c.MailboxSize < 1:
		return bad("max-conns, max-conns-per-user, backlog, loops and mailbox-size must be >= 1")
	case c.HandshakesPerIP < 0:
		return bad("handshakes-per-ip %v is negative", c.HandshakesPerIP)
	case c.MigrateRate < 1 || c.MigrateRate > 1000000:
		return bad("migrate-rate %d outside 1..1000000", c.MigrateRate)
	case c.ListenSpan < 1 || c.ListenSpan > 64:
		return bad("listen-span %d outside 1..64", c.ListenSpan)
	case c.Loops > 255:
		return bad("loops %d above 255", c.Loops)
	case c.MaxHeaderBytes < 512 || c.MaxHeaderBytes > 65536:
		return bad("max-header-bytes %d outside 512..65536", c.MaxHeaderBytes)
	case c.MaxMessageBytes < 125 || c.MaxMessageBytes > 1<<20:
		return bad("max-message-bytes %d outside 125..1048576", c.MaxMessageBytes)
	case c.MaxPayloadBytes < 1 || c.MaxPayloadBytes > 16<<20:
		return bad("max-payload-bytes %d outside 1..16777216", c.MaxPayloadBytes)
	case c.MaxQueueBytes < 2*c.MaxPayloadBytes:
		return bad("max-queue-bytes %d must hold two payloads (>= %d)", c.MaxQueueBytes, 2*c.MaxPayloadBytes)
	case c.CompressMinBytes < 1:
		return bad("compress-min-bytes %d below 1", c.CompressMinBytes)
	case c.Tick <= 0 || c.Tick > time.Second:
		return bad("tick %v outside (0, 1s]", c.Tick)
	case c.PingInterval < c.Tick, c.HandshakeTimeout < c.Tick, c.CloseTimeout < c.Tick, c.PollTimeout < c.Tick:
		return bad("ping interval, handshake and close timeouts must be at least one tick (%v)", c.Tick)
	case c.IdleTimeout <= c.PingInterval:
		return bad("idle timeout %v must exceed the ping interval %v", c.IdleTimeout, c.PingInterval)
	case c.MailboxTTL < time.Second:
		return bad("mailbox ttl %v below 1s", c.MailboxTTL)
	}
	for _, o := range c.AllowedOrigins {
		if !strings.Contains(o, "://") {
			return bad("allowed origin %q must look like scheme://host[:port]", o)
		}
	}
	return nil
}
