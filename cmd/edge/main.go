// Command edge terminates browser WebSockets and delivers pushes to users.
// Run `edge --help` for its flags; each also reads PUSH_<FLAG> from the
// environment. Exit codes: 0 drained after a signal, 1 failed, 2 bad flags,
// 3 refused by the ring store (another address in its ring entry, or its
// id already live).
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"log/slog"
	"net/http"
	"os"
	"runtime/debug"
	"sync"
	"sync/atomic"
	"time"

	"github.com/prometheus/client_golang/prometheus"

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
	var o edge.Options
	var sec daemon.Security
	fs := flag.NewFlagSet("edge", flag.ContinueOnError)
	o.BindFlags(fs)
	sec.BindFlags(fs)
	flagenv.SetUsage(fs, "PUSH", "edge [flags]", "Terminates browser WebSockets (GET /ws?uid=&token=&last_seq=), Server-Sent Events (GET /sse) and long-polls (GET /poll) on epoll and delivers pushes received over gRPC.\n\n"+
		"Exit codes: 0 drained after SIGTERM/SIGINT, 1 failed, 2 bad flags or arguments, 3 refused by the ring store (its entry names other addresses, or another edge with this id is live).")
	if err := daemon.ParseFlags(fs, args); err != nil {
		return err
	}
	log, err := o.Log.Logger()
	if err != nil {
		return err
	}
	if err := o.Resolve(os.Hostname); err != nil {
		return err
	}
	if o.GOGC > 0 {
		debug.SetGCPercent(o.GOGC)
	}
	c := &o.Config
	c.Logger = log
	stopKeys, err := loadKeys(&o, log)
	if err != nil {
		return err
	}
	defer stopKeys()
	reg := admin.NewRegistry()
	c.Metrics, c.AdminAddr = reg, o.Admin // the lease publishes where the metrics are (the cluster console reads them)
	warnLimits(c, log)
	if err := sec.GRPC.CheckBrowserSecrets(o.JWTSecretFile); err != nil {
		return daemon.Usage(err)
	}
	gauth, err := grpcauth.NewServer(sec.GRPC, fmt.Sprintf("edge-%d", c.ID), log, reg)
	if err != nil {
		return err
	}
	if err := gauth.CheckListen(o.GRPC, c.Dev); err != nil {
		return err
	}
	c.ClusterDial = gauth.ClusterDialOptions()

	var st store.Store
	var desired *ring.Ring
	if o.Ring != "" {
		if st, desired, err = openRing(&o, sec.Etcd, log); err != nil {
			return err
		}
		defer st.Close()
	}
	srv, err := edge.New(*c)
	if errors.Is(err, edge.ErrConfig) {
		return daemon.Usage(err)
	}
	if err != nil {
		return err
	}
	if desired != nil {
		srv.SetRing(desired) // before serving: never a moment of owning everyone
	}
	return serve(&o, srv, st, reg, gauth, sec.Admin, log)
}

// loadKeys sets the token verifier from the key flags and, with
// --jwt-reload, re-reads the files until the returned stop is called.
func loadKeys(o *edge.Options, log *slog.Logger) (stop func(), err error) {
	keyFiles := auth.ParseKeyFiles(o.JWTSecretFile, o.JWTPublic)
	keyring, err := keyFiles.Load()
	if err != nil {
		return nil, err
	}
	o.Config.Verifier = keyring
	if o.JWTReload <= 0 {
		return func() {}, nil
	}
	ctx, cancel := context.WithCancel(context.Background())
	go keyFiles.Watch(ctx, keyring, o.JWTReload, log)
	return cancel, nil
}

func warnLimits(c *edge.Config, log *slog.Logger) {
	soft, hard := rawtcp.FDLimit()
	log.Info("file descriptor limit", "soft", soft, "hard", hard)
	if w := rawtcp.BacklogWarning(c.Backlog); w != "" {
		log.Warn(w)
	}
	if uint64(c.MaxConns) > soft {
		log.Warn("--max-conns exceeds the descriptor limit; accepts will fail first", "max_conns", c.MaxConns, "nofile", soft)
	}
}

