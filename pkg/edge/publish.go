package edge

import (
	"errors"
	"fmt"
	"sync"
	"sync/atomic"
	"time"

	"github.com/pushcluster/push/pkg/mailbox"
	"github.com/pushcluster/push/pkg/registry"
	"github.com/pushcluster/push/pkg/userid"
)

// Outcome says what became of a published message.
type Outcome int

// Outcomes of a publish.
const (
	Delivered Outcome = iota + 1 // written or queued to at least one connection
	Stored                       // kept in the mailbox for a user not connected here
	Rejected                     // not accepted; Result.Reason says why (reserved: invalid input is an error)
)

// Result is the answer to a publish for one user.
type Result struct {
	Outcome Outcome
	Seq     uint64
	Conns   int
	Reason  string
}

// Errors callers branch on; they wrap the precise reason. Invalid user ids
// wrap userid.ErrInvalid or userid.ErrTooMany.
var (
	ErrPayloadTooBig = errors.New("payload too big")
	ErrEmptyPayload  = errors.New("empty payload")
	ErrShuttingDown  = errors.New("edge is shutting down")
)

func (s *Server) newBox() *mailbox.Box { return mailbox.New(s.cfg.MailboxSize) }

func (s *Server) checkPayload(data []byte) error {
	switch {
	case len(data) == 0:
		return ErrEmptyPayload
	case len(data) > s.cfg.MaxPayloadBytes:
		return fmt.Errorf("%w: %d bytes, limit %d", ErrPayloadTooBig, len(data), s.cfg.MaxPayloadBytes)
	}
	return nil
}

func (s *Server) ttl(ttl time.Duration) time.Duration {
	if ttl <= 0 || ttl > s.cfg.MailboxTTL {
		return s.cfg.MailboxTTL
	}
	return ttl
}

// admit checks a publish before any state changes; a refusal is counted.
func (s *Server) admit(data []byte, uids ...string) error {
	err := s.checkPayload(data)
	if err == nil {
		err = userid.CheckAll(uids)
	}
	if err == nil && s.draining.Load() {
		// An error, not an answer: the caller's SDK retries it on the edge
		// that owns the user next.
		err = ErrShuttingDown
	}
	if err != nil {
		s.m.pubRejected.Inc()
	}
	return err
}

// Publish sends data to every connection of uid, or stores it for ttl (0:
// the mailbox TTL) if the user is not connected.
func (s *Server) Publish(uid string, data []byte, ttl time.Duration) (Result, error) {
	if err := s.admit(data, uid); err != nil {
		return Result{}, err
	}
	return s.publish(uid, data, ttl), nil
}

// publish is Publish after admit.
func (s *Server) publish(uid string, data []byte, ttl time.Duration) Result {
	start := time.Now()
	r := s.publishTail(uid, messageTail(data), start.UnixNano()+int64(s.ttl(ttl)))
	s.m.latency.Observe(time.Since(start).Seconds())
	return r
}

// PublishMulti sends the same data to several users; the message body is
// encoded once and shared by every frame and mailbox.
func (s *Server) PublishMulti(uids []string, data []byte, ttl time.Duration) ([]Result, error) {
	if err := s.admit(data, uids...); err != nil {
		return nil, err
	}
	return s.publishMulti(uids, data, ttl), nil
}

// publishMulti is PublishMulti after admit.
func (s *Server) publishMulti(uids []string, data []byte, ttl time.Duration) []Result {
	start := time.Now()
	tail := messageTail(data)
	expires := start.UnixNano() + int64(s.ttl(ttl))
	out := make([]Result, len(uids))
	for i, uid := range uids {
		out[i] = s.publishTail(uid, tail, expires)
	}
	s.m.latency.Observe(time.Since(start).Seconds())
	return out
}

