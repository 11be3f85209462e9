package router

import (
	"errors"
	"net"
	"net/netip"
	"slices"

	"golang.org/x/sys/unix"

	"github.com/pushcluster/push/pkg/owner"
)

// Which member a connection goes to, and what happens when it cannot be
// reached, is decided here once for the plaintext path (loop.go, non-blocking
// connects on the epoll loops) and the TLS path (tls.go, blocking dials on
// the connection's goroutine): both call dispatch with their own way of
// making one connection attempt.
//
// The owner is the view's (package owner, the function edges and SDKs call
// with the same store inputs): view.Owner(key) first, and after dials to
// members F failed, view.OwnerExcept(key, F) — the member that would own the
// user were those down, which is the successor edges and SDKs pick once the
// failed owner's lease expires. Each member is dialed at most once per
// connection; with none left the client gets a 503. The router's health
// check plays no part: a member the view holds live is dialed whatever the
// probe says, one it does not is never dialed.

// Outcomes of one connection attempt (connectFunc).
const (
	dialOK     = iota // connected (TLS) or connecting (plaintext)
	dialFailed        // the member refused, reset or timed out: the next owner is tried
	dialNoPort        // no local port from this source address: the next source is tried
	dialLocal         // a local error (out of descriptors...): 503, no redispatch
)

// Reasons a connection was redispatched: the label values of
// push_router_redispatches_total, named after what the failed attempt met.
const (
	redisRefused    = "refused"    // the owner refused or reset the connection
	redisTimeout    = "timeout"    // connect did not finish within ConnectTimeout
	redisUnresolved = "unresolved" // the owner's ws address does not resolve (yet)
	redisError      = "error"      // anything else (e.g. the PROXY header could not be written)
)

var redisReasons = []string{redisRefused, redisTimeout, redisUnresolved, redisError}

// errUnresolved is a dial to a member whose ws name does not resolve.
var errUnresolved = errors.New("ws address does not resolve yet")

// attempts is one connection's dispatch state: the members whose dial
// failed, and why the last one did.
type attempts struct {
	failed []uint32
	why    string
}

// fail records that the dial to id failed with err.
func (a *attempts) fail(id uint32, err error) {
	a.failed = append(a.failed, id)
	a.why = failReason(err)
}

func failReason(err error) string {
	var ne net.Error
	switch {
	case errors.Is(err, errUnresolved):
		return redisUnresolved
	case errors.Is(err, unix.ETIMEDOUT), errors.As(err, &ne) && ne.Timeout():
		return redisTimeout
	case errors.Is(err, unix.ECONNREFUSED), errors.Is(err, unix.ECONNRESET), errors.Is(err, unix.EHOSTUNREACH),
		errors.Is(err, unix.ENETUNREACH), errors.Is(err, unix.ECONNABORTED), errors.Is(err, unix.EPIPE):
		return redisRefused
	}
	return redisError
}

// chooseOwner is the routing decision: the view's owner of key, or, once
// the members in failed were dialed in vain, the view's owner with them
// taken as down.
func chooseOwner(v *owner.View, key string, failed []uint32) (uint32, bool) {
	if len(failed) == 0 {
		return v.Owner(key)
	}
	return v.OwnerExcept(key, func(id uint32) bool { return slices.Contains(failed, id) })
}

// connectFunc makes one connection attempt to member m at to, bound to src
// (invalid: the kernel picks the source), and returns its outcome.
type connectFunc func(m *member, to netip.AddrPort, src netip.Addr) (int, error)

// dispatch is the dial policy both paths share: it picks the owner of key
// (chooseOwner) among the members a has not seen fail, resolves the port
// (EdgePortSpan) and tries connect from each source address in rotation
// until one has a free port. It returns "" once connect reported dialOK,
// else the rejection reason for the 503. A dial that fails later (a
// plaintext connect that completes with an error or times out) is recorded
// with a.fail and dispatch is called again with the same a.
func (r *Router) dispatch(key string, a *attempts, connect connectFunc) string {
	for {
		t := r.routes.Load()
		if t == nil {
			return rejNoEdge
		}
		id, ok := chooseOwner(t.view, key, a.failed)
		if !ok {
			return rejNoEdge
		}
		if len(a.failed) > 0 {
			r.m.redispatch.WithLabelValues(a.why).Inc()
		}
		m := t.members[id]
		if m == nil { // cannot happen: members are built from the view's ring
			a.fail(id, errUnresolved)
			continue
		}
		addr := m.wsAddr()
		if !addr.IsValid() {
			r.m.dialErrors.Inc()
			r.log.Debug("dial edge", "edge", id, "ws", m.ws, "err", errUnresolved)
			a.fail(id, errUnresolved)
			continue
		}
		to := r.target(m, addr)
		srcs := r.src4
		if !to.Addr().Unmap().Is4() {
			srcs = r.src6
		}
		res, err := dialNoPort, error(nil)
		first := int(r.srcNext.Add(1))
		for i := 0; i < max(len(srcs), 1) && res == dialNoPort; i++ {
			var src netip.Addr
			if len(srcs) > 0 {
				src = srcs[(first+i)%len(srcs)]
			}
			res, err = connect(m, to, src)
		}
		switch res {
		case dialOK:
			return ""
		case dialFailed:
			r.m.dialErrors.Inc()
			r.log.Debug("dial edge", "edge", id, "addr", to.String(), "err", err)
			a.fail(id, err)
		case dialNoPort:
			r.m.ports.Inc()
			r.log.Error("no local port left on any source address: add --source-addr addresses or widen net.ipv4.ip_local_port_range",
				"edge", id, "addr", to.String(), "sources", len(srcs), "err", err)
			return rejPorts
		default:
			r.log.Warn("dial edge: local error", "edge", id, "err", err)
			return rejNoEdge
		}
	}
}

// target is the address to dial for m: its resolved ws address, with the
// port rotated over EdgePortSpan.
func (r *Router) target(m *member, addr netip.AddrPort) netip.AddrPort {
	port := addr.Port()
	if span := r.cfg.EdgePortSpan; span > 1 {
		port += uint16(m.port.Add(1) % uint32(span))
	}
	return netip.AddrPortFrom(addr.Addr(), port)
}

// noPort reports whether a connect error means that the source address has
// no local port left for that destination (try the next source).
func noPort(err error) bool {
	return errors.Is(err, unix.EADDRNOTAVAIL) || errors.Is(err, unix.EADDRINUSE)
}
