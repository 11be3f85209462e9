package router

import (
	"crypto/tls"
	"errors"
	"io"
	"net"
	"net/http"
	"os"
	"sync"
	"time"

	"golang.org/x/sys/unix"

	"github.com/pushcluster/push/pkg/httphead"
	"github.com/pushcluster/push/pkg/rawtcp"
)

// TLS termination runs on the event loops like plaintext: the TLS listener
// is accepted from by the same loops, a TLS connection is a session like
// any other (same descriptor table, same dispatch, same non-blocking
// connect, same relay state and back-pressure), and an idle one holds no
// goroutine. What differs:
//
//   - The handshake and the request head are read by one goroutine per
//     connection, bounded by HeadTimeout: crypto/tls cannot resume a
//     handshake that a read interrupted (Conn.Handshake keeps its first
//     error), so it gets a blocking socket — a dup of the descriptor on
//     Go's own poller, closed as soon as the head is read. That goroutine
//     then dispatches the session as the loop does for plaintext and
//     ends.
//   - Once relaying, tls.Conn runs on the loop's goroutine over tlsSock, a
//     non-blocking net.Conn. A read that would block returns a net.Error
//     whose Temporary() is true, which crypto/tls passes up without
//     recording it (conn.go readRecordOrCCS: only non-temporary read
//     errors stick; the partial record stays in its input buffer), so the
//     next readiness resumes the record. Write errors always stick
//     (halfConn.setErrorLocked), so tlsSock.Write never fails for a full
//     socket: what the socket does not take becomes the session's
//     in-flight bytes toward the client, exactly like the plaintext relay,
//     and the edge is not read again until EPOLLOUT drained them.
//   - Decrypted bytes are written to the edge from the loop's scratch
//     buffer; there is no splice(2) path (the bytes must pass through user
//     space to be encrypted or decrypted anyway).
//
// What an idle TLS connection costs beyond a plaintext one is its tlsConn
// and the tls.Conn with its record-layer state and the buffers crypto/tls
// keeps (docs/decisions.md has the measurement and the floor).

// tlsConn is the TLS side of a session accepted on the TLS listener,
// found in Router.tlsTab by the client descriptor.
type tlsConn struct {
	tc   *tls.Conn
	sock tlsSock
	// head is the decrypted request head and whatever followed it,
	// replayed to the edge once the dial succeeded (nil afterwards).
	head []byte
	// hs is set while the handshake goroutine owns tc and sock.f
	// (guarded by session.mu).
	hs bool
	// more is set when a read was cut short by tlsReadRounds: tc may hold
	// records that no readiness of the socket will report (the loop's
	// goroutine only).
	more bool
}

// tlsReadRounds bounds the tls.Conn reads per event (each returns at most
// one record, 16 KiB), so one busy client does not starve the others.
const tlsReadRounds = 8

// tlsSock is the net.Conn under a session's tls.Conn: blocking on a dup of
// the descriptor (f, with deadlines) while the handshake goroutine owns
// it, non-blocking on the descriptor itself afterwards.
type tlsSock struct {
	fd int
	f  *os.File // nil once relaying
	s  *session
	r  *Router
}

// errWouldBlock is what tlsSock.Read returns for EAGAIN: temporary, so
// crypto/tls does not record it.
var errWouldBlock error = wouldBlock{}

type wouldBlock struct{}

func (wouldBlock) Error() string   { return "tls socket: no input ready" }
func (wouldBlock) Timeout() bool   { return true }
func (wouldBlock) Temporary() bool { return true }

func (k *tlsSock) Read(p []byte) (int, error) {
	if k.f != nil {
		return k.f.Read(p)
	}
	n, err := rawtcp.Read(k.fd, p)
	switch {
	case err == nil && n == 0:
		return 0, io.EOF
	case err == nil:
		return n, nil
	case retry(err):
		return 0, errWouldBlock
	}
	return 0, err
}

// Write takes all of p: what the socket does not take now is queued as the
// session's in-flight bytes toward the client (under session.mu, which
// every caller of the tls.Conn holds once relaying) and written on
// EPOLLOUT (flushLocked). Bytes already queued go first.
func (k *tlsSock) Write(p []byte) (int, error) {
	if k.f != nil {
		return k.f.Write(p)
	}
	s, r := k.s, k.r
	if f := s.fl[e2c]; f != nil {
		f.buf = append(f.buf, p...)
		r.m.inflight.Add(float64(len(p)))
		return len(p), nil
	}
	n, err := rawtcp.Write(k.fd, p)
	if n < len(p) {
		if err != nil && !retry(err) {
			return max(n, 0), err
		}
		n = max(n, 0)
		s.fl[e2c] = &inflight{buf: append([]byte(nil), p[n:]...)}
		r.m.inflight.Add(float64(len(p) - n))
	}
	return len(p), nil
}

