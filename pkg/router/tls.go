package router

import (
	"bytes"
	"crypto/tls"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/netip"
	"slices"
	"sync"
	"syscall"
	"time"

	"golang.org/x/sys/unix"

	"github.com/pushcluster/push/pkg/proxyproto"
)

// TLS termination is the one path that does not run on the epoll loops:
// crypto/tls needs a blocking net.Conn, so each TLS connection costs a
// goroutine pair (one per direction), the tls.Conn's record buffers and two
// small copy buffers for its whole life — tens of KB where a plaintext
// relayed connection costs a session struct (the proxy bench reports both).
// Plaintext keeps the splice path; terminate TLS in front of the router when
// that cost matters.

// tlsCopyBuf is each direction's copy buffer: WebSocket frames of the push
// protocol are small, and a blocked Read holds its buffer.
const tlsCopyBuf = 4 << 10

var headBufs = sync.Pool{New: func() any { return new([]byte) }}

func reusePortControl(_, _ string, c syscall.RawConn) error {
	var serr error
	err := c.Control(func(fd uintptr) {
		serr = unix.SetsockoptInt(int(fd), unix.SOL_SOCKET, unix.SO_REUSEPORT, 1)
	})
	if err != nil {
		return err
	}
	return serr
}

type tlsConns struct {
	mu    sync.Mutex
	conns map[net.Conn]struct{}
}

func (r *Router) trackTLS(c net.Conn, add bool) {
	r.tls.mu.Lock()
	defer r.tls.mu.Unlock()
	if r.tls.conns == nil {
		r.tls.conns = map[net.Conn]struct{}{}
	}
	if add {
		r.tls.conns[c] = struct{}{}
	} else {
		delete(r.tls.conns, c)
	}
}

func (r *Router) closeTLS() {
	r.tls.mu.Lock()
	defer r.tls.mu.Unlock()
	for c := range r.tls.conns {
		c.Close()
	}
}

func (r *Router) serveTLS() {
	for {
		c, err := r.tlsLn.Accept()
		if err != nil {
			if r.draining.Load() || errors.Is(err, net.ErrClosed) {
				return
			}
			r.m.acceptErrors.Inc()
			r.log.Warn("tls accept", "err", err)
			time.Sleep(5 * time.Millisecond)
			continue
		}
		r.m.accepted.Inc()
		r.tlsWG.Add(1)
		go func() { defer r.tlsWG.Done(); r.serveTLSConn(c) }()
	}
}

func (r *Router) tlsReject(c net.Conn, status int, reason string) {
	r.m.rejected.WithLabelValues(reason).Inc()
	body := reasons[reason]
	fmt.Fprintf(c, "HTTP/1.1 %d %s\r\nContent-Type: text/plain; charset=utf-8\r\nContent-Length: %d\r\nConnection: close\r\n\r\n%s",
		status, http.StatusText(status), len(body), body)
}

func (r *Router) serveTLSConn(raw net.Conn) {
	r.trackTLS(raw, true)
	defer r.trackTLS(raw, false)
	defer raw.Close()
	raw.SetDeadline(time.Now().Add(r.cfg.HeadTimeout))
	tc := tls.Server(raw, r.cfg.TLS)
	bp := headBufs.Get().(*[]byte)
	if cap(*bp) < r.cfg.MaxHeadBytes {
		*bp = make([]byte, r.cfg.MaxHeadBytes)
	}
	b := (*bp)[:r.cfg.MaxHeadBytes]
	pooled := true
	defer func() {
		if pooled {
			headBufs.Put(bp)
		}
	}()
	n, end := 0, -1
	for end < 0 {
		if n == len(b) {
			r.tlsReject(tc, http.StatusRequestHeaderFieldsTooLarge, rejTooLarge)
			return
		}
		m, err := tc.Read(b[n:])
		n += m
		end = bytes.Index(b[:n], headEnd)
		if end < 0 && err != nil {
			var ne net.Error
			if errors.As(err, &ne) && ne.Timeout() {
				r.m.headTimeouts.Inc()
				r.m.rejected.WithLabelValues(rejHeadTimeout).Inc()
			} else {
				r.m.rejected.WithLabelValues(rejEOF).Inc()
			}
			return
		}
	}
	key, status, reason := r.extractKey(b[:end+4])
	if status != 0 {
		r.tlsReject(tc, status, reason)
		return
	}
	if r.draining.Load() {
		r.tlsReject(tc, http.StatusServiceUnavailable, rejDraining)
		return
	}
	ec, m, reason := r.dialTLSBackend(key)
	if ec == nil {
		r.tlsReject(tc, http.StatusServiceUnavailable, reason)
		return
	}
	r.trackTLS(ec, true)
	defer r.trackTLS(ec, false)
	defer ec.Close()
	var pre []byte
	if r.cfg.SendProxyV2 {
		src, _ := netip.ParseAddrPort(raw.RemoteAddr().String())
		dst, _ := netip.ParseAddrPort(raw.LocalAddr().String())
		pre = proxyproto.AppendV2(pre, src, dst)
	}
	// The head was consumed from the TLS stream, so it is replayed here,
	// with whatever the client sent after it.
	if _, err := ec.Write(append(pre, b[:n]...)); err != nil {
		return
	}
	pooled = false // the head buffer goes back now, not after the relay
	headBufs.Put(bp)
	raw.SetDeadline(time.Time{})
	m.routed.Inc()
	r.m.tlsActive.Inc()
	r.tlsOpen.Add(1)
	defer func() { r.m.tlsActive.Dec(); r.tlsOpen.Add(-1) }()
	done := make(chan struct{})
	go func() {
		defer close(done)
		copyHalf(tc, ec, r, e2c)
		tc.CloseWrite()
		if t, ok := raw.(*net.TCPConn); ok {
			t.CloseWrite()
		}
	}()
	copyHalf(ec, tc, r, c2e)
	ec.(*net.TCPConn).CloseWrite()
	<-done
}