func (s *Server) publishTail(uid string, tail []byte, expires int64) Result {
	var r Result
	s.reg.Do(uid, true, func(u *registry.User[*conn]) {
		if u.Box == nil {
			u.Box = s.newBox()
		}
		// Unsent until a connection took it: a connection closing under
		// this write must leave the message to be resumed or handed off.
		r.Seq = u.Box.Push(tail, expires, false)
		for i := 0; i < len(u.Conns); i++ {
			c := u.Conns[i]
			c.mu.Lock()
			if c.state == stOpen && s.sendMessage(c, r.Seq, tail) {
				r.Conns++
			}
			if c.registered && c.state >= stClosing {
				c.registered = false
				u.Remove(c)
				i--
			}
			c.mu.Unlock()
		}
		if r.Conns > 0 {
			u.Box.MarkSent(r.Seq)
			s.m.msgsOut.Add(float64(r.Conns))
			s.m.bytesOut.Add(float64(r.Conns * (maxHeader + 16 + len(tail))))
		}
	})
	if r.Conns > 0 {
		r.Outcome = Delivered
		s.m.pubDelivered.Inc()
	} else {
		r.Outcome = Stored
		s.m.pubStored.Inc()
		s.m.stored.Inc()
	}
	return r
}

// Broadcast writes one frame, encoded once, to every open connection on
// this edge, from one writer per CPU. Broadcasts are not stored and carry
// seq 0. It returns the number of connections written or queued to.
func (s *Server) Broadcast(data []byte) (int, error) {
	if err := s.checkPayload(data); err != nil {
		return 0, err
	}
	if s.draining.Load() {
		return 0, ErrShuttingDown
	}
	tail := messageTail(data)
	f := broadcastFrame(tail)
	// SSE and long-poll connections get the same envelope in their framing.
	sse := append(append([]byte("data: {\"seq\":0,\"broadcast\":true"), tail...), "\n\n"...)
	poll := append([]byte("{\"seq\":0,\"broadcast\":true"), tail...)
	workers := s.cfg.BroadcastWriters
	var total atomic.Int64
	var wg sync.WaitGroup
	top := int(s.maxFD.Load()) + 1
	chunk := (top + workers - 1) / workers
	for w := 0; w < workers; w++ {
		lo, hi := w*chunk, min((w+1)*chunk, top)
		wg.Add(1)
		go func() {
			defer wg.Done()
			n := 0
			for i := lo; i < hi; i++ {
				c := s.table[i].Load()
				if c == nil {
					continue
				}
				c.mu.Lock()
				if c.state == stOpen {
					var ok bool
					switch c.kind {
					case kindSSE:
						ok = s.writeLocked(c, sse, nil)
					case kindPoll:
						ok = s.pollAnswer(c, poll)
					default:
						ok = s.writeLocked(c, f, nil)
					}
					if ok {
						n++
					}
				}
				s.release(c)
			}
			total.Add(int64(n))
		}()
	}
	wg.Wait()
	n := int(total.Load())
	s.m.broadcasts.Inc()
	s.m.msgsOut.Add(float64(n))
	s.m.bytesOut.Add(float64(n * len(f)))
	return n, nil
}

// Kick closes every connection of uid with 4004 and the given reason.
func (s *Server) Kick(uid, reason string) (int, error) {
	if err := userid.Check(uid); err != nil {
		return 0, err
	}
	if reason == "" {
		reason = "kicked"
	}
	n := 0
	s.reg.Do(uid, false, func(u *registry.User[*conn]) {
		if u == nil {
			return
		}
		for len(u.Conns) > 0 {
			c := u.Conns[0]
			c.mu.Lock()
			if c.state == stOpen {
				s.closeWithLocked(c, CloseKicked, reason)
				n++
			}
			c.registered = false
			c.mu.Unlock()
			u.Remove(c)
		}
	})
	return n, nil
}

// Presence returns the number of open connections of uid here.
func (s *Server) Presence(uid string) int {
	n := 0
	s.reg.Do(uid, false, func(u *registry.User[*conn]) {
		if u != nil {
			n = len(u.Conns)
		}
	})
	return n
}
