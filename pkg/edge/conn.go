package edge

import (
	"sync"
	"time"

	"golang.org/x/sys/unix"

	"github.com/pushcluster/push/pkg/rawtcp"
	"github.com/pushcluster/push/pkg/registry"
	"github.com/pushcluster/push/pkg/wheel"
	"github.com/pushcluster/push/pkg/wire"
)

// connState is the edge's view of a connection: the protocol machine's
// phase (wire.Phase), copied into the conn after each transition the edge
// applies, with stClosed once the descriptor is closed. The write path,
// the registry and the moves read it under mu.
type connState = wire.Phase

const (
	stHandshake = wire.AwaitingHead // accepted, request head not yet complete
	stOpen      = wire.Open         // upgraded, or an SSE stream or long-poll answered 200
	stClosing   = wire.Closing      // close frame, close event or poll answer sent, waiting for the peer
	stClosed    = wire.Closed       // descriptor closed
)

// conn is one client socket. Its size is the main per-connection cost, so
// every field is here on purpose and rarely used state hangs off pointers
// that are nil while the connection is idle (the protocol machine's own
// rare state included).
//
// mu guards every field and every syscall on fd (a descriptor is closed only
// under mu, so no goroutine writes to a number that was reused).
type conn struct {
	mu         sync.Mutex
	fd         int32
	gen        uint32 // generation stored in epoll events
	state      connState
	loop       uint8
	registered bool  // present in the user registry
	wantWrite  bool  // EPOLLOUT armed (or to be, once polled)
	polled     bool  // registered with the loop's epoll
	shutAfter  bool  // shut down writing once out drains (close frame queued)
	handedOff  bool  // its user's stream went to another edge: move it (cluster.go)
	kind       uint8 // transport: kindWS, kindSSE or kindPoll (the machine's, set at the upgrade)
	// m is the connection's protocol: phases, frames, closing, deadlines
	// (pkg/wire). Permessage-deflate and the client's half-close are its
	// (m.Deflate, m.PeerDone).
	m   wire.Machine
	uid string
	exp int64 // Unix ns of the token's exp: the connection ends then (tokens.go)
	iat int64 // Unix ns of the token's iat (auth.NoIat: none), for revocations
	tm  wheel.Timer[*conn]
	out *outQueue // bytes the kernel did not take yet; nil when empty
	// resume is where the client said it stopped, kept while the user's
	// stream is not on this edge yet (nil otherwise).
	resume *resumePoint
}

// outQueue holds unwritten bytes. Shared frames (broadcasts, message tails)
// are referenced, not copied.
type outQueue struct {
	bufs [][]byte
	size int
}

// writeLocked writes a then b (b may be shared and is never modified).
// What the kernel does not take is queued and EPOLLOUT armed; a connection
// whose queue would exceed MaxQueueBytes is closed as a slow consumer. It
// reports whether the bytes were written or queued.
func (s *Server) writeLocked(c *conn, a, b []byte) bool {
	if c.state >= stClosing {
		return false
	}
	if c.out != nil {
		return s.enqueueLocked(c, a, b, true)
	}
	total := len(a) + len(b)
	var n int
	var err error
	if len(b) == 0 {
		n, err = rawtcp.Write(int(c.fd), a)
	} else {
		n, err = rawtcp.Writev2(int(c.fd), a, b)
	}
	if n == total {
		return true
	}
	if err != nil && err != unix.EAGAIN && err != unix.EINTR {
		s.closeNowLocked(c, -1)
		return false
	}
	if n < 0 {
		n = 0
	}
	if n < len(a) {
		a = a[n:]
	} else {
		b, a = b[n-len(a):], nil
	}
	return s.enqueueLocked(c, a, b, true)
}

func (s *Server) enqueueLocked(c *conn, a, b []byte, copyA bool) bool {
	q := c.out
	if q == nil {
		q = &outQueue{}
		c.out = q
	}
	if q.size+len(a)+len(b) > s.cfg.MaxQueueBytes {
		s.m.queueDrops.Inc()
		// The socket is full, so a close frame could not be read anyway;
		// the client sees the connection end and resumes with last_seq.
		s.closeNowLocked(c, ClosePolicy)
		return false
	}
	if len(a) > 0 {
		if copyA {
			a = append([]byte(nil), a...)
		}
		q.bufs = append(q.bufs, a)
	}
	if len(b) > 0 {
		q.bufs = append(q.bufs, b)
	}
	q.size += len(a) + len(b)
	s.armWriteLocked(c)
	return true
}

