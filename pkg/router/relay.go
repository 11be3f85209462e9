package router

import (
	"sync"
	"time"

	"golang.org/x/sys/unix"

	"github.com/pushcluster/push/pkg/poller"
	"github.com/pushcluster/push/pkg/rawtcp"
)

// relayEventLocked handles readiness on one side of a relayed session.
func (l *loop) relayEventLocked(s *session, client bool, ev poller.Event) {
	r := l.r
	if ev&poller.Err != 0 {
		r.closeLocked(s) // reset or unreachable: nothing more will move
		return
	}
	// The direction writing into this descriptor, and the one reading it.
	in, out := c2e, e2c
	if client {
		in, out = e2c, c2e
	}
	if ev&poller.Write != 0 && s.fl[in] != nil {
		l.flushLocked(s, in)
		if s.state != stRelay {
			return
		}
	}
	if ev&(poller.Read|poller.Hup) != 0 || (client && s.tls && l.r.tlsOf(s).more) {
		// A hang-up still leaves the socket's queued bytes to read, and
		// those still in flight to the other side; moveLocked reads only
		// when nothing is in flight, and updateLocked takes a finished
		// socket out of epoll meanwhile. (Events of one batch may also be
		// stale: they were read before the previous ones changed s.)
		l.moveLocked(s, out)
	}
	if s.state == stRelay {
		l.updateLocked(s)
	}
}

// updateLocked sets both descriptors' interest from the relay state: read a
// source only while its direction is open and nothing of it is in flight
// (back-pressure), watch a destination for EPOLLOUT only while it owes bytes.
func (l *loop) updateLocked(s *session) {
	var cev, eev poller.Event
	if !s.ended[c2e] && s.fl[c2e] == nil {
		cev |= poller.Read
	}
	if !s.ended[e2c] && s.fl[e2c] == nil {
		eev |= poller.Read
	}
	if s.fl[e2c] != nil || (s.tls && l.r.tlsOf(s).more && cev&poller.Read != 0) {
		// EPOLLOUT while the client owes bytes; for TLS also while the
		// tls.Conn may hold records that no readiness of the socket will
		// report (a read cut short by tlsReadRounds): the writable
		// socket brings the session back on the next round.
		cev |= poller.Write
	}
	if s.fl[c2e] != nil {
		eev |= poller.Write
	}
	if l.watch(s, true, cev) != nil || l.watch(s, false, eev) != nil {
		l.r.closeLocked(s)
	}
}

func (r *Router) count(d, n int) {
	if d == c2e {
		r.m.bytesC2E.Add(float64(n))
	} else {
		r.m.bytesE2C.Add(float64(n))
	}
}

func retry(err error) bool { return err == unix.EAGAIN || err == unix.EINTR }

// moveLocked moves what is queued on direction d's source: small reads
// through the loop's scratch buffer (read + write, like HAProxy without
// splicing); a read that fills copyMax means a bulk flow, which continues
// through a pooled pipe with splice(2) so the payload never enters user
// space. Whatever the destination does not take stays in flight and stops
// the source until EPOLLOUT. Bounded per event so one busy connection does
// not starve the others (level-triggered epoll reports the rest).
func (l *loop) moveLocked(s *session, d int) {
	r := l.r
	if s.fl[d] != nil || s.ended[d] {
		return
	}
	if s.tls {
		if d == c2e {
			l.tlsInLocked(s)
		} else {
			l.tlsOutLocked(s)
		}
		return
	}
	src, dst := s.fds(d)
	n, err := rawtcp.Read(src, l.buf[:copyMax])
	if n == 0 && err == nil {
		r.endLocked(s, d)
		return
	}
	if err != nil {
		if !retry(err) {
			r.closeLocked(s)
		}
		return
	}
	r.count(d, n)
	w, err := rawtcp.Write(dst, l.buf[:n])
	if w < n {
		if err != nil && !retry(err) {
			r.closeLocked(s)
			return
		}
		w = max(w, 0)
		s.fl[d] = &inflight{buf: append([]byte(nil), l.buf[w:n]...)}
		r.m.inflight.Add(float64(n - w))
		return
	}
	if n == copyMax {
		l.spliceLocked(s, d)
	}
}

// pipeSize is the capacity asked of pooled pipes, spliceMax bounds one
// splice(2) call and spliceRounds the pipe loads moved per event. A pipe
// stuck behind a client that stopped reading is part of what the router
// holds for it (Config.RelayBuffer), so it stays at the kernel's default
// 64 KiB rather than 1 MiB: bulk moves take more splices, push frames are
// small and take the copy path anyway (copyMax).
const (
	pipeSize     = 64 << 10
	spliceMax    = pipeSize
	spliceRounds = 4
)

