package router

import (
	"bytes"
	"fmt"
	"net/http"
	"net/netip"
	"sync"
	"time"

	"golang.org/x/sys/unix"

	"github.com/pushcluster/push/pkg/evloop"
	"github.com/pushcluster/push/pkg/httphead"
	"github.com/pushcluster/push/pkg/poller"
	"github.com/pushcluster/push/pkg/proxyproto"
	"github.com/pushcluster/push/pkg/rawtcp"
	"github.com/pushcluster/push/pkg/ring"
	"github.com/pushcluster/push/pkg/wheel"
)

type sessState uint8

const (
	stHead   sessState = iota // accepted, request head not complete yet
	stDial                    // connecting to an edge
	stRelay                   // moving bytes both ways
	stClosed                  // descriptors closed
)

// Directions of a relay.
const (
	c2e = 0 // client → edge
	e2c = 1 // edge → client
)

// session is one client connection and, once dialed, its edge connection.
// Its size is the main per-connection cost of the router, so everything used
// only while connecting hangs off setup (nil once relaying) and bytes in
// flight off fl (nil while idle).
//
// mu guards every field and every syscall on cfd and efd (descriptors are
// closed only under mu, so nobody touches a number that was reused). Both
// descriptors are watched by the same loop, so only that loop's goroutine,
// the ticker (deadlines) and Shutdown ever take mu.
type session struct {
	mu         sync.Mutex
	state      sessState
	loop       uint8
	cint, eint poller.Event // interest registered for cfd and efd
	cpolled    bool         // cfd is in the loop's epoll
	epolled    bool
	lowat      bool    // SO_RCVLOWAT raised on cfd while waiting for the head
	tls        bool    // accepted on the TLS listener: its tlsConn is r.tlsTab's entry for cfd
	timed      bool    // a deadline is scheduled in the wheel
	ended      [2]bool // a direction saw EOF and shut its destination down
	cfd, efd   int32   // efd is -1 until a dial starts
	cgen, egen uint32
	edge       *member
	tm         wheel.Timer[*session]
	fl         [2]*inflight
	setup      *setup
}

// inflight is what a blocked destination has not taken yet: either a pipe
// holding n bytes or a right-sized copy of a small read.
type inflight struct {
	p   *pipe
	n   int
	buf []byte
}

// setup is the state of a session that is not relaying yet.
type setup struct {
	key       string   // the user key (copied out of the peek buffer)
	tries     attempts // members whose dial failed, skipped on redispatch
	started   time.Time
	proxyDone bool // the upstream PROXY header was consumed
	// client and local are the addresses the upstream PROXY header gave
	// (valid only when it carried them).
	client, local netip.AddrPort
}

func (s *session) su() *setup {
	if s.setup == nil {
		s.setup = &setup{}
	}
	return s.setup
}

// fds returns the source and destination descriptors of direction d.
func (s *session) fds(d int) (src, dst int) {
	if d == c2e {
		return int(s.cfd), int(s.efd)
	}
	return int(s.efd), int(s.cfd)
}

// loop is one event loop (package evloop: an epoll instance, the
// goroutine that waits on it, accept batching) with the router's own
// state. Peeks, small copies and TLS records use its scratch buffer, so an
// idle session owns none.
type loop struct {
	id      int
	r       *Router
	ev      *evloop.Loop
	poll    *poller.Poller   // ev.Poll
	buf     []byte           // scratch, owned by this loop's goroutine
	req     httphead.Request // the head being routed, reused (owned like buf)
	discard []byte           // where a consumed PROXY header goes
}

// copyMax is the largest transfer that goes through the scratch buffer:
// a read that fills it means a bulk flow, which continues with splice(2)
// through a 64 KiB pipe. BenchmarkRelay (loopback, this 2-core machine):
// read+write costs 18 µs for a 1 KiB message against 20 µs spliced, breaks
// even around 64 KiB, and loses at 256 KiB (104 µs against 87-99 µs).
// Push traffic is small frames, so nearly everything takes the copy path.
const copyMax = 64 << 10

func newLoop(r *Router, id int) (*loop, error) {
	size := max(64<<10, r.cfg.MaxHeadBytes+proxyproto.MaxV2Len+1)
	l := &loop{id: id, r: r, buf: make([]byte, size), discard: make([]byte, proxyproto.MaxV2Len)}
	ev, err := evloop.New(id, l)
	if err != nil {
		return nil, err
	}
	l.ev, l.poll = ev, ev.Poll
	return l, nil
}