// armWriteLocked asks the loop for EPOLLOUT on c, which has bytes queued.
func (s *Server) armWriteLocked(c *conn) {
	if !c.wantWrite {
		c.wantWrite = true
		if c.polled {
			s.loops[c.loop].poll.Resume(int(c.fd), c.gen, c.interest(true))
		}
	}
}

// maxIov is how many buffers one writev takes (Linux's IOV_MAX).
const maxIov = 1024

// writevLocked writes bufs in order with writev(2), as few calls as
// IOV_MAX allows: several frames for one connection cost one system call.
// What the kernel does not take is queued as by writeLocked, but by
// reference: the caller gives the buffers up (none may be modified
// later). It reports whether everything was written or queued; a queue
// that would exceed MaxQueueBytes closes c as a slow consumer.
func (s *Server) writevLocked(c *conn, bufs [][]byte) bool {
	if c.state >= stClosing {
		return false
	}
	for len(bufs) > 0 && c.out == nil {
		chunk := bufs[:min(len(bufs), maxIov)]
		want := 0
		for _, p := range chunk {
			want += len(p)
		}
		n, err := unix.Writev(int(c.fd), chunk)
		if err != nil && err != unix.EAGAIN && err != unix.EINTR {
			s.closeNowLocked(c, -1)
			return false
		}
		if n < 0 {
			n = 0
		}
		full := n < want // the socket took less: queue the rest
		// Drop what was written.
		for n > 0 {
			if n >= len(bufs[0]) {
				n -= len(bufs[0])
				bufs = bufs[1:]
			} else {
				bufs[0] = bufs[0][n:]
				n = 0
			}
		}
		for len(bufs) > 0 && len(bufs[0]) == 0 {
			bufs = bufs[1:]
		}
		if full {
			break
		}
	}
	if len(bufs) == 0 {
		return true
	}
	size := 0
	for _, p := range bufs {
		size += len(p)
	}
	q := c.out
	if q == nil {
		q = &outQueue{}
		c.out = q
	}
	if q.size+size > s.cfg.MaxQueueBytes {
		s.m.queueDrops.Inc()
		s.closeNowLocked(c, ClosePolicy)
		return false
	}
	for _, p := range bufs {
		if len(p) > 0 {
			q.bufs = append(q.bufs, p)
		}
	}
	q.size += size
	s.armWriteLocked(c)
	return true
}

// flushLocked writes queued bytes after EPOLLOUT, unless the edge's lease
// is not confirmed (after a pause it writes nothing it had queued until it
// is; resumeWrites flushes then, and fencing drops the queue). A close
// frame queued behind messages still goes out.
func (s *Server) flushLocked(c *conn) {
	if !s.serving() && !c.shutAfter {
		c.wantWrite = false
		return
	}
	q := c.out
	for q != nil && len(q.bufs) > 0 {
		batch := q.bufs
		if len(batch) > 64 {
			batch = batch[:64]
		}
		n, err := unix.Writev(int(c.fd), batch)
		if err != nil {
			if err == unix.EAGAIN || err == unix.EINTR {
				return
			}
			s.closeNowLocked(c, -1)
			return
		}
		q.size -= n
		for n > 0 && len(q.bufs) > 0 {
			if n >= len(q.bufs[0]) {
				n -= len(q.bufs[0])
				q.bufs[0] = nil
				q.bufs = q.bufs[1:]
			} else {
				q.bufs[0] = q.bufs[0][n:]
				n = 0
			}
		}
	}
	c.out = nil
	c.wantWrite = false
	if c.shutAfter {
		c.shutAfter = false
		shutdownWrite(c)
	}
}

func shutdownWrite(c *conn) { unix.Shutdown(int(c.fd), unix.SHUT_WR) }

