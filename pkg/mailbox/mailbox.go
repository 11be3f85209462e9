// Package mailbox keeps a user's recent messages so that a reconnect can
// resume where it stopped and a user who is not connected yet receives what
// was published meanwhile.
//
// A Box is pure: it takes time as an argument and does no I/O. It is not safe
// for concurrent use; the caller (the edge's user registry) guards it.
//
// Sequence numbers are per user and increase by one per message. A box
// continues another edge's numbering: when a client resumes with a last_seq
// higher than anything this box issued (the user moved here from another
// edge), messages this box stored but never sent are renumbered to follow
// last_seq, so the client's dedupe-by-seq never discards them.
package mailbox

// Message is one stored message.
type Message struct {
	Seq uint64
	// Body is the encoded message without its sequence number, shared by
	// every user the message went to; it is never modified.
	Body []byte
	// Expires is the deadline in Unix nanoseconds.
	Expires int64
	// Sent reports whether the message was written or queued to at least one
	// connection of the user.
	Sent bool
}

// Gap is a range of sequence numbers, From to To inclusive, that a resuming
// client missed and the box can no longer replay. The zero Gap means none.
type Gap struct{ From, To uint64 }

// Box is one user's bounded message buffer, ordered by Seq.
type Box struct {
	msgs  []Message // ring buffer of capacity limit, grown lazily
	head  int
	n     int
	limit int

	last  uint64 // last sequence number issued
	floor uint64 // highest sequence number removed (evicted or expired)
	// lostUnsent counts messages removed before any connection took them;
	// reported to the next resuming client.
	lostUnsent uint64
	// touched is when Expire last removed a message (Unix ns).
	touched int64
}

// New returns an empty box that keeps at most limit messages (at least 1).
func New(limit int) *Box {
	if limit < 1 {
		limit = 1
	}
	return &Box{limit: limit}
}

// Last returns the last sequence number issued.
func (b *Box) Last() uint64 { return b.last }

// Len returns the number of stored messages.
func (b *Box) Len() int { return b.n }

// Idle reports whether the box can be forgotten at now: it holds no
// messages and nothing changed for keep nanoseconds. Keeping an empty box
// for a while lets a client that comes back soon still learn what expired.
func (b *Box) Idle(now, keep int64) bool { return b.n == 0 && now-b.touched >= keep }

// Push stores body under the next sequence number and returns it. The oldest
// message is evicted when the box is full.
func (b *Box) Push(body []byte, expires int64, sent bool) uint64 {
	b.last++
	b.append(Message{Seq: b.last, Body: body, Expires: expires, Sent: sent})
	return b.last
}

func (b *Box) append(m Message) {
	if b.n == b.limit {
		b.drop(b.at(0))
		b.head = (b.head + 1) % len(b.msgs)
		b.n--
	}
	if b.n == len(b.msgs) {
		b.grow()
	}
	b.msgs[(b.head+b.n)%len(b.msgs)] = m
	b.n++
}

func (b *Box) grow() {
	size := 2 * len(b.msgs)
	if size == 0 {
		size = 2
	}
	if size > b.limit {
		size = b.limit
	}
	next := make([]Message, size)
	for i := 0; i < b.n; i++ {
		next[i] = *b.at(i)
	}
	b.msgs, b.head = next, 0
}

func (b *Box) at(i int) *Message { return &b.msgs[(b.head+i)%len(b.msgs)] }

func (b *Box) drop(m *Message) {
	if m.Seq > b.floor {
		b.floor = m.Seq
	}
	if !m.Sent {
		b.lostUnsent++
	}
	*m = Message{}
}

// MarkSent records that the message numbered seq reached a connection
// (Push stores it unsent until the caller knows).
func (b *Box) MarkSent(seq uint64) {
	for i := b.n - 1; i >= 0; i-- {
		if m := b.at(i); m.Seq == seq {
			m.Sent = true
			return
		}
	}
}