// Close does nothing: the session closes the descriptor.
func (k *tlsSock) Close() error { return nil }

func (k *tlsSock) LocalAddr() net.Addr {
	sa, _ := unix.Getsockname(k.fd)
	return rawtcp.SockaddrToTCP(sa)
}

func (k *tlsSock) RemoteAddr() net.Addr {
	sa, _ := unix.Getpeername(k.fd)
	return rawtcp.SockaddrToTCP(sa)
}

func (k *tlsSock) SetDeadline(t time.Time) error {
	if k.f != nil {
		return k.f.SetDeadline(t)
	}
	return nil
}

func (k *tlsSock) SetReadDeadline(t time.Time) error {
	if k.f != nil {
		return k.f.SetReadDeadline(t)
	}
	return nil
}

func (k *tlsSock) SetWriteDeadline(t time.Time) error {
	if k.f != nil {
		return k.f.SetWriteDeadline(t)
	}
	return nil
}

var headBufs = sync.Pool{New: func() any { return new([]byte) }}

// tlsOf returns the TLS state of a TLS session that is not closed.
func (r *Router) tlsOf(s *session) *tlsConn { return r.tlsTab.Load(int(s.cfd)) }

// acceptTLS starts the handshake goroutine of a connection accepted on the
// TLS listener (on loop l's goroutine).
func (r *Router) acceptTLS(l *loop, s *session) {
	fd := int(s.cfd)
	d, err := unix.FcntlInt(uintptr(fd), unix.F_DUPFD_CLOEXEC, 0)
	if err != nil {
		r.m.acceptErrors.Inc()
		r.log.Warn("tls accept: dup", "err", err)
		unix.Close(fd)
		return
	}
	tl := &tlsConn{hs: true}
	// The dup shares the socket's O_NONBLOCK, so os.NewFile puts it on
	// Go's poller: reads and writes park the goroutine, with deadlines.
	tl.sock = tlsSock{fd: fd, f: os.NewFile(uintptr(d), "tls"), s: s, r: r}
	tl.tc = tls.Server(&tl.sock, r.cfg.TLS)
	s.tls = true
	r.tlsTab.Store(fd, tl)
	r.table.Store(fd, s)
	r.sessions.Add(1)
	r.tlsWG.Add(1)
	r.hsRunning.Add(1)
	go func() {
		defer r.tlsWG.Done()
		defer r.hsRunning.Add(-1)
		r.tlsHandshake(l, s, tl)
	}()
}

// handshakes returns the number of TLS handshake goroutines running.
func (r *Router) handshakes() int64 { return r.hsRunning.Load() }

