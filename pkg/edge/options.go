package edge

import (
	"flag"
	"fmt"
	"strconv"
	"strings"
	"time"

	"github.com/pushcluster/push/pkg/daemon"
	"github.com/pushcluster/push/pkg/store"
)

// Options are the edge daemon's settings (cmd/edge): a Config bound to its
// flags, and what the daemon wires around the Server (gRPC and admin
// listeners, the ring store, keys, logs).
type Options struct {
	Config         Config
	ID             uint
	IDFromHostname bool
	GRPC, Admin    string
	// AdvertiseWS and AdvertiseGRPC are the addresses routers and SDKs
	// reach this edge at, checked against its ring entry (default Listen
	// and GRPC).
	AdvertiseWS, AdvertiseGRPC string
	Ring                       string
	LeaseTTL                   time.Duration
	AllowedOrigins             string
	JWTSecretFile, JWTPublic   string
	JWTReload                  time.Duration
	GOGC                       int
	Log                        daemon.LogFlags
}

// BindFlags adds every edge flag to fs, bound to o. Each default is the
// one Config (or the constants above) defines; a flag whose default is
// derived from another (--idle-timeout, --guest-grace, --loops,
// --broadcast-writers) defaults to 0, which means "derived".
func (o *Options) BindFlags(fs *flag.FlagSet) {
	c, d := &o.Config, &defaults
	fs.StringVar(&c.Listen, "listen", DefaultListen, "WebSocket address (browsers connect to /ws here, through the router)")
	fs.StringVar(&o.GRPC, "grpc", DefaultGRPC, "gRPC push.v1.Push address")
	fs.StringVar(&o.Admin, "admin", DefaultAdmin, "admin HTTP address: /healthz /readyz /metrics open; /drain /debug/pprof with --admin-token (or from loopback)")
	fs.UintVar(&o.ID, "id", 1, "this edge's ring member id")
	fs.BoolVar(&o.IDFromHostname, "id-from-hostname", false, "take the ring id from the hostname's ordinal suffix plus one (StatefulSet pod edge-0 is id 1)")
	fs.StringVar(&o.AdvertiseWS, "advertise-ws", "", "WebSocket address routers reach this edge at (default --listen); the edge refuses to start when its ring entry names another")
	fs.StringVar(&o.AdvertiseGRPC, "advertise-grpc", "", "gRPC address backends reach this edge at (default --grpc); the edge refuses to start when its ring entry names another")
	fs.StringVar(&o.Ring, "ring", "", "ring store to follow (file:./ring.json or etcd://host:2379/prefix); empty: standalone, this edge owns every user")
	fs.DurationVar(&o.LeaseTTL, "lease-ttl", store.DefaultLeaseTTL, "this edge's lease in the ring store (etcd lease, or lease file beside a file ring): how long after it dies its users go to the next live edge; it stops serving a fifth of this before its lease could run out")
	fs.DurationVar(&c.GuestGrace, "guest-grace", 0, "how long a connection sent here because its owner was unreachable stays before it is moved to the owner (0: twice --lease-ttl plus 1s)")
	fs.IntVar(&c.MoveLimit, "move-limit", d.MoveLimit, "moves of one user within --move-window; beyond it the user stays where it is (counted in push_edge_move_limited_total)")
	fs.DurationVar(&c.MoveWindow, "move-window", d.MoveWindow, "window of --move-limit")
	fs.IntVar(&c.ListenSpan, "listen-span", d.ListenSpan, "also listen on the next N-1 ports after --listen's (routers spread connections over them; see the router's --edge-port-span)")
	fs.BoolVar(&c.AcceptProxy, "accept-proxy", false, "expect a PROXY protocol v1/v2 header before each request (router --send-proxy-v2)")
	fs.IntVar(&c.Backlog, "backlog", d.Backlog, "listen queue length (capped by net.core.somaxconn)")
	fs.BoolVar(&c.ReusePort, "reuseport", false, "set SO_REUSEPORT on the WebSocket listener")
	fs.IntVar(&c.MaxConns, "max-conns", d.MaxConns, "upgraded connections beyond this get HTTP 503")
	fs.Float64Var(&c.HandshakesPerIP, "handshakes-per-ip", d.HandshakesPerIP, "new connections per second and client address (browser's address from --accept-proxy), burst twice that, 429 beyond; 0: no limit")
	fs.IntVar(&c.MaxConnsPerUser, "max-conns-per-user", d.MaxConnsPerUser, "connections kept per user; an older one is closed with 4002")
	fs.DurationVar(&c.HandshakeTimeout, "handshake-timeout", d.HandshakeTimeout, "time allowed from accept to a complete request head")
	fs.IntVar(&c.MaxHeaderBytes, "max-header-bytes", d.MaxHeaderBytes, "request head size cap (431 beyond)")
	fs.DurationVar(&c.PingInterval, "ping-interval", d.PingInterval, "ping period of open connections")
	fs.DurationVar(&c.IdleTimeout, "idle-timeout", 0, "close a connection silent for this long (4000) (0: 2.5 × --ping-interval)")
	fs.DurationVar(&c.CloseTimeout, "close-timeout", d.CloseTimeout, "wait for the client's close frame after ours")
	fs.DurationVar(&c.PollTimeout, "poll-timeout", d.PollTimeout, "how long a long-poll request (GET /poll) is held when nothing is waiting")
	fs.IntVar(&c.MaxMessageBytes, "max-message-bytes", d.MaxMessageBytes, "largest message a client may send (1009 beyond)")
	fs.IntVar(&c.MaxPayloadBytes, "max-payload-bytes", d.MaxPayloadBytes, "largest published payload (InvalidArgument beyond)")
	fs.Var(negatedBool{&c.NoCompression}, "compression", "accept permessage-deflate (RFC 7692) from clients that offer it, always without context takeover (no compressor state per connection); false declines every offer")
	fs.IntVar(&c.CompressMinBytes, "compress-min-bytes", d.CompressMinBytes, "messages whose data is shorter than this go uncompressed even to connections that negotiated compression")
	fs.IntVar(&c.MaxQueueBytes, "max-queue-bytes", d.MaxQueueBytes, "outbound bytes one connection may owe before it is closed as a slow consumer")
	fs.IntVar(&c.MailboxSize, "mailbox-size", d.MailboxSize, "recent messages kept per user for resume")
	fs.DurationVar(&c.MailboxTTL, "mailbox-ttl", d.MailboxTTL, "how long a message waits for its user and stays replayable")
	fs.DurationVar(&c.DrainPeriod, "drain-period", d.DrainPeriod, "on SIGTERM, spread the 1001 closes over this long")
	fs.IntVar(&c.Loops, "loops", 0, "epoll event loops (0: GOMAXPROCS)")
	fs.IntVar(&c.BroadcastWriters, "broadcast-writers", 0, "goroutines that write one broadcast, each to a share of the connections (0: GOMAXPROCS)")
	fs.IntVar(&c.MigrateRate, "migrate-rate", d.MigrateRate, "users per second closed with 4003 \"moved\" when the ring gives them to another edge")
	fs.StringVar(&o.AllowedOrigins, "allowed-origins", "", "comma-separated browser origins allowed besides the request's own host (https://*.example.com matches subdomains)")
	fs.BoolVar(&c.Dev, "dev", false, "development: allow any Origin (browser authentication stays on); serve gRPC without authentication or TLS on a non-loopback --grpc")
	fs.StringVar(&o.JWTSecretFile, "jwt-secret-file", "", "comma-separated files with HS256 secrets, the current one first; all are accepted, for rotation (default: $PUSH_JWT_SECRET)")
	fs.StringVar(&o.JWTPublic, "jwt-public-keys", "", "comma-separated PEM files of RS256/EdDSA public keys also accepted")
	fs.DurationVar(&o.JWTReload, "jwt-reload", DefaultJWTReload, "re-read the key files this often and apply changes without restarting (0: never)")
	fs.IntVar(&o.GOGC, "gogc", DefaultGOGC, "Go GC target percentage (GOGC); the live heap is small per connection and garbage comes from publishes, so collecting less often cuts latency spikes; 0 keeps the runtime's setting")
	o.Log.Bind(fs)
}