// copyHalf copies src to dst until EOF or an error, with a small buffer
// (io.Copy would pick a 32 KiB one, or none at all through ReadFrom, and
// keep it for the connection's life).
func copyHalf(dst io.Writer, src io.Reader, r *Router, d int) {
	buf := make([]byte, tlsCopyBuf)
	for {
		n, err := src.Read(buf)
		if n > 0 {
			r.count(d, n)
			if _, werr := dst.Write(buf[:n]); werr != nil {
				return
			}
		}
		if err != nil {
			return
		}
	}
}

// dialTLSBackend is dialNextLocked for the blocking TLS path: the owner
// among live members that have not failed, the next source address on
// EADDRNOTAVAIL.
func (r *Router) dialTLSBackend(key []byte) (net.Conn, *member, string) {
	var failed []uint32
	for {
		t := r.routes.Load()
		id, ok := t.ring.LookupLive(key, func(id uint32) bool {
			m := t.members[id]
			return m != nil && m.up.Load() && !slices.Contains(failed, id)
		})
		if !ok {
			return nil, nil, rejNoEdge
		}
		if len(failed) > 0 {
			r.m.redispatch.Inc()
		}
		m := t.members[id]
		addr := m.wsAddr()
		port := addr.Port()
		if span := r.cfg.EdgePortSpan; span > 1 {
			port += uint16(m.port.Add(1) % uint32(span))
		}
		to := netip.AddrPortFrom(addr.Addr(), port).String()
		srcs := r.src4
		if !addr.Addr().Is4() {
			srcs = r.src6
		}
		tries := max(len(srcs), 1)
		first := int(r.srcNext.Add(1))
		exhausted := true
		for i := 0; i < tries; i++ {
			d := net.Dialer{Timeout: r.cfg.ConnectTimeout, KeepAlive: -1}
			if r.cfg.KeepAlive > 0 {
				d.KeepAlive = r.cfg.KeepAlive
			}
			if len(srcs) > 0 {
				d.LocalAddr = &net.TCPAddr{IP: srcs[(first+i)%len(srcs)].AsSlice()}
				d.Control = func(_, _ string, c syscall.RawConn) error {
					return c.Control(func(fd uintptr) {
						unix.SetsockoptInt(int(fd), unix.IPPROTO_IP, unix.IP_BIND_ADDRESS_NO_PORT, 1)
					})
				}
			}
			start := time.Now()
			c, err := d.Dial("tcp", to)
			if err == nil {
				r.m.dial.Observe(time.Since(start).Seconds())
				return c, m, ""
			}
			if errors.Is(err, unix.EADDRNOTAVAIL) || errors.Is(err, unix.EADDRINUSE) {
				continue
			}
			exhausted = false
			r.m.dialErrors.Inc()
			r.log.Debug("dial edge (tls)", "edge", id, "err", err)
			break
		}
		if exhausted {
			r.m.ports.Inc()
			r.log.Error("no local port left on any source address", "edge", id)
			return nil, nil, rejPorts
		}
		failed = append(failed, id)
	}
}
