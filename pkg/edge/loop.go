package edge

import (
	"net/http"
	"time"

	"golang.org/x/sys/unix"

	"github.com/pushcluster/push/pkg/evloop"
	"github.com/pushcluster/push/pkg/httphead"
	"github.com/pushcluster/push/pkg/poller"
	"github.com/pushcluster/push/pkg/proxyproto"
	"github.com/pushcluster/push/pkg/rawtcp"
	"github.com/pushcluster/push/pkg/wire"
)

// loop is one event loop (package evloop: an epoll instance, the
// goroutine that waits on it, accept batching) with the edge's own state.
// Reads, handshakes and frame parsing for its connections run on the
// loop's goroutine, on its scratch buffer, so an idle connection owns no
// buffer.
type loop struct {
	id   int
	s    *Server
	ev   *evloop.Loop
	poll *poller.Poller // ev.Poll
	buf  []byte         // read scratch, owned by this goroutine
	hs   handshake
	// wp is the connection protocol's rules and scratch for this loop's
	// goroutine (pong frames, one decompressor for client messages).
	wp *wire.Protocol
}

func newLoop(s *Server, id int) (*loop, error) {
	size := 64 << 10
	if need := 2*s.cfg.MaxMessageBytes + 64; need > size {
		size = need
	}
	if need := 2 * s.cfg.MaxHeaderBytes; need > size {
		size = need
	}
	if s.cfg.AcceptProxy {
		// The longest PROXY header and a whole request head behind it.
		size = max(size, proxyproto.MaxV2Len+s.cfg.MaxHeaderBytes+1)
	}
	l := &loop{id: id, s: s, buf: make([]byte, size), wp: wire.NewProtocol(s.wire)}
	ev, err := evloop.New(id, l)
	if err != nil {
		return nil, err
	}
	l.ev, l.poll = ev, ev.Poll
	l.hs.init(s)
	return l, nil
}

func (l *loop) run() {
	if err := l.ev.Run(); err != nil {
		l.s.log.Error("event loop", "loop", l.id, "err", err)
	}
}

// Event handles readiness of a connection's descriptor (evloop.Handler).
func (l *loop) Event(fd int, gen uint32, ev poller.Event) {
	s := l.s
	c := s.table.Load(fd)
	if c == nil || c.gen != gen {
		return // stale event for a closed descriptor
	}
	c.mu.Lock()
	if c.state == stClosed {
		c.mu.Unlock()
		return
	}
	if ev&poller.Write != 0 && c.out != nil {
		s.flushLocked(c)
	}
	if ev&(poller.Read|poller.Hup|poller.Err) != 0 && c.state != stClosed {
		l.readLocked(c)
	}
	if c.state != stClosed {
		want := c.interest(c.out != nil && (c.shutAfter || s.serving()))
		c.wantWrite = want&poller.Write != 0
		if err := l.poll.Resume(fd, c.gen, want); err != nil {
			s.closeNowLocked(c, -1)
		}
	}
	s.release(c)
}

// interest is what c's one-shot registration asks for: input until the
// client shut down its sending side (after that EPOLLIN would report the
// end of stream again and again; the kernel still reports EPOLLHUP once
// the edge has shut down its own side, and EPOLLERR on a reset), and
// output when write is set.
func (c *conn) interest(write bool) poller.Event {
	var ev poller.Event
	if !c.m.PeerDone() {
		ev = poller.Read
	}
	if write {
		ev |= poller.Write
	}
	return ev
}

// readLocked drains the socket (bounded per event, so one busy client does
// not starve the others; the one-shot registration fires again if more is
// pending) and feeds what it read to the connection's protocol machine,
// acting on each step (applyLocked). Input the machine cannot use yet (a
// partial head or frame) waits in the machine (Keep) and goes in front of
// the next read.
func (l *loop) readLocked(c *conn) {
	s := l.s
	for i := 0; i < 4 && c.state != stClosed; i++ {
		off := 0
		if p := c.m.Pending(); p != nil {
			off = copy(l.buf, p)
		}
		n, err := rawtcp.Read(int(c.fd), l.buf[off:])
		if n <= 0 {
			if off > 0 {
				c.m.Keep(l.buf[:off])
			}
			if err == unix.EAGAIN || err == unix.EINTR {
				return
			}
			if n == 0 && err == nil {
				// The end of the client's stream: the machine decides
				// whether the connection stays (wire.Machine.ReadEOF).
				st := c.m.ReadEOF(&s.wire, c.out != nil, time.Now().UnixNano())
				if st.Event == wire.EventClosed {
					s.closeNowLocked(c, 0) // no close frame to send
				} else {
					s.closingLocked(c, st)
				}
				return
			}
			s.closeNowLocked(c, -1) // reset
			return
		}
		data := l.buf[:off+n]
		if c.state != stHandshake && c.kind == kindWS {
			s.m.bytesIn.Add(float64(n))
		}
		used := l.feedLocked(c, data, time.Now().UnixNano())
		if c.state == stClosed {
			return
		}
		c.m.Keep(data[used:])
		if n < len(l.buf)-off {
			return // the socket is drained
		}
	}
}