func (l *loop) run() {
	if err := l.ev.Run(); err != nil {
		l.r.log.Error("event loop", "loop", l.id, "err", err)
	}
}

// Event handles readiness of a session's descriptor (evloop.Handler).
func (l *loop) Event(fd int, tag uint32, ev poller.Event) {
	r := l.r
	s := r.table.Load(fd)
	if s == nil {
		return
	}
	s.mu.Lock()
	client := fd == int(s.cfd) && tag == s.cgen
	edge := fd == int(s.efd) && tag == s.egen
	if s.state == stClosed || (!client && !edge) {
		s.mu.Unlock()
		return // stale event for a closed or reused descriptor
	}
	switch s.state {
	case stHead:
		l.headLocked(s, ev)
	case stDial:
		if edge {
			r.connectedLocked(l, s, ev)
		} else if ev&(poller.Err|poller.Hup) != 0 {
			r.closeLocked(s) // the client vanished while we dialed
		}
	case stRelay:
		l.relayEventLocked(s, client, ev)
	}
	s.mu.Unlock()
}

// AcceptError counts a failed accept (evloop.Handler).
func (l *loop) AcceptError(err error, temporary bool) {
	l.r.m.acceptErrors.Inc()
	if temporary {
		l.r.log.Warn("accept", "err", err)
	} else {
		l.r.log.Error("accept", "err", err)
	}
}

// Accept takes a new connection (evloop.Handler). A plaintext one is
// peeked at right away: with TCP_DEFER_ACCEPT its head has usually
// arrived, so most connections are dialed without waiting in epoll first.
// A TLS one gets its handshake goroutine (tls.go).
func (l *loop) Accept(_ *evloop.Loop, ln *rawtcp.Listener, fd int) {
	r := l.r
	if !r.table.Fits(fd) || r.draining.Load() {
		unix.Close(fd)
		return
	}
	r.m.accepted.Inc()
	s := &session{cfd: int32(fd), efd: -1, cgen: r.table.Gen(), loop: uint8(l.id)}
	s.tm.Value = s
	if ln == r.tlsLn {
		r.acceptTLS(l, s)
		return
	}
	r.table.Store(fd, s)
	r.sessions.Add(1)
	s.mu.Lock()
	l.headLocked(s, 0)
	s.mu.Unlock()
}

// watch sets the events epoll reports for one of s's descriptors
// (level-triggered, so a descriptor that is not drained is reported again;
// interest changes only on back-pressure, EOF and state changes). No
// interest takes the descriptor out of epoll: EPOLLHUP and EPOLLERR cannot
// be masked, and a socket the peer finished with while its bytes wait for
// the other side would otherwise be reported in a loop.
func (l *loop) watch(s *session, client bool, ev poller.Event) error {
	fd, gen, cur, polled := int(s.efd), s.egen, &s.eint, &s.epolled
	if client {
		fd, gen, cur, polled = int(s.cfd), s.cgen, &s.cint, &s.cpolled
	}
	if ev == 0 {
		*cur = 0
		if !*polled {
			return nil
		}
		*polled = false
		return l.poll.Stop(fd)
	}
	if *polled && *cur == ev {
		return nil
	}
	var err error
	if *polled {
		err = l.poll.ModifyLevel(fd, gen, ev)
	} else if err = l.poll.StartLevel(fd, gen, ev); err == nil {
		*polled = true
	}
	*cur = ev
	return err
}

