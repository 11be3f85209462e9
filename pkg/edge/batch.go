package edge

import (
	"context"
	"errors"
	"fmt"
	"time"

	"github.com/pushcluster/push/pkg/mailbox"
	"github.com/pushcluster/push/pkg/registry"
	"github.com/pushcluster/push/pkg/userid"
)

// Bounds of one batch (PublishBatch, a PublishBatchStream message): a
// batch holds at most MaxBatchRequests publishes and MaxBatchBytes of
// payload in total (or one payload of --max-payload-bytes, if that is
// larger). A batch over either is refused whole with ErrBatchTooBig.
const (
	MaxBatchRequests = 4096
	MaxBatchBytes    = 1 << 20
)

// ErrBatchTooBig: a batch over MaxBatchRequests or MaxBatchBytes; the
// wrapping error names the limit. ErrEmptyBatch: a batch of nothing.
var (
	ErrBatchTooBig = errors.New("batch too big")
	ErrEmptyBatch  = errors.New("empty batch")
)

// BatchItem is one publish of a batch: what PublishKey takes.
type BatchItem struct {
	User string
	Data []byte
	TTL  time.Duration // 0: the mailbox TTL
	Key  string        // idempotency key; empty: none
}

// checkBatch refuses a batch over its bounds before anything is applied.
func (s *Server) checkBatch(items []BatchItem) error {
	if len(items) == 0 {
		return ErrEmptyBatch
	}
	if len(items) > MaxBatchRequests {
		return fmt.Errorf("%w: %d requests, limit %d", ErrBatchTooBig, len(items), MaxBatchRequests)
	}
	total := 0
	for i := range items {
		total += len(items[i].Data)
	}
	if limit := max(MaxBatchBytes, s.cfg.MaxPayloadBytes); total > limit {
		return fmt.Errorf("%w: %d bytes of payload, limit %d", ErrBatchTooBig, total, limit)
	}
	return nil
}

// PublishBatch applies every item as PublishKey would, and answers each on
// its own: results[i] and errs[i] are item i's (errs[i] nil when it was
// applied). One pass takes each registry shard lock once for the whole
// batch, and a connection that several items go to gets them in one
// write. Items for one user are applied in batch order; an item that must
// wait for its user's stream to be handed over (bounded by ctx and one
// second, as PublishKey) waits after the others were applied, with the
// later items of its user. The call fails as a whole (nil slices) only
// with ErrEmptyBatch or ErrBatchTooBig.
func (s *Server) PublishBatch(ctx context.Context, items []BatchItem) (results []Result, errs []error, err error) {
	b, err := s.applyBatch(items)
	if err != nil {
		return nil, nil, err
	}
	for _, run := range b.waiting() {
		b.finishWaiting(ctx, s, run)
	}
	return b.rs, b.errs, nil
}

// pubBatch is one batch in progress: the prepared items and their answers.
type pubBatch struct {
	items   []BatchItem
	bodies  []*body
	expires []int64
	rs      []Result
	errs    []error // errWouldWait: waits for a stream hand-over

	// Counts of the pass, added to the metrics once at its end (a
	// prometheus counter's Add is an atomic compare-and-swap loop: once
	// per recipient, it was a visible share of a PublishMulti).
	msgsOut, bytesOut, delivered, stored int
}

// addMetrics adds the pass's counts to the edge's metrics and resets them.
func (b *pubBatch) addMetrics(m *metrics) {
	if b.msgsOut > 0 {
		m.msgsOut.Add(float64(b.msgsOut))
		m.bytesOut.Add(float64(b.bytesOut))
	}
	if b.delivered > 0 {
		m.pubDelivered.Add(float64(b.delivered))
	}
	if b.stored > 0 {
		m.pubStored.Add(float64(b.stored))
		m.stored.Add(float64(b.stored))
	}
	b.msgsOut, b.bytesOut, b.delivered, b.stored = 0, 0, 0, 0
}

// waiting returns the items that wait for a hand-over, grouped by user,
// each group in batch order.
func (b *pubBatch) waiting() [][]int {
	var runs [][]int
	var byUser map[string]int
	for i, err := range b.errs {
		if err != errWouldWait {
			continue
		}
		if byUser == nil {
			byUser = make(map[string]int)
		}
		k, ok := byUser[b.items[i].User]
		if !ok {
			k = len(runs)
			byUser[b.items[i].User] = k
			runs = append(runs, nil)
		}
		runs[k] = append(runs[k], i)
	}
	return runs
}

// finishWaiting applies one user's waiting items in order, establishing
// the stream first (publishTail).
func (b *pubBatch) finishWaiting(ctx context.Context, s *Server, run []int) {
	for _, i := range run {
		start := time.Now()
		b.rs[i], b.errs[i] = s.publishTail(ctx, b.items[i].User, b.bodies[i], b.expires[i], b.items[i].Key, false)
		if b.errs[i] == nil {
			s.m.latency.Observe(time.Since(start).Seconds())
		}
	}
}