// tlsHandshake runs the handshake, reads the request head (both within
// HeadTimeout of the accept, like a plaintext head), answers a head it
// refuses, and otherwise hands the session to dispatch and the loops.
func (r *Router) tlsHandshake(l *loop, s *session, tl *tlsConn) {
	f := tl.sock.f
	defer f.Close()
	f.SetDeadline(time.Now().Add(r.cfg.HeadTimeout))
	tc := tl.tc
	bp := headBufs.Get().(*[]byte)
	defer headBufs.Put(bp)
	if cap(*bp) < r.cfg.MaxHeadBytes {
		*bp = make([]byte, r.cfg.MaxHeadBytes)
	}
	b := (*bp)[:r.cfg.MaxHeadBytes]
	n, end := 0, 0
	for end == 0 {
		if n == len(b) {
			r.tlsRefuse(s, tl, rejTooLarge, refusal(http.StatusRequestHeaderFieldsTooLarge, rejTooLarge))
			return
		}
		m, err := tc.Read(b[n:])
		n += m
		var herr *httphead.Error
		if end, herr = httphead.HeadEnd(b[:n]); herr != nil {
			r.tlsRefuse(s, tl, rejBadRequest, herr)
			return
		}
		if end == 0 && err != nil {
			var ne net.Error
			if errors.As(err, &ne) && ne.Timeout() {
				r.m.headTimeouts.Inc()
				r.m.rejected.WithLabelValues(rejHeadTimeout).Inc()
			} else {
				r.m.rejected.WithLabelValues(rejEOF).Inc()
			}
			r.tlsEnd(s, tl)
			return
		}
	}
	var req httphead.Request
	key, label, refuse := r.extractKey(b[:end], &req)
	if refuse != nil {
		r.tlsRefuse(s, tl, label, refuse)
		return
	}
	if r.draining.Load() {
		r.tlsRefuse(s, tl, rejDraining, refusal(http.StatusServiceUnavailable, rejDraining))
		return
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.state == stClosed {
		return // a drain closed it meanwhile
	}
	// From here on the loops own tc, through the non-blocking socket.
	tl.hs, tl.sock.f = false, nil
	tl.head = append([]byte(nil), b[:n]...)
	s.su().key = string(key)
	r.dialNextLocked(l, s)
}

// tlsRefuse answers a refused head on the handshake goroutine (blocking,
// within the head deadline) and closes.
func (r *Router) tlsRefuse(s *session, tl *tlsConn, label string, e *httphead.Error) {
	r.m.rejected.WithLabelValues(label).Inc()
	tl.tc.Write(e.Append(nil))
	tl.tc.CloseWrite()
	r.tlsEnd(s, tl)
}

// tlsEnd closes a session whose handshake goroutine is done with it (the
// goroutine closes the dup afterwards, which releases the socket).
func (r *Router) tlsEnd(s *session, tl *tlsConn) {
	s.mu.Lock()
	tl.hs, tl.sock.f = false, nil
	r.closeLocked(s)
	s.mu.Unlock()
}

// tlsRejectLocked answers a TLS session that dispatch refused (503) and
// closes it; the tls.Conn is non-blocking by then, so the answer is sent
// as far as the socket takes it at once, like the plaintext refusal.
func (r *Router) tlsRejectLocked(s *session, resp []byte) {
	if tl := r.tlsOf(s); tl != nil && !tl.hs {
		tl.tc.Write(resp)
		tl.tc.CloseWrite()
		if s.fl[e2c] == nil {
			unix.Shutdown(int(s.cfd), unix.SHUT_WR)
		}
	}
	r.closeLocked(s)
}

// replayHeadLocked writes the decrypted head to the edge once connected
// (after the PROXY header, if any); what the edge socket does not take is
// in flight like any relayed bytes.
func (r *Router) replayHeadLocked(s *session) {
	tl := r.tlsOf(s)
	h := tl.head
	tl.head = nil
	r.count(c2e, len(h))
	n, err := rawtcp.Write(int(s.efd), h)
	if n < len(h) {
		if err != nil && !retry(err) {
			r.closeLocked(s)
			return
		}
		n = max(n, 0)
		s.fl[c2e] = &inflight{buf: h[n:]}
		r.m.inflight.Add(float64(len(h) - n))
	}
}

// closeTLSLocked drops a closing session's TLS state; a handshake still
// running is woken (its deadline set in the past) and ends by itself.
func (r *Router) closeTLSLocked(s *session) {
	tl := r.tlsOf(s)
	if tl == nil {
		return
	}
	if tl.hs {
		tl.sock.f.SetDeadline(time.Unix(1, 0))
	}
	tl.head = nil
	r.tlsTab.Clear(int(s.cfd), tl)
}

// tlsInLocked moves client → edge: decrypts what the client sent (records
// already buffered in the tls.Conn first) into the loop's scratch buffer
// and writes it to the edge.
func (l *loop) tlsInLocked(s *session) {
	r := l.r
	tl := r.tlsOf(s)
	tl.more = false
	n := 0
	var err error
	for i := 0; i < tlsReadRounds && n < copyMax; i++ {
		var m int
		m, err = tl.tc.Read(l.buf[n:copyMax])
		n += m
		if err != nil {
			break
		}
	}
	if err == nil {
		tl.more = true
	}
	if n > 0 {
		r.count(c2e, n)
		w, werr := rawtcp.Write(int(s.efd), l.buf[:n])
		if w < n {
			if werr != nil && !retry(werr) {
				r.closeLocked(s)
				return
			}
			w = max(w, 0)
			s.fl[c2e] = &inflight{buf: append([]byte(nil), l.buf[w:n]...)}
			r.m.inflight.Add(float64(n - w))
		}
	}
	switch {
	case err == nil || err == errWouldBlock:
	case errors.Is(err, io.EOF) || errors.Is(err, io.ErrUnexpectedEOF):
		// A close_notify or a FIN. The error sticks in the tls.Conn, so
		// with bytes still in flight the read after their flush ends the
		// direction.
		if s.fl[c2e] == nil {
			r.endLocked(s, c2e)
		}
	default:
		r.closeLocked(s) // a bad record, an alert, a reset
	}
}

// tlsOutLocked moves edge → client: one read of the edge socket, encrypted
// into records that tlsSock writes or keeps in flight.
func (l *loop) tlsOutLocked(s *session) {
	r := l.r
	n, err := rawtcp.Read(int(s.efd), l.buf[:copyMax])
	if n == 0 && err == nil {
		r.endLocked(s, e2c)
		return
	}
	if err != nil {
		if !retry(err) {
			r.closeLocked(s)
		}
		return
	}
	r.count(e2c, n)
	if _, err := r.tlsOf(s).tc.Write(l.buf[:n]); err != nil {
		r.closeLocked(s)
	}
}