// openRing opens the ring store, reads the ring and checks that this edge
// may start against it (edge.CheckStart): a refusal is ExitRefused.
func openRing(o *edge.Options, etcd store.EtcdSecurity, log *slog.Logger) (store.Store, *ring.Ring, error) {
	st, err := store.Open(o.Ring, log, store.WithEtcdSecurity(etcd))
	if err != nil {
		return nil, nil, fmt.Errorf("--ring %s: %w", o.Ring, err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second+o.LeaseTTL)
	defer cancel()
	desired, err := edge.DesiredRing(ctx, st)
	if err != nil {
		st.Close()
		return nil, nil, fmt.Errorf("--ring %s: %w", o.Ring, err)
	}
	id := o.Config.ID
	if _, ok := desired.Member(id); !ok {
		log.Warn("this edge is not in the ring: it owns no users until it is added", "id", id, "ring_version", desired.Version())
	}
	ws, grpcAddr := o.Advertised()
	err = edge.CheckStart(ctx, st, desired, edge.StartCheck{ID: id, WS: ws, GRPC: grpcAddr, LeaseTTL: o.LeaseTTL, Log: log, Dial: o.Config.ClusterDial})
	if err != nil {
		st.Close()
		if errors.Is(err, edge.ErrAddressMismatch) || errors.Is(err, edge.ErrIDLive) {
			return nil, nil, daemon.Refused(err)
		}
		return nil, nil, fmt.Errorf("--ring %s: %w", o.Ring, err)
	}
	return st, desired, nil
}

// serve runs the edge until a signal (or the admin /drain) has drained it.
func serve(o *edge.Options, srv *edge.Server, st store.Store, reg *prometheus.Registry, gauth *grpcauth.Server, adminAuth admin.Auth, log *slog.Logger) error {
	c := &o.Config
	// Room for a PublishMulti of MaxUserIDsPerCall ids of 128 bytes each,
	// and for a full PublishBatch (ids, keys and framing of every request).
	g, err := daemon.NewGRPC(o.GRPC, max(c.MaxPayloadBytes+userid.MaxPerCall*140,
		max(edge.MaxBatchBytes, c.MaxPayloadBytes)+edge.MaxBatchRequests*(userid.MaxLen+64+32))+64<<10, gauth.ServerOptions()...)
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
	d := &drainer{srv: srv, g: g, log: log, period: c.DrainPeriod, closeTimeout: c.CloseTimeout, done: make(chan struct{})}
	adm, err := admin.New(admin.Config{Addr: o.Admin, Registry: reg, Ready: ready, Logger: log, Auth: adminAuth,
		Extra: map[string]http.Handler{"/drain": d}})
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
		mem, err := edge.Join(srv, st, o.LeaseTTL)
		if err != nil {
			return err
		}
		defer mem.Close()
		d.setMembership(mem)
		joined.Store(true)
	}
	log.Info("edge up", "id", c.ID, "ws", srv.Addr().String(), "grpc", g.Addr().String(), "admin", adm.Addr().String(),
		"grpc_tls", gauth.TLS(), "grpc_open", gauth.Open())

	select {
	case sig := <-daemon.Signal():
		d.drain("signal " + sig)
	case <-d.done: // /drain finished first
	}
	<-d.done
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	g.Stop(ctx)
	adm.Shutdown(ctx)
	log.Info("edge stopped")
	return nil
}

// drainer drains the edge once, on a signal or on the admin /drain (a
// Kubernetes preStop hook: it answers once the edge is drained).
type drainer struct {
	srv                  *edge.Server
	g                    *daemon.GRPC
	log                  *slog.Logger
	period, closeTimeout time.Duration
	once                 sync.Once
	done                 chan struct{}

	mu  sync.Mutex
	mem *edge.Membership // nil without a store, or until joined
}

func (d *drainer) setMembership(m *edge.Membership) {
	d.mu.Lock()
	d.mem = m
	d.mu.Unlock()
}

func (d *drainer) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	go d.drain("admin /drain")
	select {
	case <-d.done:
		fmt.Fprintln(w, "drained")
	case <-r.Context().Done():
	}
}

func (d *drainer) drain(why string) {
	d.once.Do(func() {
		defer close(d.done)
		d.log.Info("draining", "why", why, "drain_period", d.period)
		d.g.Health.Shutdown() // gRPC health NOT_SERVING for routers and SDKs
		ctx, cancel := context.WithTimeout(context.Background(), 2*d.period+d.closeTimeout+5*time.Second)
		defer cancel()
		d.mu.Lock()
		mem := d.mem
		d.mu.Unlock()
		if mem != nil {
			// Draining in the store first: users move to their new
			// owners with 4003 and resume there; the rest get 1001.
			dctx, dcancel := context.WithTimeout(ctx, d.period)
			mem.Drain(dctx)
			dcancel()
		}
		if err := d.srv.Shutdown(ctx); err != nil {
			d.log.Warn("drain cut short", "err", err)
		}
	})
}
