package edge

import (
	"net/netip"
	"sync"
	"time"

	"github.com/gobwas/ws"
	"golang.org/x/sys/unix"

	"github.com/pushcluster/push/pkg/rawtcp"
	"github.com/pushcluster/push/pkg/registry"
	"github.com/pushcluster/push/pkg/wheel"
)

type connState uint8

const (
	stHandshake connState = iota // accepted, request head not yet complete
	stOpen                       // upgraded
	stClosing                    // close frame sent, waiting for the peer's
	stClosed                     // descriptor closed
)

// conn is one client socket. Its size is the main per-connection cost, so
// every field is here on purpose and rarely used state hangs off pointers
// that are nil while the connection is idle.
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
	proxied    bool  // the PROXY header (AcceptProxy) was read
	peerDone   bool  // the client shut down its sending side (halfClosedLocked)
	handedOff  bool  // its user's stream went to another edge: move it (cluster.go)
	deflate    bool  // permessage-deflate was negotiated (deflate.go)
	kind       uint8 // transport: kindWS, kindSSE or kindPoll
	uid        string
	lastSeen   int64 // Unix ns of the last frame from the client
	exp        int64 // Unix ns of the token's exp: the connection ends then (tokens.go)
	iat        int64 // Unix ns of the token's iat (auth.NoIat: none), for revocations
	tm         wheel.Timer[*conn]
	out        *outQueue  // bytes the kernel did not take yet; nil when empty
	rd         *readState // partial input; nil between frames
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

// readState is what survives between reads: a partial head or frame, and a
// fragmented message in progress.
type readState struct {
	pending  []byte
	skip     uint64 // bytes of a refused frame still to discard (framesLocked)
	frag     bool   // inside a fragmented message
	fragText bool
	fragLen  int
	fragZ    bool           // the fragmented message is compressed: its fragments wait in zbuf
	zbuf     []byte         // compressed fragments so far (at most MaxMessageBytes)
	carry    []byte         // incomplete UTF-8 sequence at the end of the last fragment
	origin   []byte         // SSE/long-poll: the allowed Origin, echoed in the answer's CORS header
	client   netip.AddrPort // the browser's address from the PROXY header, during the handshake
}

func (c *conn) rs() *readState {
	if c.rd == nil {
		c.rd = &readState{}
	}
	return c.rd
}

func (c *conn) dropReadState() {
	if c.rd != nil && len(c.rd.pending) == 0 && c.rd.skip == 0 && !c.rd.frag && c.rd.origin == nil &&
		(c.state != stHandshake || !c.rd.client.IsValid()) {
		c.rd = nil
	}
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

// closeWithLocked starts the closing handshake: the close frame is written
// (or queued behind pending messages), writing is shut down once it is out,
// and the connection waits up to CloseTimeout for the client's close.
func (s *Server) closeWithLocked(c *conn, code int, reason string) {
	if c.state != stOpen {
		return
	}
	s.m.closed(code)
	switch c.kind {
	case kindSSE:
		b := append([]byte("event: close\ndata: "), closeNotice(code, reason)...)
		if s.writeLocked(c, append(b, "\n\n"...), nil) {
			s.endStreamLocked(c)
		}
		return
	case kindPoll:
		s.pollAnswer(c, closeNotice(code, reason))
		return
	}
	if !s.writeLocked(c, closeFrame(code, reason), nil) {
		return // closed as a slow consumer meanwhile
	}
	c.state = stClosing
	if c.out == nil {
		shutdownWrite(c)
	} else {
		c.shutAfter = true
	}
	s.open.Add(-1)
	s.m.conns.Dec()
	s.schedule(c, time.Now().Add(s.cfg.CloseTimeout))
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
	s.table[c.fd].CompareAndSwap(c, nil)
	unix.Close(int(c.fd))
	c.out = nil
	c.rd = nil
	s.wheelMu.Lock()
	s.wheel.Cancel(&c.tm)
	s.wheelMu.Unlock()
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

// Heartbeats a page can see: browsers hide WebSocket pings and SSE
// comments from scripts, and a client's watchdog needs something to reset
// it on an idle connection. The WebSocket ping (answered by the browser
// itself, which keeps the edge's idle timer fed) goes in the same write.
var (
	heartbeat   = []byte(`{"seq":0,"hb":true}`)
	wsHeartbeat = append(append([]byte(nil), pingFrame...), frame(ws.OpText, heartbeat)...)
	ssePing     = append(append([]byte("data: "), heartbeat...), "\n\n"...)
)

// onTimer runs a connection's deadline: handshake timeout, ping, idle
// timeout, token expiry or the end of the close wait.
func (s *Server) onTimer(c *conn, now time.Time) {
	c.mu.Lock()
	switch c.state {
	case stHandshake:
		s.m.hsTimeout.Inc()
		s.closeNowLocked(c, -1)
	case stOpen:
		if s.tokenExpiredLocked(c, now) {
			break
		}
		switch c.kind {
		case kindPoll: // nothing came within PollTimeout: an empty answer
			s.pollAnswer(c, nil)
		case kindSSE: // a comment keeps proxies from timing the stream out
			if s.writeLocked(c, ssePing, nil) {
				s.scheduleOpen(c, now.Add(s.cfg.PingInterval))
			}
		default:
			if now.UnixNano()-c.lastSeen >= int64(s.cfg.IdleTimeout) {
				s.closeWithLocked(c, CloseIdle, "idle timeout")
				break
			}
			if s.writeLocked(c, wsHeartbeat, nil) {
				s.scheduleOpen(c, now.Add(s.cfg.PingInterval))
			}
		}
	case stClosing:
		s.closeNowLocked(c, -1)
	}
	s.release(c)
}