// headLocked peeks at the client's bytes until the request head is
// complete (the bytes stay queued in the kernel for the relay), then routes.
func (l *loop) headLocked(s *session, ev poller.Event) {
	r := l.r
	limit := r.cfg.MaxHeadBytes
	if r.cfg.AcceptProxy && (s.setup == nil || !s.setup.proxyDone) {
		limit += proxyproto.MaxV2Len
	}
	n, err := recvPeek(int(s.cfd), l.buf[:limit])
	if err == unix.EAGAIN || err == unix.EINTR {
		l.waitHead(s, 0)
		return
	}
	if n <= 0 {
		r.m.rejected.WithLabelValues(rejEOF).Inc()
		r.closeLocked(s)
		return
	}
	data := l.buf[:n]
	if r.cfg.AcceptProxy && (s.setup == nil || !s.setup.proxyDone) {
		h, hn, err := proxyproto.Parse(data)
		if err == proxyproto.ErrIncomplete && ev&poller.Hup == 0 {
			l.waitHead(s, n)
			return
		}
		if err != nil {
			r.m.rejected.WithLabelValues(rejProxy).Inc()
			r.log.Debug("bad PROXY header", "err", err)
			r.closeLocked(s)
			return
		}
		// Consume exactly the header; the head after it stays queued.
		if got, _ := rawtcp.Read(int(s.cfd), l.discard[:hn]); got != hn {
			r.closeLocked(s)
			return
		}
		st := s.su()
		st.proxyDone = true
		if h.HasAddrs() {
			st.client, st.local = h.Source, h.Dest
		}
		data = data[hn:]
	}
	end, herr := httphead.HeadEnd(data[:min(len(data), r.cfg.MaxHeadBytes)])
	if herr != nil {
		r.rejectLocked(s, rejBadRequest, herr)
		return
	}
	if end == 0 {
		switch {
		case len(data) >= r.cfg.MaxHeadBytes:
			r.rejectLocked(s, rejTooLarge, refusal(http.StatusRequestHeaderFieldsTooLarge, rejTooLarge))
		case ev&poller.Hup != 0:
			// The client shut down writing before finishing its head.
			r.m.rejected.WithLabelValues(rejEOF).Inc()
			r.closeLocked(s)
		default:
			l.waitHead(s, len(data))
		}
		return
	}
	key, label, refuse := r.extractKey(data[:end], &l.req)
	if refuse != nil {
		r.rejectLocked(s, label, refuse)
		return
	}
	if r.draining.Load() {
		r.rejectLocked(s, rejDraining, refusal(http.StatusServiceUnavailable, rejDraining))
		return
	}
	s.su().key = string(key)
	r.dialNextLocked(l, s)
}

// waitHead waits for more of the head. The peeked bytes stay readable, so
// SO_RCVLOWAT is raised past them: epoll reports the socket again only when
// more bytes (or a FIN) arrive, not on every wait.
func (l *loop) waitHead(s *session, queued int) {
	r := l.r
	if queued > 0 {
		if err := setRcvLowat(int(s.cfd), queued+1); err != nil {
			r.closeLocked(s)
			return
		}
		s.lowat = true
	}
	if err := l.watch(s, true, poller.Read); err != nil {
		r.closeLocked(s)
		return
	}
	if !s.timed {
		s.timed = true
		r.schedule(s, time.Now().Add(r.cfg.HeadTimeout))
	}
}

// extractKey parses a complete head with httphead (the edge's own parser,
// so a head the edge would refuse for its syntax is refused here with the
// same status) into req and finds the user key in it. On failure it
// returns the rejection label and answer.
func (r *Router) extractKey(head []byte, req *httphead.Request) (key []byte, label string, refuse *httphead.Error) {
	if err := httphead.Parse(head, req); err != nil {
		return nil, rejBadRequest, err.(*httphead.Error)
	}
	switch r.key.kind {
	case "url_param":
		// Like HAProxy, an empty value is a key (the edge refuses it).
		if v, ok := req.Param(r.key.name); ok {
			return v, "", nil
		}
	case "hdr":
		// Only the first line of that name counts, as in HAProxy.
		if v, n := req.Get(r.key.name); n > 0 {
			if v := ring.FirstHeaderElement(v); len(v) > 0 {
				return v, "", nil
			}
		}
	case "cookie":
		for _, f := range req.Fields {
			if bytes.EqualFold(f.Name, []byte("Cookie")) {
				if v, ok := ring.CookieValue(f.Value, r.key.name); ok && len(v) > 0 {
					return v, "", nil
				}
			}
		}
	}
	return nil, rejNoKey, refusal(http.StatusBadRequest, rejNoKey)
}

// dialNextLocked starts a connection to the owner of the session's key
// through dispatch (the owner choice and dial policy shared with the TLS
// path): the view's owner, or after failed dials the view's owner with the
// failed members taken as down; a 503 when none is left.
func (r *Router) dialNextLocked(l *loop, s *session) {
	st := s.setup
	if reason := r.dispatch(st.key, &st.tries, func(m *member, to netip.AddrPort, src netip.Addr) (int, error) {
		return r.connectLocked(l, s, m, to, src)
	}); reason != "" {
		r.rejectLocked(s, reason, refusal(http.StatusServiceUnavailable, reason))
	}
}