// Expire removes every message whose deadline is at or before now and
// returns how many were removed.
func (b *Box) Expire(now int64) int {
	removed := 0
	kept := 0
	for i := 0; i < b.n; i++ {
		m := b.at(i)
		if m.Expires <= now {
			b.touched = now
			b.drop(m)
			removed++
			continue
		}
		if kept != i {
			*b.at(kept) = *m
			*m = Message{}
		}
		kept++
	}
	b.n = kept
	if b.n == 0 {
		b.msgs, b.head = nil, 0 // an idle user keeps no buffer
	}
	return removed
}

// Resume prepares delivery to a connection that just attached. With hasLast
// it returns, in order, every stored message the client has not seen
// (Seq > lastSeq, after renumbering), and the range it missed that can no
// longer be replayed. Without hasLast (a fresh client) it returns the
// messages no connection has taken yet. The returned messages are marked
// sent; the slice is appended to dst.
func (b *Box) Resume(dst []Message, lastSeq uint64, hasLast bool, now int64) ([]Message, Gap) {
	b.Expire(now)
	var gap Gap
	if hasLast {
		base := lastSeq // renumbered unsent messages follow this
		if lastSeq > b.last {
			// The client saw numbers this box never issued: it comes from
			// another edge. Continue after its last_seq; what was lost here
			// unsent becomes a reported gap right after it.
			if b.lostUnsent > 0 {
				gap = Gap{From: lastSeq + 1, To: lastSeq + b.lostUnsent}
			}
			b.last = lastSeq + b.lostUnsent
			base = b.last
		} else if b.floor > lastSeq {
			gap = Gap{From: lastSeq + 1, To: b.floor}
		}
		b.renumberUnsent(lastSeq, base)
		for i := 0; i < b.n; i++ {
			m := b.at(i)
			if m.Seq > lastSeq {
				m.Sent = true
				dst = append(dst, *m)
			}
		}
	} else {
		for i := 0; i < b.n; i++ {
			m := b.at(i)
			if !m.Sent {
				m.Sent = true
				dst = append(dst, *m)
			}
		}
	}
	b.lostUnsent = 0
	return dst, gap
}

// TakeUnsent removes and returns, in order, the messages no connection has
// taken, so an edge that no longer owns the user can hand them to the
// owner. Expired ones are dropped first.
func (b *Box) TakeUnsent(now int64) []Message {
	b.Expire(now)
	var out []Message
	kept := 0
	for i := 0; i < b.n; i++ {
		m := b.at(i)
		if !m.Sent {
			out = append(out, *m)
			*m = Message{}
			continue
		}
		if kept != i {
			*b.at(kept) = *m
			*m = Message{}
		}
		kept++
	}
	b.n = kept
	if b.n == 0 {
		b.msgs, b.head = nil, 0
	}
	return out
}

// renumberUnsent gives the unsent messages, in the order they were stored,
// the numbers after base (and after every sent message) when any of them
// is numbered at or below lastSeq: the client saw those numbers from
// another edge. Renumbering all of them, not only the overlapping ones,
// keeps publish order (a user moving mid-stream must not see 41..53
// before 21..40).
func (b *Box) renumberUnsent(lastSeq, base uint64) {
	var maxSent uint64
	overlap := false
	unsent := 0
	for i := 0; i < b.n; i++ {
		m := b.at(i)
		switch {
		case m.Sent:
			maxSent = max(maxSent, m.Seq)
		default:
			unsent++
			overlap = overlap || m.Seq <= lastSeq
		}
	}
	if !overlap {
		return
	}
	base = max(base, lastSeq, maxSent)
	// Stable partition: sent messages keep their places, unsent ones
	// follow in their stored order with fresh numbers.
	tmp := make([]Message, 0, unsent)
	kept := 0
	for i := 0; i < b.n; i++ {
		m := b.at(i)
		if !m.Sent {
			tmp = append(tmp, *m)
			continue
		}
		if kept != i {
			*b.at(kept) = *m
		}
		kept++
	}
	for i := range tmp {
		base++
		tmp[i].Seq = base
		*b.at(kept + i) = tmp[i]
	}
	b.last = base
}
