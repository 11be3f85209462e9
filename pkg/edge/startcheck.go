package edge

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials/insecure"
	healthpb "google.golang.org/grpc/health/grpc_health_v1"
	"google.golang.org/grpc/status"

	"github.com/pushcluster/push/pkg/ring"
	"github.com/pushcluster/push/pkg/store"
)

// Errors CheckStart returns, for callers that branch on them (cmd/edge
// exits with code 3 for both).
var (
	// ErrAddressMismatch: the ring names other addresses for this edge's
	// id than the ones it serves on, so routers and SDKs would dial
	// somebody else (or nobody).
	ErrAddressMismatch = errors.New("the ring names other addresses for this edge")
	// ErrIDLive: another edge with this id holds a live lease.
	ErrIDLive = errors.New("another edge with this id is live")
)

// StartCheck is what CheckStart compares.
type StartCheck struct {
	ID       uint32
	WS, GRPC string        // the addresses this edge is reached at (Options.Advertised)
	LeaseTTL time.Duration // how long a lease outlives its edge (this edge's --lease-ttl)
	// ProbeTimeout bounds the health check of the address a live lease's
	// edge is reached at (default 2s).
	ProbeTimeout time.Duration
	// Dial are the options of that health check: the cluster's TLS and
	// credential (Config.ClusterDial; plaintext when none).
	Dial []grpc.DialOption
	Log  *slog.Logger
}

// CheckStart runs before an edge binds its ports: its ring entry (in r)
// must name the addresses it serves on, and no other edge with its id may
// be live in st.
//
// A live lease of this id is another edge's unless it is the lease of this
// edge's previous life (a crash, then a restart within the lease's TTL):
// for a member of the ring, whoever answers the gRPC health check at the
// member's address (which is this edge's, not bound yet) is the other
// edge, and when nobody answers the lease is a leftover that Register
// takes over. For an id the ring does not name there is no address to
// ask, so CheckStart waits up to LeaseTTL plus a second for the lease to
// lapse; one that is still renewed after that has a live edge behind it.
func CheckStart(ctx context.Context, st store.Store, r *ring.Ring, c StartCheck) error {
	if c.ProbeTimeout <= 0 {
		c.ProbeTimeout = 2 * time.Second
	}
	if c.Log == nil {
		c.Log = slog.Default()
	}
	m, inRing := r.Member(c.ID)
	if inRing {
		var diffs []string
		if m.WS != c.WS {
			diffs = append(diffs, fmt.Sprintf("ws %s (this edge: %s)", m.WS, c.WS))
		}
		if m.GRPC != c.GRPC {
			diffs = append(diffs, fmt.Sprintf("grpc %s (this edge: %s)", m.GRPC, c.GRPC))
		}
		if len(diffs) > 0 {
			return fmt.Errorf("%w: ring version %d names member %d (%s) at %s; start it with --listen/--grpc (or --advertise-ws/--advertise-grpc) matching its entry, or change the entry",
				ErrAddressMismatch, r.Version(), c.ID, m.Name, joinAnd(diffs))
		}
	}
	ls, ok := st.(store.Leaser)
	if !ok {
		return nil
	}
	deadline := time.Now().Add(c.LeaseTTL + time.Second)
	for {
		live, err := ls.ReadLive(ctx)
		if err != nil {
			return fmt.Errorf("read the leases: %w", err)
		}
		l, held := live[c.ID]
		if !held {
			return nil
		}
		if inRing {
			pctx, cancel := context.WithTimeout(ctx, c.ProbeTimeout)
			answered := answers(pctx, m.GRPC, c.Dial)
			cancel()
			if answered {
				return fmt.Errorf("%w: member %d (%s) holds a live lease (incarnation %q) and an edge answers at %s; stop it first, or give this edge another id",
					ErrIDLive, c.ID, m.Name, l.Incarnation, m.GRPC)
			}
			c.Log.Info("taking over the lease of this id's previous life: nobody answers at its address", "id", c.ID, "incarnation", l.Incarnation)
			return nil
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("%w: id %d is not in ring version %d but holds a lease (incarnation %q) that is still renewed after %v; stop that edge first, or give this edge another id",
				ErrIDLive, c.ID, r.Version(), l.Incarnation, c.LeaseTTL+time.Second)
		}
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-time.After(100 * time.Millisecond):
		}
	}
}

// answers reports whether a gRPC server answers the health check at addr
// (with any status: a draining edge is still alive).
func answers(ctx context.Context, addr string, opts []grpc.DialOption) bool {
	if len(opts) == 0 {
		opts = []grpc.DialOption{grpc.WithTransportCredentials(insecure.NewCredentials())}
	}
	cc, err := grpc.NewClient(addr, opts...)
	if err != nil {
		return false
	}
	defer cc.Close()
	_, err = healthpb.NewHealthClient(cc).Check(ctx, &healthpb.HealthCheckRequest{})
	switch status.Code(err) {
	case codes.OK, codes.NotFound, codes.Unimplemented:
		return true
	}
	return false
}

func joinAnd(s []string) string {
	if len(s) == 2 {
		return s[0] + " and " + s[1]
	}
	return s[0]
}