// connectLocked starts a non-blocking connect to m at to, bound to src
// when valid (the outcome for dispatch; dialOK: in progress, finished by
// connectedLocked or the connect deadline).
func (r *Router) connectLocked(l *loop, s *session, m *member, to netip.AddrPort, src netip.Addr) (int, error) {
	sa, fam := sockaddr(to)
	fd, err := unix.Socket(fam, unix.SOCK_STREAM|unix.SOCK_NONBLOCK|unix.SOCK_CLOEXEC, 0)
	if err != nil {
		return dialLocal, fmt.Errorf("socket: %w", err)
	}
	unix.SetsockoptInt(fd, unix.IPPROTO_TCP, unix.TCP_NODELAY, 1)
	// Before connect, so the window scale offered in the SYN fits it.
	if err := setBuffers(fd, r.cfg.RelayBuffer); err != nil {
		unix.Close(fd)
		return dialLocal, fmt.Errorf("socket buffers: %w", err)
	}
	if r.cfg.KeepAlive > 0 {
		setKeepAlive(fd, int(max(r.cfg.KeepAlive/time.Second, 1)))
	}
	if src.IsValid() {
		// The port is picked at connect time, per destination, so one
		// source address serves ~28k connections to each edge port.
		bsa, _ := sockaddr(netip.AddrPortFrom(src, 0))
		unix.SetsockoptInt(fd, unix.IPPROTO_IP, unix.IP_BIND_ADDRESS_NO_PORT, 1)
		if err := unix.Bind(fd, bsa); err != nil {
			unix.Close(fd)
			if noPort(err) {
				return dialNoPort, err
			}
			return dialLocal, fmt.Errorf("bind: %w", err)
		}
	}
	err = unix.Connect(fd, sa)
	if err != nil && err != unix.EINPROGRESS {
		unix.Close(fd)
		if noPort(err) {
			return dialNoPort, err
		}
		return dialFailed, err
	}
	if !r.table.Fits(fd) {
		unix.Close(fd)
		return dialLocal, unix.EMFILE
	}
	s.efd, s.egen, s.epolled, s.eint = int32(fd), r.table.Gen(), false, 0
	r.table.Store(fd, s)
	s.edge = m
	s.state = stDial
	s.setup.started = time.Now()
	if err := l.watch(s, false, poller.Write); err != nil {
		r.closeEdgeLocked(s)
		return dialLocal, err
	}
	// The client is watched again once the relay starts. If it already
	// is (its head took several reads), it must stop reporting input
	// while the dial is pending: level-triggered, that would spin.
	if s.cpolled {
		if err := l.watch(s, true, 0); err != nil {
			r.closeEdgeLocked(s)
			return dialLocal, err
		}
	}
	s.timed = true
	r.schedule(s, s.setup.started.Add(r.cfg.ConnectTimeout))
	return dialOK, nil
}

// connectedLocked finishes a dial: on success the PROXY header (if any) is
// written and the relay starts; on failure the next owner is tried.
func (r *Router) connectedLocked(l *loop, s *session, ev poller.Event) {
	// EPOLLOUT alone means the connect succeeded; a failed one also
	// reports EPOLLERR, and only then is SO_ERROR worth a system call.
	var err error
	if ev&(poller.Err|poller.Hup) != 0 {
		if err = sockErr(int(s.efd)); err == nil {
			err = unix.ECONNRESET
		}
	}
	if err == nil && r.cfg.SendProxyV2 {
		var b [64]byte
		src, dst := r.clientAddrs(s)
		hdr := proxyproto.AppendV2(b[:0], src, dst)
		if n, werr := rawtcp.Write(int(s.efd), hdr); n != len(hdr) {
			err = fmt.Errorf("write PROXY header: %d of %d bytes: %v", n, len(hdr), werr)
		}
	}
	if err != nil {
		r.dialFailedLocked(l, s, err)
		return
	}
	r.m.dial.Observe(time.Since(s.setup.started).Seconds())
	if s.lowat {
		s.lowat = false
		setRcvLowat(int(s.cfd), 1)
	}
	if s.timed {
		s.timed = false
		r.unschedule(s)
	}
	s.setup = nil
	s.state = stRelay
	s.edge.routed.Inc()
	r.m.active.Inc()
	if s.tls {
		r.m.tlsActive.Inc()
		// The head was decrypted by the handshake goroutine: replay it.
		r.replayHeadLocked(s)
	}
	// The head is still queued on the client socket (TLS: more records
	// may wait in the tls.Conn): move it now rather than after another
	// epoll round. (connectedLocked runs only from Event, on l's
	// goroutine, which owns l.buf.)
	if s.state == stRelay {
		l.moveLocked(s, c2e)
	}
	if s.state == stRelay {
		l.updateLocked(s)
	}
}

