package router

import (
	"bytes"
	"crypto/tls"
	"errors"
	"io"
	"net"
	"net/http"
	"net/netip"
	"sync"
	"syscall"
	"time"

	"golang.org/x/sys/unix"

	"github.com/pushcluster/push/pkg/httphead"
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

func (r *Router) tlsReject(c net.Conn, label string, e *httphead.Error) {
	r.m.rejected.WithLabelValues(label).Inc()
	c.Write(e.Append(nil))
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
			r.tlsReject(tc, rejTooLarge, refusal(http.StatusRequestHeaderFieldsTooLarge, rejTooLarge))
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
	var req httphead.Request
	key, label, refuse := r.extractKey(b[:end+4], &req)
	if refuse != nil {
		r.tlsReject(tc, label, refuse)
		return
	}
	if r.draining.Load() {
		r.tlsReject(tc, rejDraining, refusal(http.StatusServiceUnavailable, rejDraining))
		return
	}
	ec, m, reason := r.dialTLSBackend(key)
	if ec == nil {
		r.tlsReject(tc, reason, refusal(http.StatusServiceUnavailable, reason))
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

// dialTLSBackend connects to the owner of key through dispatch, the owner
// choice and dial policy of the plaintext path, with blocking dials: the
// connection and its member, or nil and the rejection reason.
func (r *Router) dialTLSBackend(key []byte) (net.Conn, *member, string) {
	var (
		a  attempts
		ec net.Conn
		em *member
	)
	reason := r.dispatch(string(key), &a, func(m *member, to netip.AddrPort, src netip.Addr) (int, error) {
		d := net.Dialer{Timeout: r.cfg.ConnectTimeout, KeepAlive: -1}
		if r.cfg.KeepAlive > 0 {
			d.KeepAlive = r.cfg.KeepAlive
		}
		if src.IsValid() {
			d.LocalAddr = &net.TCPAddr{IP: src.AsSlice()}
		}
		d.Control = func(_, _ string, c syscall.RawConn) error {
			if src.IsValid() {
				c.Control(func(fd uintptr) {
					unix.SetsockoptInt(int(fd), unix.IPPROTO_IP, unix.IP_BIND_ADDRESS_NO_PORT, 1)
				})
			}
			return rawBuffers(c, r.cfg.RelayBuffer)
		}
		start := time.Now()
		c, err := d.Dial("tcp", to.String())
		switch {
		case err == nil:
			r.m.dial.Observe(time.Since(start).Seconds())
			ec, em = c, m
			return dialOK, nil
		case noPort(err):
			return dialNoPort, err
		case errors.Is(err, unix.EMFILE), errors.Is(err, unix.ENFILE):
			return dialLocal, err
		}
		return dialFailed, err
	})
	if reason != "" {
		return nil, nil, reason
	}
	return ec, em, ""
}