// feedLocked feeds data to c's machine, acting on each step, until it
// needs more input or the connection is closed; it returns how many bytes
// were used.
func (l *loop) feedLocked(c *conn, data []byte, now int64) int {
	used := 0
	for c.state != stClosed {
		st := l.wp.Feed(&c.m, data[used:], now)
		used += st.Used
		l.applyLocked(c, st)
		if st.Event == wire.EventNone {
			break
		}
	}
	return used
}

// applyLocked acts on one step of the machine fed by readLocked: the
// frames it counted, the bytes it asks to write (pongs, a close frame),
// and its event.
func (l *loop) applyLocked(c *conn, st *wire.Step) {
	s := l.s
	if st.Frames > 0 {
		s.m.msgsIn.Add(float64(st.Frames))
	}
	if st.Event == wire.EventClosing {
		s.closingLocked(c, *st)
		return
	}
	if len(st.Write) > 0 && c.state == stOpen {
		s.writeLocked(c, st.Write, nil)
	}
	switch st.Event {
	case wire.EventHead:
		l.onHead(c, st.Payload)
	case wire.EventRefused:
		if st.Code == http.StatusRequestHeaderFieldsTooLarge {
			s.m.hsTooLarge.Inc()
		} else {
			s.m.hsBadRequest.Inc()
		}
		l.reject(c, st.Code, st.Reason)
	case wire.EventText:
		if c.state == stOpen {
			s.clientTextLocked(c, st.Payload) // a token refresh; anything else is ignored
		}
	case wire.EventClosed:
		s.closeNowLocked(c, st.Code)
	}
}

// AcceptError counts a failed accept (evloop.Handler).
func (l *loop) AcceptError(err error, temporary bool) {
	l.s.m.acceptErrors.Inc()
	if temporary {
		l.s.log.Warn("accept", "err", err)
	} else {
		l.s.log.Error("accept", "err", err)
	}
}

// Accept starts a new connection's handshake right here (evloop.Handler):
// with TCP_DEFER_ACCEPT the request head has usually arrived already, so
// most upgrades finish without ever waiting in epoll.
func (l *loop) Accept(_ *evloop.Loop, _ *rawtcp.Listener, fd int) {
	s := l.s
	if !s.table.Fits(fd) || s.draining.Load() {
		unix.Close(fd)
		return
	}
	now := time.Now()
	c := &conn{fd: int32(fd), gen: s.table.Gen(), loop: uint8(l.id)}
	c.tm.Value = c
	s.table.Store(fd, c)
	s.m.handshaking.Inc()
	s.schedule(c, time.Unix(0, c.m.Start(&s.wire, now.UnixNano()).Deadline))
	c.mu.Lock()
	l.readLocked(c)
	if c.state != stClosed {
		c.wantWrite = c.out != nil
		if err := l.poll.Start(fd, c.gen, c.interest(c.wantWrite)); err != nil {
			s.log.Error("epoll add", "err", err)
			s.closeNowLocked(c, -1)
		} else {
			c.polled = true
		}
	}
	s.release(c)
}

// onHead answers a complete request head (the machine bounded it by
// MaxHeaderBytes and the handshake deadline, after the PROXY header):
// 429 for an address over its rate of new connections, else the
// transport's answer (handshake.serveLocked).
func (l *loop) onHead(c *conn, head []byte) {
	if !l.admitClient(c) {
		l.reject(c, http.StatusTooManyRequests, "too many new connections from this address")
		return
	}
	l.hs.serveLocked(c, head)
}

// reject answers a handshake with an HTTP error and closes.
func (l *loop) reject(c *conn, status int, reason string) {
	l.s.refuseLocked(c, &httphead.Error{Status: status, Reason: reason})
}