// clientAddrs returns the client's address and the address it connected
// to, from the upstream PROXY header when there was one.
func (r *Router) clientAddrs(s *session) (netip.AddrPort, netip.AddrPort) {
	if st := s.setup; st != nil && st.client.IsValid() {
		return st.client, st.local
	}
	var src, dst netip.AddrPort
	if sa, err := unix.Getpeername(int(s.cfd)); err == nil {
		src = addrPort(sa)
	}
	if sa, err := unix.Getsockname(int(s.cfd)); err == nil {
		dst = addrPort(sa)
	}
	return src, dst
}

// dialFailedLocked drops the edge socket and redispatches.
func (r *Router) dialFailedLocked(l *loop, s *session, err error) {
	m := s.edge
	r.closeEdgeLocked(s)
	r.m.dialErrors.Inc()
	r.log.Debug("dial edge failed", "edge", m.id, "err", err)
	s.setup.tries.fail(m.id, err)
	s.state = stHead // not relaying; dialNextLocked moves it to stDial again
	r.dialNextLocked(l, s)
}

func (r *Router) closeEdgeLocked(s *session) {
	if s.efd < 0 {
		return
	}
	r.table.Clear(int(s.efd), s)
	unix.Close(int(s.efd))
	s.efd, s.epolled, s.eint, s.edge = -1, false, 0, nil
}

// onTimer runs a session's deadline: head timeout, connect timeout, or the
// end of the wait for the second half of a close.
func (r *Router) onTimer(s *session, now time.Time) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.timed = false
	switch s.state {
	case stHead:
		r.m.headTimeouts.Inc()
		r.m.rejected.WithLabelValues(rejHeadTimeout).Inc()
		r.closeLocked(s)
	case stDial:
		r.dialFailedLocked(r.loops[s.loop], s, unix.ETIMEDOUT)
	case stRelay:
		if s.ended[c2e] || s.ended[e2c] {
			r.closeLocked(s)
		}
	}
}

// reasons gives the response body per rejection reason.
var reasons = map[string]string{
	rejNoKey:       "missing user key",
	rejBadRequest:  "not an HTTP/1.x request",
	rejTooLarge:    "request head too large",
	rejNoEdge:      "no edge available",
	rejPorts:       "router out of ports",
	rejDraining:    "router draining",
	rejProxy:       "bad PROXY header",
	rejEOF:         "eof",
	rejHeadTimeout: "head timeout",
}

// refusal is the answer for a rejection label.
func refusal(status int, label string) *httphead.Error {
	return &httphead.Error{Status: status, Reason: reasons[label]}
}

// rejectLocked counts a rejection under label, answers with e (and the
// headers its status needs, see httphead.Error.Append) and closes. The
// peeked head is read off first: closing a socket with unread bytes sends
// a reset that can destroy the answer before the client reads it.
func (r *Router) rejectLocked(s *session, label string, e *httphead.Error) {
	r.m.rejected.WithLabelValues(label).Inc()
	resp := e.Append(nil)
	if s.tls {
		r.tlsRejectLocked(s, resp)
		return
	}
	fd := int(s.cfd)
	var b [4096]byte
	for i := 0; i < 32; i++ {
		if n, _ := rawtcp.Read(fd, b[:]); n < len(b) {
			break
		}
	}
	rawtcp.Write(fd, resp)
	unix.Shutdown(fd, unix.SHUT_WR)
	r.closeLocked(s)
}

// closeLocked closes both descriptors and gives back what s borrowed.
func (r *Router) closeLocked(s *session) {
	if s.state == stClosed {
		return
	}
	if s.state == stRelay {
		r.m.active.Dec()
		if s.tls {
			r.m.tlsActive.Dec()
		}
	}
	s.state = stClosed
	if s.tls {
		r.closeTLSLocked(s)
	}
	r.table.Clear(int(s.cfd), s)
	unix.Close(int(s.cfd))
	r.closeEdgeLocked(s)
	for d, f := range s.fl {
		if f != nil {
			r.m.inflight.Sub(float64(f.n + len(f.buf)))
			if f.p != nil {
				r.pipes.discard(f.p) // holds bytes nobody will read
			}
		}
		s.fl[d] = nil
	}
	s.setup = nil
	if s.timed {
		s.timed = false
		r.unschedule(s)
	}
	r.sessions.Add(-1)
}
