package router

import (
	"context"
	"net"
	"slices"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/backoff"
	healthpb "google.golang.org/grpc/health/grpc_health_v1"
)

// startCheckersLocked starts a checker for every member without one.
// Called with r.mu held.
func (r *Router) startCheckersLocked() {
	if r.cfg.Check == CheckNone || r.draining.Load() {
		return
	}
	for _, m := range r.members {
		if r.checkers[m] != nil {
			continue
		}
		ctx, cancel := context.WithCancel(context.Background())
		r.checkers[m] = cancel
		r.wg.Add(1)
		go func() { defer r.wg.Done(); r.check(ctx, m) }()
	}
}

// check probes one member every CheckInterval with HAProxy's rise/fall
// rule: an up member goes down after Fall consecutive failures, a down one
// comes up after Rise consecutive successes.
func (r *Router) check(ctx context.Context, m *member) {
	var probe func(context.Context) error
	switch r.cfg.Check {
	case CheckGRPC:
		g := &grpcProbe{target: m.grpc, interval: r.cfg.CheckInterval, timeout: r.cfg.CheckTimeout, dial: r.cfg.ClusterDial}
		defer g.close()
		probe = g.probe
	case CheckTCP:
		d := net.Dialer{}
		probe = func(ctx context.Context) error {
			c, err := d.DialContext(ctx, "tcp", m.ws)
			if err == nil {
				c.Close()
			}
			return err
		}
	}
	t := time.NewTicker(r.cfg.CheckInterval)
	defer t.Stop()
	ok, bad := 0, 0
	for {
		// Pods keep their names across restarts but not their IPs: look
		// the name up again before each check.
		if a, err := resolve(m.ws); err == nil {
			if old := m.wsAddr(); old != a {
				m.addr.Store(&a)
				if old.IsValid() {
					r.log.Info("edge address changed", "edge", m.id, "ws", m.ws, "from", old.String(), "to", a.String())
				}
			}
		}
		cctx, cancel := context.WithTimeout(ctx, r.cfg.CheckTimeout)
		err := probe(cctx)
		if err == nil && !m.wsAddr().IsValid() {
			err = checkError("health: ws address does not resolve")
		}
		cancel()
		if ctx.Err() != nil {
			return
		}
		up := m.up.Load()
		if err == nil {
			ok, bad = ok+1, 0
			if !up && ok >= r.cfg.Rise {
				m.up.Store(true)
				m.upGauge.Set(1)
				r.log.Info("edge up", "edge", m.id, "ws", m.ws, "checks_passed", ok)
			}
		} else {
			ok, bad = 0, bad+1
			if up && bad >= r.cfg.Fall {
				m.up.Store(false)
				m.upGauge.Set(0)
				r.log.Warn("edge down", "edge", m.id, "ws", m.ws, "checks_failed", bad, "err", err)
			}
		}
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
	}
}

// grpcProbe is the gRPC health check of one member. It keeps its client
// connection between checks while they get an answer (one connection per
// member, not one per check), and drops it after a call that failed: the
// next check dials a fresh connection, so every check of a down member is
// one real connection attempt, bounded by CheckTimeout.
//
// Why not one connection for good: while the edge is down, a channel backs
// off between reconnects (1 s × 1.6 per attempt, ±20 %, up to 2 minutes by
// default) and in between fails every call at once with its cached
// TRANSIENT_FAILURE, so a restarted edge stayed down for seconds after it
// was back (15-18 s with rise 2 × interval 2 s). Capping the backoff at the
// interval alone still leaves up to 1.2 intervals before the next attempt,
// then Rise more checks: beyond rise × interval + 1 s at the default 2 s.
// Calling ResetConnectBackoff/Connect before each check instead would tie
// the check's outcome to the channel's state machine (a call made before
// the new attempt ends still fails on the cached error unless it waits for
// ready, and then a refusal shows as a timeout). A fresh connection has no
// history: its first call waits for its first attempt and fails only if
// that attempt fails, with that attempt's error. A down member costs one
// connection setup per interval; an up one, nothing more than before.
// The connect parameters also bound a kept connection's own reconnects,
// should its transport break between two checks: backoff at most the
// interval, and a connection attempt given about the check timeout
// (MinConnectTimeout) rather than gRPC's default 20 s.
type grpcProbe struct {
	target            string
	dial              []grpc.DialOption // Config.ClusterDial
	interval, timeout time.Duration
	cc                *grpc.ClientConn
	hc                healthpb.HealthClient
}

func (g *grpcProbe) probe(ctx context.Context) error {
	if g.cc == nil {
		bo := backoff.DefaultConfig
		bo.BaseDelay = min(bo.BaseDelay, g.interval)
		bo.MaxDelay = g.interval
		cc, err := grpc.NewClient(g.target, append(slices.Clip(g.dial),
			grpc.WithConnectParams(grpc.ConnectParams{Backoff: bo, MinConnectTimeout: g.timeout}))...)
		if err != nil {
			return err
		}
		g.cc, g.hc = cc, healthpb.NewHealthClient(cc)
	}
	resp, err := g.hc.Check(ctx, &healthpb.HealthCheckRequest{}, grpc.WaitForReady(false))
	if err != nil {
		g.close()
		return err
	}
	if resp.Status != healthpb.HealthCheckResponse_SERVING {
		return errNotServing // it answered: the connection is fine
	}
	return nil
}

func (g *grpcProbe) close() {
	if g.cc != nil {
		g.cc.Close()
		g.cc, g.hc = nil, nil
	}
}

type checkError string

func (e checkError) Error() string { return string(e) }

const errNotServing = checkError("health: not serving")