func (l *loop) spliceLocked(s *session, d int) {
	r := l.r
	p, err := r.pipes.get()
	if err != nil {
		return // out of descriptors: the level-triggered source reports again
	}
	r.m.splices.Inc()
	src, dst := s.fds(d)
	for i := 0; i < spliceRounds; i++ {
		n, err := spliceMove(src, p.w, spliceMax)
		if n == 0 && err == nil {
			r.pipes.put(p)
			r.endLocked(s, d)
			return
		}
		if err != nil {
			r.pipes.put(p) // empty: every round drains it
			if !retry(err) {
				r.closeLocked(s)
			}
			return
		}
		r.count(d, n)
		left := n
		for left > 0 {
			m, err := spliceMove(p.r, dst, left)
			if err != nil {
				if !retry(err) {
					r.pipes.discard(p)
					r.closeLocked(s)
					return
				}
				s.fl[d] = &inflight{p: p, n: left}
				r.m.inflight.Add(float64(left))
				return
			}
			left -= m
		}
	}
	r.pipes.put(p)
}

// flushLocked writes what direction d owes its destination after EPOLLOUT
// and, once drained, resumes reading the source (whose readiness was not
// watched meanwhile).
func (l *loop) flushLocked(s *session, d int) {
	r := l.r
	f := s.fl[d]
	_, dst := s.fds(d)
	if f.p != nil {
		for f.n > 0 {
			m, err := spliceMove(f.p.r, dst, f.n)
			if err != nil {
				if !retry(err) {
					r.closeLocked(s)
				}
				return
			}
			f.n -= m
			r.m.inflight.Sub(float64(m))
		}
		r.pipes.put(f.p)
	} else {
		for len(f.buf) > 0 {
			w, err := rawtcp.Write(dst, f.buf)
			if err != nil {
				if !retry(err) {
					r.closeLocked(s)
				}
				return
			}
			f.buf = f.buf[w:]
			r.m.inflight.Sub(float64(w))
		}
	}
	s.fl[d] = nil
	if s.ended[d] {
		// Only TLS ends a direction with bytes in flight (its close_notify
		// alert): the shutdown waited for them.
		unix.Shutdown(dst, unix.SHUT_WR)
		return
	}
	l.moveLocked(s, d)
}

// endLocked propagates an EOF: the destination's writing side is shut down
// (half-close) and the session closes once both directions ended, or
// FinTimeout after the first.
func (r *Router) endLocked(s *session, d int) {
	s.ended[d] = true
	_, dst := s.fds(d)
	if s.tls && d == e2c {
		// The client's TLS stream ends with close_notify; it may wait
		// behind ciphertext the client has not taken (flushLocked shuts
		// down once it is out).
		r.tlsOf(s).tc.CloseWrite()
	}
	if s.fl[d] == nil {
		unix.Shutdown(dst, unix.SHUT_WR)
	}
	if s.ended[c2e] && s.ended[e2c] {
		r.closeLocked(s)
		return
	}
	s.timed = true
	r.schedule(s, time.Now().Add(r.cfg.FinTimeout))
}

// pipe is a kernel pipe used as the splice(2) intermediary.
type pipe struct{ r, w int }

// pipePool lends pipes to transfers in progress; an idle session holds
// none. mu is a leaf lock.
type pipePool struct {
	mu   sync.Mutex
	free []*pipe
	max  int
}

func (pp *pipePool) get() (*pipe, error) {
	pp.mu.Lock()
	if n := len(pp.free); n > 0 {
		p := pp.free[n-1]
		pp.free = pp.free[:n-1]
		pp.mu.Unlock()
		return p, nil
	}
	pp.mu.Unlock()
	var fds [2]int
	if err := unix.Pipe2(fds[:], unix.O_NONBLOCK|unix.O_CLOEXEC); err != nil {
		return nil, err
	}
	// Explicit, so a host whose default differs still bounds what a
	// pipe can hold; spliceMax never asks for more than this.
	if _, err := unix.FcntlInt(uintptr(fds[1]), unix.F_SETPIPE_SZ, pipeSize); err != nil {
		unix.Close(fds[0])
		unix.Close(fds[1])
		return nil, err
	}
	return &pipe{r: fds[0], w: fds[1]}, nil
}

// put returns an empty pipe.
func (pp *pipePool) put(p *pipe) {
	pp.mu.Lock()
	if len(pp.free) < pp.max {
		pp.free = append(pp.free, p)
		p = nil
	}
	pp.mu.Unlock()
	if p != nil {
		pp.discard(p)
	}
}

// discard closes a pipe (one that still holds bytes cannot be reused).
func (pp *pipePool) discard(p *pipe) {
	unix.Close(p.r)
	unix.Close(p.w)
}

func (pp *pipePool) drain() {
	pp.mu.Lock()
	free := pp.free
	pp.free = nil
	pp.mu.Unlock()
	for _, p := range free {
		pp.discard(p)
	}
}
