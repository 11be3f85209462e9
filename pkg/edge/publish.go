package edge

import (
	"context"
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
	_                            // (forwarded: older edges)
	NotOwner                     // PublishMulti: another edge owns the user; Result.Owner names it
)

// Result is the answer to a publish for one user.
type Result struct {
	Outcome Outcome
	// Epoch and Seq place the message in the user's stream.
	Epoch string
	Seq   uint64
	Conns int
	// Duplicate: the idempotency key had been applied; this is the first
	// answer.
	Duplicate bool
	Reason    string
	// Owner is the owner this edge sees (NotOwner).
	Owner uint32
}

// establishWait bounds how long a publish waits for its user's stream to
// be handed over from the edge that held it.
const establishWait = time.Second

// maxKeyLen bounds an idempotency key.
const maxKeyLen = 64

// Errors callers branch on; they wrap the precise reason. Invalid user ids
// wrap userid.ErrInvalid or userid.ErrTooMany.
var (
	ErrPayloadTooBig = errors.New("payload too big")
	ErrEmptyPayload  = errors.New("empty payload")
	ErrShuttingDown  = errors.New("edge is shutting down")
)

func (s *Server) newBox() *mailbox.Box { return mailbox.New(s.cfg.MailboxSize, s.newEpoch()) }

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
	if err == nil && s.draining.Load() && s.View() == nil {
		// Standalone: nobody takes the stream over; the caller retries
		// elsewhere.
		err = ErrShuttingDown
	}
	if err == nil && !s.serving() {
		err = ErrFenced
	}
	if err != nil {
		s.m.pubRejected.Inc()
	}
	return err
}

// Publish sends data to every connection of uid, or stores it for ttl (0:
// the mailbox TTL) if the user is not connected. It is PublishKey without
// an idempotency key.
func (s *Server) Publish(uid string, data []byte, ttl time.Duration) (Result, error) {
	return s.PublishKey(context.Background(), uid, data, ttl, "")
}

// PublishKey publishes data to uid if this edge holds the user's stream or
// owns the user (it establishes the stream first, which may ask the member
// that held it: ctx bounds that). A repeated key (at most 64 bytes) within
// the mailbox TTL is not applied again: the answer is the first one's with
// Duplicate set. Errors: *NotOwnerError (another edge owns the user),
// ErrFenced, ErrPayloadTooBig, ErrEmptyPayload, userid errors.
func (s *Server) PublishKey(ctx context.Context, uid string, data []byte, ttl time.Duration, key string) (Result, error) {
	if len(key) > maxKeyLen {
		s.m.pubRejected.Inc()
		return Result{}, fmt.Errorf("%w: idempotency key of %d bytes, limit %d", ErrBadKey, len(key), maxKeyLen)
	}
	if err := s.admit(data, uid); err != nil {
		return Result{}, err
	}
	start := time.Now()
	r, err := s.publishTail(ctx, uid, newBody(messageTail(data)), start.UnixNano()+int64(s.ttl(ttl)), key, false)
	s.m.latency.Observe(time.Since(start).Seconds())
	return r, err
}

// errWouldWait: the publish needs the user's stream established first.
var errWouldWait = errors.New("publish needs a stream hand-over")

// publishNow is PublishKey that fails with errWouldWait instead of waiting
// for a stream hand-over, so a caller can serve it inline when it is quick.
func (s *Server) publishNow(uid string, data []byte, ttl time.Duration, key string) (Result, error) {
	if len(key) > maxKeyLen {
		s.m.pubRejected.Inc()
		return Result{}, fmt.Errorf("%w: idempotency key of %d bytes, limit %d", ErrBadKey, len(key), maxKeyLen)
	}
	if err := s.admit(data, uid); err != nil {
		return Result{}, err
	}
	start := time.Now()
	r, err := s.publishTail(context.Background(), uid, newBody(messageTail(data)), start.UnixNano()+int64(s.ttl(ttl)), key, true)
	if err == nil {
		s.m.latency.Observe(time.Since(start).Seconds())
	}
	return r, err
}