// closeWithLocked closes an open connection with code and reason: a close
// frame, an SSE close event or a long-poll answer holding the notice (see
// wire.Machine.Close), then the wait for the client.
func (s *Server) closeWithLocked(c *conn, code int, reason string) {
	if c.state != stOpen {
		return
	}
	s.closingLocked(c, c.m.Close(&s.wire, code, reason, time.Now().UnixNano()))
}

// closingLocked applies a step that ends an open connection
// (wire.EventClosing): its close code is counted, its bytes (a close frame,
// close event or poll answer) are written or queued behind pending
// messages, writing is shut down once they are out, and the connection
// waits for the client until the step's deadline (CloseTimeout). When the
// client's close came first (st.Done) nothing is left to wait for once
// ours is out.
func (s *Server) closingLocked(c *conn, st wire.Step) {
	if st.Event != wire.EventClosing || c.state != stOpen {
		return
	}
	if st.Code != 0 {
		s.m.closed(st.Code)
	}
	if !s.writeLocked(c, st.Write, nil) {
		return // closed as a slow consumer meanwhile
	}
	c.state = c.m.Phase() // stClosing
	if c.out == nil {
		shutdownWrite(c)
	} else {
		c.shutAfter = true
	}
	s.open.Add(-1)
	s.m.conns.Dec()
	s.schedule(c, time.Unix(0, st.Deadline))
	if st.Done && c.out == nil {
		s.closeNowLocked(c, -1)
	}
}

// closeNowLocked closes the descriptor. code is what the metrics record.
func (s *Server) closeNowLocked(c *conn, code int) {
	switch c.state {
	case stClosed:
		return
	case stHandshake:
		s.m.handshaking.Dec()
	case stOpen:
		s.open.Add(-1)
		s.m.conns.Dec()
		s.m.closed(code)
	}
	c.state = stClosed
	s.table.Clear(int(c.fd), c)
	unix.Close(int(c.fd))
	c.out = nil
	c.m.Finish()
	s.timers.Cancel(&c.tm)
}

// release unlocks c and, if it stopped being open while registered, takes
// it out of the registry (which needs the shard lock, so after unlocking).
func (s *Server) release(c *conn) {
	detach := c.registered && c.state >= stClosing
	if detach {
		c.registered = false
	}
	c.mu.Unlock()
	if detach {
		s.reg.Do(c.uid, false, func(u *registry.User[*conn]) {
			if u != nil {
				u.Remove(c)
			}
		})
	}
}

// detachInShard is release's counterpart for callers that already hold the
// user's shard lock.
func detachInShard(u *registry.User[*conn], c *conn) {
	if c.registered && c.state >= stClosing {
		c.registered = false
		u.Remove(c)
	}
}

// onTimer runs a connection's deadline (wire.Machine.Tick): handshake
// timeout, heartbeat, idle timeout, a long-poll's empty answer or the end
// of the close wait; before the machine's, the token's expiry.
func (s *Server) onTimer(c *conn, now time.Time) {
	c.mu.Lock()
	switch {
	case c.state == stOpen && s.tokenExpiredLocked(c, now):
	case c.state == stClosed:
	default:
		if c.state == stHandshake {
			s.m.hsTimeout.Inc()
		}
		st := c.m.Tick(&s.wire, now.UnixNano())
		switch st.Event {
		case wire.EventClosing:
			s.closingLocked(c, st)
		case wire.EventClosed:
			s.closeNowLocked(c, st.Code)
		default:
			if len(st.Write) > 0 && s.writeLocked(c, st.Write, nil) {
				s.scheduleOpen(c, time.Unix(0, st.Deadline))
			}
		}
	}
	s.release(c)
}

// wireConfig is the part of cfg (defaults applied) the connection
// protocol applies.
func (cfg *Config) wireConfig() wire.Config {
	return wire.Config{
		MaxMessageBytes:  cfg.MaxMessageBytes,
		MaxHeaderBytes:   cfg.MaxHeaderBytes,
		AcceptProxy:      cfg.AcceptProxy,
		HandshakeTimeout: cfg.HandshakeTimeout,
		CloseTimeout:     cfg.CloseTimeout,
		PingInterval:     cfg.PingInterval,
		IdleTimeout:      cfg.IdleTimeout,
		PollTimeout:      cfg.PollTimeout,
	}
}