// userRun is what a batch pass knows about one user of a shard group.
type userRun struct {
	state int    // runApplied, runEstablish or runRedirect, decided at its first item
	to    uint32 // runRedirect: where the stream was handed
	pend  []int  // items numbered in the user's stream, not yet written
	one   [1]int // pend's first home: a user with one item allocates nothing
}

const (
	runApplied = iota
	runEstablish
	runRedirect
)

// applyBatch checks the batch, then applies what it can in one pass; items
// that need a hand-over first are left with errWouldWait.
func (s *Server) applyBatch(items []BatchItem) (*pubBatch, error) {
	if err := s.checkBatch(items); err != nil {
		s.m.pubRejected.Add(float64(len(items)))
		return nil, err
	}
	start := time.Now()
	n := len(items)
	b := &pubBatch{items: items, bodies: make([]*body, n), expires: make([]int64, n), rs: make([]Result, n), errs: make([]error, n)}
	// One refusal for the whole edge, checked once: a fenced or
	// standalone draining edge takes nothing.
	var all error
	switch {
	case s.draining.Load() && s.View() == nil:
		all = ErrShuttingDown
	case !s.serving():
		all = ErrFenced
	}
	uids := make([]string, 0, n)
	pos := make([]int, 0, n)
	for i := range items {
		it := &items[i]
		var err error
		switch {
		case len(it.Key) > maxKeyLen:
			err = fmt.Errorf("%w: idempotency key of %d bytes, limit %d", ErrBadKey, len(it.Key), maxKeyLen)
		default:
			if err = s.checkPayload(it.Data); err == nil {
				if err = userid.Check(it.User); err == nil {
					err = all
				}
			}
		}
		if err != nil {
			b.errs[i] = err
			s.m.pubRejected.Inc()
			continue
		}
		b.bodies[i] = newBody(messageTail(it.Data))
		b.expires[i] = start.UnixNano() + int64(s.ttl(it.TTL))
		uids = append(uids, it.User)
		pos = append(pos, i)
	}
	s.applyPrepared(b, uids, pos, start)
	return b, nil
}

// applyPrepared is the pass of applyBatch over b's items at pos (their
// users uids), whose bodies and expiry are set: one registry shard lock
// per shard, one write per connection.
func (s *Server) applyPrepared(b *pubBatch, uids []string, pos []int, start time.Time) {
	items := b.items
	if len(uids) == 0 {
		return
	}
	// Every user's run lives in one slice, never grown (at most one run
	// per item), so pointers into it stay valid.
	store := make([]userRun, 0, len(uids))
	runs := make(map[*registry.User[*conn]]*userRun)
	var order []*registry.User[*conn]
	s.reg.DoGroups(uids, true, func(idx []int, users []*registry.User[*conn]) {
		clear(runs)
		order = order[:0]
		now := time.Now().UnixNano()
		if !s.serving() {
			// The lease ran out during the pass: once per shard, not
			// per write, and nothing of this shard is applied.
			for _, j := range idx {
				b.errs[pos[j]] = ErrFenced
				s.m.pubRejected.Inc()
			}
			return
		}
		for k, j := range idx {
			i, u := pos[j], users[k]
			run := runs[u]
			if run == nil {
				store = append(store, userRun{state: s.decideInShard(u, items[i].User, now)})
				run = &store[len(store)-1]
				run.pend = run.one[:0]
				if run.state == runRedirect {
					run.to = u.GoneTo()
				}
				runs[u] = run
				order = append(order, u)
			}
			switch run.state {
			case runRedirect:
				s.m.pubNotOwner.Inc()
				b.errs[i] = s.notOwner(items[i].User, run.to)
				continue
			case runEstablish:
				b.errs[i] = errWouldWait
				continue
			}
			key := items[i].Key
			if key != "" {
				if pendingKey(b, run.pend, key) {
					s.flushRun(b, u, run) // the first must be remembered before the repeat is checked
				}
				if rec, ok := u.Box.Key(key); ok {
					s.m.pubDuplicate.Inc()
					b.rs[i] = Result{Outcome: Outcome(rec.Outcome), Epoch: rec.Epoch, Seq: rec.Seq, Duplicate: true}
					continue
				}
			}
			if u.Box.Full() {
				s.flushRun(b, u, run) // numbered in the old epoch: out before it rolls over
				u.Box.Rollover(s.newEpoch(), now)
				s.m.epochsStarted.Inc()
			}
			b.rs[i].Seq = u.Box.Push(b.bodies[i].tail, b.expires[i], false)
			b.rs[i].Epoch = u.Box.Epoch
			run.pend = append(run.pend, i)
		}
		for _, u := range order {
			s.flushRun(b, u, runs[u])
		}
	})
	b.addMetrics(s.m)
	stored := false
	for i := range b.rs {
		if b.errs[i] == nil && b.rs[i].Outcome == Stored && !b.rs[i].Duplicate {
			stored = true
			break
		}
	}
	if stored && !s.serving() {
		// As publishTail: stored across a pause that outlived the lease,
		// so the stream is void and the message is not acknowledged.
		for i := range b.rs {
			if b.errs[i] == nil && b.rs[i].Outcome == Stored && !b.rs[i].Duplicate {
				b.rs[i], b.errs[i] = Result{}, ErrFenced
			}
		}
	}
	d := time.Since(start).Seconds()
	for i := range b.errs {
		if b.errs[i] == nil {
			s.m.latency.Observe(d)
		}
	}
}