// ErrBadKey: an idempotency key over 64 bytes.
var ErrBadKey = errors.New("invalid idempotency key")

// PublishMulti sends the same data to several users; the message body is
// encoded once (and compressed once, for connections that negotiated
// permessage-deflate) and shared by every frame and mailbox. A user another edge
// owns gets a NotOwner result naming it (the call is not applied for them).
func (s *Server) PublishMulti(uids []string, data []byte, ttl time.Duration) ([]Result, error) {
	return s.PublishMultiKey(context.Background(), uids, data, ttl, "")
}

// PublishMultiKey is PublishMulti with an idempotency key applied per user.
// The users are served in one pass as a batch is (PublishBatch): each
// registry shard lock once, one write per connection; users whose stream
// must be handed over first wait after the others (ctx, and a second,
// bound that). Any error other than a not-owner answer fails the call.
func (s *Server) PublishMultiKey(ctx context.Context, uids []string, data []byte, ttl time.Duration, key string) ([]Result, error) {
	if len(key) > maxKeyLen {
		s.m.pubRejected.Inc()
		return nil, fmt.Errorf("%w: idempotency key of %d bytes, limit %d", ErrBadKey, len(key), maxKeyLen)
	}
	if err := s.admit(data, uids...); err != nil {
		return nil, err
	}
	start := time.Now()
	shared := newBody(messageTail(data))
	expires := start.UnixNano() + int64(s.ttl(ttl))
	n := len(uids)
	b := &pubBatch{items: make([]BatchItem, n), bodies: make([]*body, n), expires: make([]int64, n), rs: make([]Result, n), errs: make([]error, n)}
	pos := make([]int, n)
	for i, uid := range uids {
		b.items[i] = BatchItem{User: uid, Data: data, TTL: ttl, Key: key}
		b.bodies[i], b.expires[i], pos[i] = shared, expires, i
	}
	s.applyPrepared(b, uids, pos, start)
	for _, run := range b.waiting() {
		b.finishWaiting(ctx, s, run)
	}
	for i, err := range b.errs {
		var no *NotOwnerError
		switch {
		case errors.As(err, &no):
			b.rs[i] = Result{Outcome: NotOwner, Owner: no.Owner, Reason: "not the owner"}
		case err != nil:
			return nil, err
		}
	}
	return b.rs, nil
}

// publishTail applies one message to uid's stream (see PublishKey).
// With noWait it returns errWouldWait rather than establish the stream.
func (s *Server) publishTail(ctx context.Context, uid string, b *body, expires int64, key string, noWait bool) (Result, error) {
	for attempt := 0; ; attempt++ {
		var r Result
		var to uint32
		const (
			applied = iota
			establish
			redirect
		)
		state := applied
		s.reg.Do(uid, true, func(u *registry.User[*conn]) {
			switch {
			case u.Box != nil && u.Handed == nil:
			case u.Handed != nil && (!s.owns(uid) || time.Now().UnixNano()-u.Handed.At < int64(goneHold)):
				// Handed over: the new holder's view was newer than ours
				// may still be, so do not take it straight back.
				state, to = redirect, u.Handed.To
				return
			case s.owns(uid):
				if u.Handed != nil || len(s.candidates(uid)) > 0 {
					state = establish
					return
				}
				u.Box = s.newBox()
				s.m.epochsStarted.Inc()
				s.deliverUnsentInShard(u, time.Now().UnixNano())
				s.attachWaitingInShard(u, time.Now().UnixNano())
			default:
				state = redirect
				return
			}
			r = s.applyInShard(u, b, expires, key)
		})
		switch state {
		case redirect:
			s.m.pubNotOwner.Inc()
			return Result{}, s.notOwner(uid, to)
		case establish:
			if noWait {
				return Result{}, errWouldWait
			}
			if attempt > 0 {
				s.m.pubNotOwner.Inc()
				return Result{}, s.notOwner(uid, 0)
			}
			// Bounded: a publish never waits long on another edge; if
			// the hand-over cannot finish in time the caller is told
			// UNAVAILABLE and retries (the stream is not started
			// without it).
			ectx, cancel := context.WithTimeout(ctx, establishWait)
			err := s.establish(ectx, uid)
			cancel()
			if errors.Is(err, context.DeadlineExceeded) && ctx.Err() == nil {
				return Result{}, fmt.Errorf("%w: user %q: the hand-over of the stream from the edge that held it did not finish within %v", ErrShuttingDown, uid, establishWait)
			}
			if err != nil {
				return Result{}, err
			}
			continue
		}
		if r.Outcome == Stored && !s.serving() {
			// Stored across a pause that outlived the lease: this
			// stream is void, so the message must not be acknowledged.
			return Result{}, ErrFenced
		}
		return r, nil
	}
}