// Resolve fills what the flags leave derived: the id (from the hostname
// with IDFromHostname), GuestGrace from LeaseTTL, the origin list. The
// rest of Config's derived defaults are filled by New. Errors are usage
// errors.
func (o *Options) Resolve(hostname func() (string, error)) error {
	if o.ID > 1<<32-1 {
		return daemon.Usage(fmt.Errorf("--id %d out of range", o.ID))
	}
	o.Config.ID = uint32(o.ID)
	if o.IDFromHostname {
		host, err := hostname()
		if err == nil {
			o.Config.ID, err = IDFromHostname(host)
		}
		if err != nil {
			return daemon.Usage(fmt.Errorf("--id-from-hostname: %w", err))
		}
	}
	if o.LeaseTTL <= 0 {
		return daemon.Usage(fmt.Errorf("--lease-ttl %v must be positive", o.LeaseTTL))
	}
	if o.Config.GuestGrace == 0 {
		o.Config.GuestGrace = 2*o.LeaseTTL + time.Second
	}
	if o.AllowedOrigins != "" {
		o.Config.AllowedOrigins = strings.Split(o.AllowedOrigins, ",")
	}
	return nil
}

// Advertised returns the WebSocket and gRPC addresses routers and SDKs
// reach this edge at: --advertise-ws and --advertise-grpc, else --listen
// and --grpc.
func (o *Options) Advertised() (ws, grpc string) {
	ws, grpc = o.AdvertiseWS, o.AdvertiseGRPC
	if ws == "" {
		ws = o.Config.Listen
	}
	if grpc == "" {
		grpc = o.GRPC
	}
	return ws, grpc
}

// negatedBool is a boolean flag stored negated: --compression (default
// true) sets Config.NoCompression, whose zero value means "compress".
type negatedBool struct{ p *bool }

func (b negatedBool) String() string {
	if b.p == nil {
		return "true"
	}
	return strconv.FormatBool(!*b.p)
}

func (b negatedBool) Set(v string) error {
	x, err := strconv.ParseBool(v)
	if err != nil {
		return err
	}
	*b.p = !x
	return nil
}

func (b negatedBool) IsBoolFlag() bool { return true }
