// Command edge terminates browser WebSockets and delivers pushes to users.
// Run `edge --help` for its flags; each also reads PUSH_<FLAG> from the
// environment.
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"net/http"
	"os"
	"runtime"
	"runtime/debug"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/pushcluster/push/pkg/admin"
	"github.com/pushcluster/push/pkg/auth"
	"github.com/pushcluster/push/pkg/daemon"
	"github.com/pushcluster/push/pkg/edge"
	"github.com/pushcluster/push/pkg/flagenv"
	"github.com/pushcluster/push/pkg/grpcauth"
	"github.com/pushcluster/push/pkg/rawtcp"
	"github.com/pushcluster/push/pkg/ring"
	"github.com/pushcluster/push/pkg/store"
	"github.com/pushcluster/push/pkg/userid"
)

func main() { daemon.Main("edge", run) }

func run(args []string) error {
	fs := flag.NewFlagSet("edge", flag.ContinueOnError)
	var c edge.Config
	fs.StringVar(&c.Listen, "listen", "127.0.0.1:8080", "WebSocket address (browsers connect to /ws here, through the router)")
	grpcAddr := fs.String("grpc", "127.0.0.1:9090", "gRPC push.v1.Push address")
	adminAddr := fs.String("admin", "127.0.0.1:9100", "admin HTTP address: /healthz /readyz /metrics open; /drain /debug/pprof with --admin-token")
	id := fs.Uint("id", 1, "this edge's ring member id")
	idFromHost := fs.Bool("id-from-hostname", false, "take the ring id from the hostname's ordinal suffix plus one (StatefulSet pod edge-0 is id 1)")
	advWS := fs.String("advertise-ws", "", "WebSocket address routers reach this edge at (checked against the ring; default --listen)")
	advGRPC := fs.String("advertise-grpc", "", "gRPC address backends reach this edge at (checked against the ring; default --grpc)")
	ringURL := fs.String("ring", "", "ring store to follow (file:./ring.json or etcd://host:2379/prefix); empty: standalone, this edge owns every user")
	leaseTTL := fs.Duration("lease-ttl", 5*time.Second, "this edge's lease in the ring store (etcd lease, or lease file beside a file ring): how long after it dies its users go to the next live edge; it stops serving a fifth of this before its lease could run out")
	fs.DurationVar(&c.GuestGrace, "guest-grace", 0, "how long a connection sent here because its owner was unreachable stays before it is moved to the owner (default twice --lease-ttl plus 1s)")
	fs.IntVar(&c.MoveLimit, "move-limit", 2, "moves of one user within --move-window; beyond it the user stays where it is (counted in push_edge_move_limited_total)")
	fs.DurationVar(&c.MoveWindow, "move-window", time.Minute, "window of --move-limit")
	fs.IntVar(&c.ListenSpan, "listen-span", 1, "also listen on the next N-1 ports after --listen's (routers spread connections over them; see the router's --edge-port-span)")
	fs.BoolVar(&c.AcceptProxy, "accept-proxy", false, "expect a PROXY protocol v1/v2 header before each request (router --send-proxy-v2)")
	fs.IntVar(&c.Backlog, "backlog", 4096, "listen queue length (capped by net.core.somaxconn)")
	fs.BoolVar(&c.ReusePort, "reuseport", false, "set SO_REUSEPORT on the WebSocket listener")
	fs.IntVar(&c.MaxConns, "max-conns", 100000, "upgraded connections beyond this get HTTP 503")
	fs.Float64Var(&c.HandshakesPerIP, "handshakes-per-ip", 0, "new connections per second and client address (browser's address from --accept-proxy), burst twice that, 429 beyond; 0: no limit")
	fs.IntVar(&c.MaxConnsPerUser, "max-conns-per-user", 1, "connections kept per user; an older one is closed with 4002")
	fs.DurationVar(&c.HandshakeTimeout, "handshake-timeout", 5*time.Second, "time allowed from accept to a complete request head")
	fs.IntVar(&c.MaxHeaderBytes, "max-header-bytes", 8192, "request head size cap (431 beyond)")
	fs.DurationVar(&c.PingInterval, "ping-interval", 30*time.Second, "ping period of open connections")
	fs.DurationVar(&c.IdleTimeout, "idle-timeout", 75*time.Second, "close a connection silent for this long (4000)")
	fs.DurationVar(&c.CloseTimeout, "close-timeout", 3*time.Second, "wait for the client's close frame after ours")
	fs.DurationVar(&c.PollTimeout, "poll-timeout", 25*time.Second, "how long a long-poll request (GET /poll) is held when nothing is waiting")
	fs.IntVar(&c.MaxMessageBytes, "max-message-bytes", 4096, "largest message a client may send (1009 beyond)")
	fs.IntVar(&c.MaxPayloadBytes, "max-payload-bytes", 65536, "largest published payload (InvalidArgument beyond)")
	fs.IntVar(&c.MaxQueueBytes, "max-queue-bytes", 256<<10, "outbound bytes one connection may owe before it is closed as a slow consumer")
	fs.IntVar(&c.MailboxSize, "mailbox-size", 64, "recent messages kept per user for resume")
	fs.DurationVar(&c.MailboxTTL, "mailbox-ttl", 2*time.Minute, "how long a message waits for its user and stays replayable")
	fs.DurationVar(&c.DrainPeriod, "drain-period", 10*time.Second, "on SIGTERM, spread the 1001 closes over this long")
	fs.IntVar(&c.Loops, "loops", runtime.GOMAXPROCS(0), "epoll event loops")
	fs.IntVar(&c.BroadcastWriters, "broadcast-writers", runtime.GOMAXPROCS(0), "goroutines that write one broadcast, each to a share of the connections")
	fs.IntVar(&c.MigrateRate, "migrate-rate", 500, "users per second closed with 4003 \"moved\" when the ring gives them to another edge")
	origins := fs.String("allowed-origins", "", "comma-separated browser origins allowed besides the request's own host (https://*.example.com matches subdomains)")
	fs.BoolVar(&c.Dev, "dev", false, "development: allow any Origin (browser authentication stays on); serve gRPC without authentication or TLS on a non-loopback --grpc")
	secretFile := fs.String("jwt-secret-file", "", "comma-separated files with HS256 secrets, the current one first; all are accepted, for rotation (default: $PUSH_JWT_SECRET)")
	pubKeys := fs.String("jwt-public-keys", "", "comma-separated PEM files of RS256/EdDSA public keys also accepted")
	keyReload := fs.Duration("jwt-reload", 10*time.Second, "re-read the key files this often and apply changes without restarting (0: never)")
	gcPercent := fs.Int("gogc", 400, "Go GC target percentage (GOGC); the live heap is small per connection and garbage comes from publishes, so collecting less often cuts latency spikes; 0 keeps the runtime's setting")
	// Security of the other planes (docs/security.md): gRPC callers, etcd,
	// the admin port.
	var grpcAuth grpcauth.Config
	grpcAuth.RegisterFlags(fs)
	var etcdSec store.EtcdSecurity
	etcdSec.RegisterFlags(fs)
	var adminAuth admin.Auth
	adminAuth.RegisterFlags(fs)
	logLevel := fs.String("log-level", "info", "debug, info, warn or error")
	logFormat := fs.String("log-format", "json", "json or text")
	flagenv.SetUsage(fs, "PUSH", "edge [flags]", "Terminates browser WebSockets (GET /ws?uid=&token=&last_seq=), Server-Sent Events (GET /sse) and long-polls (GET /poll) on epoll and delivers pushes received over gRPC.")
	if _, err := flagenv.Parse(fs, "PUSH", args, nil); err != nil {
		return err
	}
	log, err := daemon.Logger(*logLevel, *logFormat)
	if err != nil {
		return err
	}
	if *gcPercent > 0 {
		debug.SetGCPercent(*gcPercent)
	}
	if c.GuestGrace == 0 {
		c.GuestGrace = 2**leaseTTL + time.Second
	}
	c.ID = uint32(*id)
	if *idFromHost {
		host, err := os.Hostname()
		if err != nil {
			return fmt.Errorf("--id-from-hostname: %w", err)
		}
		if c.ID, err = edge.IDFromHostname(host); err != nil {
			return fmt.Errorf("--id-from-hostname: %w", err)
		}
	}
	c.Logger = log
	if *origins != "" {
		c.AllowedOrigins = strings.Split(*origins, ",")
	}
	keyFiles := auth.ParseKeyFiles(*secretFile, *pubKeys)
	keyring, err := keyFiles.Load()
	if err != nil {
		return err
	}
	c.Verifier = keyring
	if *keyReload > 0 {
		kctx, stopKeys := context.WithCancel(context.Background())
		defer stopKeys()
		go keyFiles.Watch(kctx, keyring, *keyReload, log)
	}
	reg := admin.NewRegistry()
	c.Metrics = reg
	gauth, err := grpcauth.NewServer(grpcAuth, fmt.Sprintf("edge-%d", c.ID), log, reg)
	if err != nil {
		return err
	}
	if err := gauth.CheckListen(*grpcAddr, c.Dev); err != nil {
		return err
	}
	c.ClusterDial = gauth.ClusterDialOptions()

	soft, hard := rawtcp.FDLimit()
	log.Info("file descriptor limit", "soft", soft, "hard", hard)
	if w := rawtcp.BacklogWarning(c.Backlog); w != "" {
		log.Warn(w)
	}
	if uint64(c.MaxConns) > soft {
		log.Warn("--max-conns exceeds the descriptor limit; accepts will fail first", "max_conns", c.MaxConns, "nofile", soft)
	}

	var st store.Store
	var desired *ring.Ring
	if *ringURL != "" {
		if st, err = store.Open(*ringURL, log, store.WithEtcdSecurity(etcdSec)); err != nil {
			return err
		}
		defer st.Close()
		ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
		desired, err = edge.DesiredRing(ctx, st)
		cancel()
		if err != nil {
			return fmt.Errorf("--ring %s: %w", *ringURL, err)
		}
		if m, ok := desired.Member(c.ID); !ok {
			log.Warn("this edge is not in the ring: it owns no users until it is added", "id", c.ID, "ring_version", desired.Version())
		} else {
			for _, a := range [][3]string{{"ws", m.WS, *advWS}, {"grpc", m.GRPC, *advGRPC}} {
				if a[2] != "" && a[1] != a[2] {
					log.Warn("the ring names another address for this edge", "id", c.ID, "kind", a[0], "ring", a[1], "advertised", a[2])
				}
			}
		}
	}
	srv, err := edge.New(c)
	if err != nil {
		return err
	}
	if desired != nil {
		srv.SetRing(desired) // before serving: never a moment of owning everyone
	}
	// Room for a PublishMulti of MaxUserIDsPerCall ids of 128 bytes each.
	g, err := daemon.NewGRPC(*grpcAddr, c.MaxPayloadBytes+userid.MaxPerCall*140+64<<10, gauth.ServerOptions()...)
	if err != nil {
		return err
	}
	edge.NewService(srv).Register(g.Server)
	var joined atomic.Bool // with a store: ready only once following it (and, with etcd, registered)
	ready := func() error {
		if st != nil && !joined.Load() {
			return errors.New("not yet a member of the ring")
		}
		return srv.Ready()
	}
	var mem *edge.Membership
	var drainOnce sync.Once
	drained := make(chan struct{})
	drain := func(why string) {
		drainOnce.Do(func() {
			defer close(drained)
			log.Info("draining", "why", why, "drain_period", c.DrainPeriod)
			g.Health.Shutdown() // gRPC health NOT_SERVING for routers and SDKs
			ctx, cancel := context.WithTimeout(context.Background(), 2*c.DrainPeriod+c.CloseTimeout+5*time.Second)
			defer cancel()
			if mem != nil {
				// Draining in the store first: users move to their new
				// owners with 4003 and resume there; the rest get 1001.
				dctx, dcancel := context.WithTimeout(ctx, c.DrainPeriod)
				mem.Drain(dctx)
				dcancel()
			}
			if err := srv.Shutdown(ctx); err != nil {
				log.Warn("drain cut short", "err", err)
			}
		})
	}
	adm, err := admin.New(admin.Config{Addr: *adminAddr, Registry: reg, Ready: ready, Logger: log, Auth: adminAuth,
		Extra: map[string]http.Handler{
			// For a Kubernetes preStop hook: returns once the edge is drained.
			"/drain": http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
				go drain("admin /drain")
				select {
				case <-drained:
					fmt.Fprintln(w, "drained")
				case <-r.Context().Done():
				}
			}),
		}})
	if err != nil {
		return err
	}
	if err := srv.Start(); err != nil {
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
	if st != nil {
		// Registered only now that it serves: an edge is live for
		// everybody only while its lease is.
		if mem, err = edge.Join(srv, st, *leaseTTL); err != nil {
			return err
		}
		defer mem.Close()
		joined.Store(true)
	}
	log.Info("edge up", "id", c.ID, "ws", srv.Addr().String(), "grpc", g.Addr().String(), "admin", adm.Addr().String(),
		"grpc_tls", gauth.TLS(), "grpc_open", gauth.Open())

	select {
	case sig := <-daemon.Signal():
		drain("signal " + sig)
	case <-drained: // /drain finished first
	}
	<-drained
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	g.Stop(ctx)
	adm.Shutdown(ctx)
	log.Info("edge stopped")
	return nil
}