// applyInShard numbers the message in the user's stream and writes it to
// every open connection of the user. Called with the shard lock held and
// u.Box set.
func (s *Server) applyInShard(u *registry.User[*conn], b *body, expires int64, key string) Result {
	var r Result
	if key != "" {
		if rec, ok := u.Box.Key(key); ok {
			s.m.pubDuplicate.Inc()
			return Result{Outcome: Outcome(rec.Outcome), Epoch: rec.Epoch, Seq: rec.Seq, Duplicate: true}
		}
	}
	if u.Box.Full() {
		u.Box.Rollover(s.newEpoch(), time.Now().UnixNano())
		s.m.epochsStarted.Inc()
	}
	// Unsent until a connection took it: a connection closing under
	// this write must leave the message to be resumed or handed off.
	r.Seq = u.Box.Push(b.tail, expires, false)
	r.Epoch = u.Box.Epoch
	for i := 0; i < len(u.Conns); i++ {
		c := u.Conns[i]
		c.mu.Lock()
		if c.state == stOpen && c.resume == nil && s.sendMessage(c, r.Epoch, r.Seq, b) {
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
		r.Outcome = Delivered
		s.m.msgsOut.Add(float64(r.Conns))
		s.m.bytesOut.Add(float64(r.Conns * (maxHeader + 16 + len(r.Epoch) + len(b.tail))))
		s.m.pubDelivered.Inc()
	} else {
		r.Outcome = Stored
		s.m.pubStored.Inc()
		s.m.stored.Inc()
	}
	if key != "" {
		u.Box.RememberKey(mailbox.KeyRecord{Key: key, Epoch: r.Epoch, Seq: r.Seq, Outcome: uint8(r.Outcome), Expires: expires})
	}
	return r
}

// Broadcast writes one frame, encoded once, to every open connection on
// this edge, from one writer per CPU; connections that negotiated
// permessage-deflate get one compressed frame, compressed once. Broadcasts are not stored and carry
// seq 0. It returns the number of connections written or queued to.
func (s *Server) Broadcast(data []byte) (int, error) {
	if err := s.checkPayload(data); err != nil {
		return 0, err
	}
	if s.draining.Load() {
		return 0, ErrShuttingDown
	}
	if !s.serving() {
		return 0, ErrFenced
	}
	tail := messageTail(data)
	f := &broadcastFrames{plain: broadcastFrame(tail), tail: tail}
	// SSE and long-poll connections get the same envelope in their framing.
	sse := append(append([]byte("data: {\"seq\":0,\"broadcast\":true"), tail...), "\n\n"...)
	poll := append([]byte("{\"seq\":0,\"broadcast\":true"), tail...)
	workers := s.cfg.BroadcastWriters
	var total atomic.Int64
	var wg sync.WaitGroup
	top := s.table.Top()
	chunk := (top + workers - 1) / workers
	for w := 0; w < workers; w++ {
		lo, hi := w*chunk, min((w+1)*chunk, top)
		wg.Add(1)
		go func() {
			defer wg.Done()
			n := 0
			for i := lo; i < hi; i++ {
				c := s.table.Load(i)
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
						fr := f.plain
						if c.m.Deflate() {
							if z := s.zBroadcast(f); z != nil {
								fr = z
							}
						}
						ok = s.writeLocked(c, fr, nil)
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
	s.m.bytesOut.Add(float64(n * len(f.plain)))
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
