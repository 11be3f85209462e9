package edge

import (
	"net/netip"
	"sync"
	"time"

	"golang.org/x/sys/unix"

	"github.com/pushcluster/push/pkg/rawtcp"
)

// ipLimiter is a token bucket of handshakes per client address: a browser
// that reconnects in a loop, or one address opening connections by the
// thousand, is answered 429 before its token costs a verification. The
// address is the browser's own from the router's PROXY header
// (--accept-proxy), else the peer's. Buckets idle for a minute are
// forgotten, so memory follows the addresses active now.
type ipLimiter struct {
	rate, burst float64

	mu      sync.Mutex
	buckets map[netip.Addr]*bucket
}

type bucket struct {
	tokens float64
	last   time.Time
}

func newIPLimiter(rate float64) *ipLimiter {
	return &ipLimiter{rate: rate, burst: max(1, 2*rate), buckets: map[netip.Addr]*bucket{}}
}

// allow takes one token for addr.
func (l *ipLimiter) allow(addr netip.Addr, now time.Time) bool {
	l.mu.Lock()
	defer l.mu.Unlock()
	b := l.buckets[addr]
	if b == nil {
		b = &bucket{tokens: l.burst, last: now}
		l.buckets[addr] = b
	}
	b.tokens = min(l.burst, b.tokens+now.Sub(b.last).Seconds()*l.rate)
	b.last = now
	if b.tokens < 1 {
		return false
	}
	b.tokens--
	return true
}

// sweep forgets buckets idle for a minute (they would be full again).
func (l *ipLimiter) sweep(now time.Time) {
	l.mu.Lock()
	defer l.mu.Unlock()
	for a, b := range l.buckets {
		if now.Sub(b.last) > time.Minute {
			delete(l.buckets, a)
		}
	}
}

// clientAddr is the browser's address for c: the PROXY header's source
// when one was read, else the socket's peer.
func (l *loop) clientAddr(c *conn) netip.Addr {
	if client, ok := c.m.Client(); ok {
		return client.Addr()
	}
	sa, err := unix.Getpeername(int(c.fd))
	if err != nil {
		return netip.Addr{}
	}
	if ta := rawtcp.SockaddrToTCP(sa); ta != nil {
		a, _ := netip.AddrFromSlice(ta.IP)
		return a.Unmap()
	}
	return netip.Addr{}
}

// admitClient applies the per-address handshake limit (when configured)
// and reports whether the handshake may go on; the refusal is the caller's
// to answer.
func (l *loop) admitClient(c *conn) bool {
	lim := l.s.limiter
	if lim == nil {
		return true
	}
	addr := l.clientAddr(c)
	if !addr.IsValid() {
		return true
	}
	if lim.allow(addr, time.Now()) {
		return true
	}
	l.s.m.hsRateLimited.Inc()
	l.s.log.Debug("handshake rate limited", "client", addr.String())
	return false
}