// pendingKey reports whether one of the pending items carries key.
func pendingKey(b *pubBatch, pend []int, key string) bool {
	for _, i := range pend {
		if b.items[i].Key == key {
			return true
		}
	}
	return false
}

// decideInShard is publishTail's decision for u, under its shard lock:
// apply (starting the user's stream here when this edge owns the user and
// nobody else may hold it), establish the stream first, or redirect.
func (s *Server) decideInShard(u *registry.User[*conn], uid string, now int64) int {
	switch {
	case u.Box != nil && u.Handed == nil:
		return runApplied
	case u.Handed != nil && (!s.owns(uid) || now-u.Handed.At < int64(goneHold)):
		return runRedirect
	case s.owns(uid):
		if u.Handed != nil || len(s.candidates(uid)) > 0 {
			return runEstablish
		}
		u.Box = s.newBox()
		s.m.epochsStarted.Inc()
		s.deliverUnsentInShard(u, now)
		s.attachWaitingInShard(u, now)
		return runApplied
	}
	return runRedirect
}

// flushRun writes the user's pending items to each of its open
// connections, all of one connection's in one write, then settles their
// outcomes as applyInShard does. Called under the user's shard lock; the
// edge's lease was checked when the pass took that lock (writes do not
// check it again one by one).
func (s *Server) flushRun(b *pubBatch, u *registry.User[*conn], run *userRun) {
	if len(run.pend) == 0 {
		return
	}
	for ci := 0; ci < len(u.Conns); ci++ {
		c := u.Conns[ci]
		c.mu.Lock()
		if c.state == stOpen && c.resume == nil {
			if c.kind == kindWS {
				if s.writeMessagesLocked(c, b, run.pend) {
					for _, i := range run.pend {
						b.rs[i].Conns++
					}
				}
			} else {
				for _, i := range run.pend {
					if s.sendMessage(c, b.rs[i].Epoch, b.rs[i].Seq, b.bodies[i]) {
						b.rs[i].Conns++
					}
				}
			}
		}
		if c.registered && c.state >= stClosing {
			c.registered = false
			u.Remove(c)
			ci--
		}
		c.mu.Unlock()
	}
	for _, i := range run.pend {
		r := &b.rs[i]
		if r.Conns > 0 {
			u.Box.MarkSent(r.Seq)
			r.Outcome = Delivered
			b.msgsOut += r.Conns
			b.bytesOut += r.Conns * (maxHeader + 16 + len(r.Epoch) + len(b.bodies[i].tail))
			b.delivered++
		} else {
			r.Outcome = Stored
			b.stored++
		}
		if key := b.items[i].Key; key != "" {
			u.Box.RememberKey(mailbox.KeyRecord{Key: key, Epoch: r.Epoch, Seq: r.Seq, Outcome: uint8(r.Outcome), Expires: b.expires[i]})
		}
	}
	run.pend = run.pend[:0]
}

// prefixRoom bounds one message's frame header and envelope.
const prefixRoom = maxHeader + 5 + 48 + maxEpochLen

// writeMessagesLocked writes the items' frames to the WebSocket c in one
// write: each frame's header and envelope, then its shared tail
// (compressed, for a connection that negotiated permessage-deflate).
func (s *Server) writeMessagesLocked(c *conn, b *pubBatch, items []int) bool {
	if len(items) == 1 {
		i := items[0]
		var pre [prefixRoom]byte
		n, tail := s.framePrefix(pre[:], c, b.rs[i].Epoch, b.rs[i].Seq, b.bodies[i])
		return s.writeLocked(c, pre[:n], tail)
	}
	// Several frames: their prefixes live in one buffer that nobody
	// reuses, so a queue may keep referencing it.
	arena := make([]byte, len(items)*prefixRoom)
	bufs := make([][]byte, 0, 2*len(items))
	for k, i := range items {
		pre := arena[k*prefixRoom : (k+1)*prefixRoom : (k+1)*prefixRoom]
		n, tail := s.framePrefix(pre, c, b.rs[i].Epoch, b.rs[i].Seq, b.bodies[i])
		bufs = append(bufs, pre[:n], tail)
	}
	return s.writevLocked(c, bufs)
}

// framePrefix puts the frame header and envelope of message seq into pre
// and returns its length and the tail to write after it.
func (s *Server) framePrefix(pre []byte, c *conn, epoch string, seq uint64, m *body) (int, []byte) {
	if c.m.Deflate() {
		if z := s.zTail(m); z != nil {
			return deflatedPrefix(pre, seq, epoch, len(z)), z
		}
	}
	return seqPrefix(pre, seq, epoch, len(m.tail)), m.tail
}
