package router

import (
	"context"
	"net"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"
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
// comes up after Rise consecutive successes. The gRPC client connection is
// kept between checks (one per member, not per check).
func (r *Router) check(ctx context.Context, m *member) {
	var probe func(context.Context) error
	switch r.cfg.Check {
	case CheckGRPC:
		cc, err := grpc.NewClient(m.grpc, grpc.WithTransportCredentials(insecure.NewCredentials()))
		if err != nil {
			r.log.Error("health check client", "edge", m.id, "grpc", m.grpc, "err", err)
			return
		}
		defer cc.Close()
		hc := healthpb.NewHealthClient(cc)
		probe = func(ctx context.Context) error {
			resp, err := hc.Check(ctx, &healthpb.HealthCheckRequest{}, grpc.WaitForReady(false))
			if err != nil {
				return err
			}
			if resp.Status != healthpb.HealthCheckResponse_SERVING {
				return errNotServing
			}
			return nil
		}
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

type checkError string

func (e checkError) Error() string { return string(e) }

const errNotServing = checkError("health: not serving")
