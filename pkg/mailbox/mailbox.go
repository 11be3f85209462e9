// Package mailbox keeps a user's recent messages so that a reconnect can
// resume where it stopped and a user who is not connected yet receives what
// was published meanwhile.
//
// A Box is pure: it takes time as an argument and does no I/O. It is not safe
// for concurrent use; the caller (the edge's user registry) guards it.
//
// A box is one user's stream: its messages are numbered (Epoch, Seq), Seq
// increasing by one per message within the epoch (docs/protocol.md,
// "Epochs"). When the user moves in a planned way, the whole stream —
// messages, epoch, numbering and idempotency records — is handed to the new
// owner (Snapshot, Restore, Adopt), so the client's numbering continues;
// any other change of owner starts a new epoch, and a client resuming from
// an epoch the box does not hold gets one gap notice and the messages it
// provably never saw (ResumeEpoch), never a payload twice.
//
// Clients that resume with last_seq alone (no epoch) keep the older rule:
// when the last_seq is higher than anything this box issued (the user moved
// here from another edge), messages stored but never sent are renumbered
// to follow it, so the client's dedupe-by-seq never discards them.
package mailbox

import (
	"math"
	"slices"
)

// MaxSeq is the largest sequence number: JavaScript's largest exact
// integer, 2^53-1. A stream that reaches it continues in a new epoch.
const MaxSeq = 1<<53 - 1

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
// Epoch names the stream the range belongs to (empty: the box's own, for
// clients that resumed without an epoch); Open means the range has no
// known end: everything after From-1 in Epoch may be missing (the stream
// ended on an edge that crashed or was fenced).
type Gap struct {
	From, To uint64
	Epoch    string
	Open     bool
}

// KeyRecord remembers a publish applied under an idempotency key: its
// first answer, returned again to a retry.
type KeyRecord struct {
	Key     string
	Epoch   string
	Seq     uint64
	Outcome uint8 // the caller's outcome code
	Expires int64 // Unix ns
}

// Box is one user's bounded message buffer, ordered by Seq.
type Box struct {
	msgs  []Message // ring buffer of capacity limit, grown lazily
	head  int
	n     int
	limit int32
	// shown: a message of this epoch reached a connection, so a client
	// may hold the epoch.
	shown bool

	last  uint64 // last sequence number issued
	floor uint64 // highest sequence number removed (evicted or expired)
	// due is a lower bound of the earliest deadline (Unix ns) of a stored
	// message or idempotency record; Expire before it has nothing to do.
	// 0 means unknown (Expire makes a full pass and sets it); noneDue
	// means the box holds nothing that expires.
	due int64

	// Epoch names the stream; set by New or a hand-over.
	Epoch string
	// extra is allocated the first time one of its fields is set: an idle
	// connected user's box stays in the 96-byte size class.
	extra *boxExtra
}

// boxExtra is the part of a Box that most idle users never need.
type boxExtra struct {
	// lostUnsent counts messages removed before any connection took them;
	// reported to the next resuming client.
	lostUnsent uint64
	// touched is when Expire last removed a message (Unix ns).
	touched int64
	keys    []KeyRecord // idempotency records, oldest first, at most limit
	// kbuf is keys' backing array (keys is a window of it that slides
	// forward as the oldest record goes), so that remembering a key in a
	// full box costs O(1) amortized rather than a shift of every record.
	kbuf []KeyRecord
	// adopted names the other streams merged into this one, so the same
	// stream handed over twice is merged once.
	adopted []string
}

// ext returns b.extra, allocating it.
func (b *Box) ext() *boxExtra {
	if b.extra == nil {
		b.extra = &boxExtra{}
	}
	return b.extra
}

// lostUnsent returns how many messages were removed before any connection
// took them, since the last resume.
func (b *Box) lostUnsent() uint64 {
	if b.extra == nil {
		return 0
	}
	return b.extra.lostUnsent
}

func (b *Box) setLostUnsent(n uint64) {
	if n != 0 || b.extra != nil {
		b.ext().lostUnsent = n
	}
}

// keys returns the idempotency records, oldest first.
func (b *Box) keys() []KeyRecord {
	if b.extra == nil {
		return nil
	}
	return b.extra.keys
}

// adopted returns the epochs merged into this stream.
func (b *Box) adopted() []string {
	if b.extra == nil {
		return nil
	}
	return b.extra.adopted
}

// noneDue is Box.due when nothing stored can expire.
const noneDue = math.MaxInt64

// New returns an empty box for a new stream named epoch that keeps at most
// limit messages (at least 1).
func New(limit int, epoch string) *Box {
	limit = min(max(limit, 1), math.MaxInt32)
	return &Box{limit: int32(limit), Epoch: epoch, due: noneDue}
}

// Shown reports whether a message of the box's epoch reached a connection.
func (b *Box) Shown() bool { return b.shown }

// Full reports whether the epoch has reached MaxSeq: the next Push must
// follow a Rollover.
func (b *Box) Full() bool { return b.last >= MaxSeq }

// Rollover starts a new epoch at seq 1 (the old one reached MaxSeq).
// Messages no connection has taken move along in order, renumbered from 1;
// the rest are dropped (a client resuming the old epoch gets a gap).
func (b *Box) Rollover(epoch string, now int64) {
	unsent := b.TakeUnsent(now)
	b.msgs, b.head, b.n = nil, 0, 0
	b.Epoch, b.last, b.floor, b.shown = epoch, 0, 0, false
	b.setLostUnsent(0)
	for _, m := range unsent {
		b.Push(m.Body, m.Expires, false)
	}
}

// Last returns the last sequence number issued.
func (b *Box) Last() uint64 { return b.last }

// Len returns the number of stored messages.
func (b *Box) Len() int { return b.n }

// Idle reports whether the box can be forgotten at now: it holds no
// messages and nothing changed for keep nanoseconds. Keeping an empty box
// for a while lets a client that comes back soon still learn what expired.
func (b *Box) Idle(now, keep int64) bool {
	return b.n == 0 && (b.extra == nil || len(b.extra.keys) == 0 && now-b.extra.touched >= keep)
}

// Push stores body under the next sequence number and returns it. The oldest
// message is evicted when the box is full.
func (b *Box) Push(body []byte, expires int64, sent bool) uint64 {
	b.shown = b.shown || sent
	b.last++
	b.append(Message{Seq: b.last, Body: body, Expires: expires, Sent: sent})
	return b.last
}

func (b *Box) append(m Message) {
	b.due = min(b.due, m.Expires)
	if b.n == int(b.limit) {
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
	size = min(size, int(b.limit))
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
		b.ext().lostUnsent++
	}
	*m = Message{}
}

// MarkSent records that the message numbered seq reached a connection
// (Push stores it unsent until the caller knows).
func (b *Box) MarkSent(seq uint64) {
	b.shown = true
	for i := b.n - 1; i >= 0; i-- {
		if m := b.at(i); m.Seq == seq {
			m.Sent = true
			return
		}
	}
}

// Expire removes every message whose deadline is at or before now, and
// every idempotency record whose deadline is, and returns how many
// messages were removed. It costs O(1) while nothing stored is due (the
// box keeps a lower bound of its earliest deadline), so the edge's
// once-a-second sweep passes over boxes with nothing due without walking
// their messages and records.
func (b *Box) Expire(now int64) int {
	if b.due != 0 && now < b.due {
		return 0
	}
	next := int64(noneDue)
	removed := 0
	kept := 0
	for i := 0; i < b.n; i++ {
		m := b.at(i)
		if m.Expires <= now {
			b.ext().touched = now
			b.drop(m)
			removed++
			continue
		}
		next = min(next, m.Expires)
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
	if x := b.extra; x != nil {
		k := 0
		for _, r := range x.keys {
			if r.Expires > now {
				next = min(next, r.Expires)
				x.keys[k] = r
				k++
			}
		}
		clear(x.keys[k:])
		if x.keys = x.keys[:k]; k == 0 {
			x.keys, x.kbuf = nil, nil
		}
	}
	b.due = next
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
			lost := b.lostUnsent()
			if lost > 0 {
				gap = Gap{From: lastSeq + 1, To: lastSeq + lost}
			}
			b.last = lastSeq + lost
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
	b.setLostUnsent(0)
	if len(dst) > 0 {
		b.shown = true
	}
	return dst, gap
}

// ResumePasses reports whether Resume(lastSeq, hasLast true) would number
// a message (or a gap) past MaxSeq: a client that keeps its own numbering
// (no epoch) from near MaxSeq while messages no connection took are stored,
// or were lost, here. The caller then starts a new epoch (Rollover) and
// resumes the client as a fresh one instead.
func (b *Box) ResumePasses(lastSeq uint64) bool {
	if lastSeq > MaxSeq {
		return true
	}
	last, base := b.last, lastSeq
	if lastSeq > b.last {
		lost := b.lostUnsent()
		if lost > MaxSeq-lastSeq {
			return true
		}
		last = lastSeq + lost
		base = last
	}
	var maxSent, unsent uint64
	overlap := false
	for i := 0; i < b.n; i++ {
		m := b.at(i)
		if m.Sent {
			maxSent = max(maxSent, m.Seq)
		} else {
			unsent++
			overlap = overlap || m.Seq <= lastSeq
		}
	}
	if overlap { // renumberUnsent's rule
		base = max(base, lastSeq, maxSent)
		last = base + unsent
	}
	return last > MaxSeq
}

// ResumeEpoch prepares delivery to a connection whose client last saw seq
// lastSeq of epoch (hasLast false: a fresh client, as Resume).
//
//   - Same epoch: every stored message after lastSeq, and the range it
//     missed that can no longer be replayed.
//   - Another epoch (the client's stream ended on another edge, or before
//     this box's epoch began): the box cannot prove what the client saw of
//     that epoch, so it reports an open Gap from lastSeq+1 in the client's
//     epoch, then returns the messages of its own epoch that no connection
//     has taken (provably unseen), never one that was sent.
//
// The returned messages are marked sent and appended to dst.
func (b *Box) ResumeEpoch(dst []Message, epoch string, lastSeq uint64, hasLast bool, now int64) ([]Message, Gap) {
	if !hasLast || epoch == "" {
		return b.Resume(dst, lastSeq, hasLast, now)
	}
	b.Expire(now)
	var gap Gap
	if epoch == b.Epoch {
		if lastSeq > b.last {
			// This copy of the epoch is behind the client: it was restored
			// from a stale hand-over while another edge went on with the
			// stream. Nothing may reuse a number the client has seen: what
			// is held here unsent follows the client's position, in order.
			b.renumberUnsent(lastSeq, lastSeq)
			b.last = max(b.last, lastSeq)
		}
		if b.floor > lastSeq {
			gap = Gap{From: lastSeq + 1, To: b.floor, Epoch: b.Epoch}
		}
		for i := 0; i < b.n; i++ {
			if m := b.at(i); m.Seq > lastSeq {
				m.Sent = true
				dst = append(dst, *m)
			}
		}
	} else {
		if lastSeq < MaxSeq { // a client at MaxSeq saw its epoch's end
			gap = Gap{From: lastSeq + 1, Epoch: epoch, Open: true}
		}
		for i := 0; i < b.n; i++ {
			if m := b.at(i); !m.Sent {
				m.Sent = true
				dst = append(dst, *m)
			}
		}
	}
	b.setLostUnsent(0)
	if len(dst) > 0 {
		b.shown = true
	}
	return dst, gap
}

// Unmark marks msgs (as returned by Resume) unsent again: no connection
// took them after all.
func (b *Box) Unmark(msgs []Message) {
	for _, x := range msgs {
		for i := 0; i < b.n; i++ {
			if m := b.at(i); m.Seq == x.Seq {
				m.Sent = false
				break
			}
		}
	}
}

// Key returns the record of a publish applied under key, if the box
// remembers it.
func (b *Box) Key(key string) (KeyRecord, bool) {
	keys := b.keys()
	if key == "" {
		return KeyRecord{}, false
	}
	for i := len(keys) - 1; i >= 0; i-- {
		// Keys are mostly random and of one length: the first and last
		// bytes rule nearly all out before a full comparison (a call
		// each), which was most of a publish's cost in this loop.
		k := keys[i].Key
		if len(k) == len(key) && k[0] == key[0] && k[len(k)-1] == key[len(key)-1] && k == key {
			return keys[i], true
		}
	}
	return KeyRecord{}, false
}

// RememberKey records a publish applied under an idempotency key; the
// oldest record goes when the box holds limit of them.
func (b *Box) RememberKey(r KeyRecord) {
	b.due = min(b.due, r.Expires)
	x := b.ext()
	if len(x.keys) >= int(b.limit) {
		x.keys[0] = KeyRecord{} // let the key's string go
		x.keys = x.keys[1:]
	}
	if len(x.keys) == cap(x.keys) {
		// No room after the window: move it to the front of kbuf when
		// that frees at least half (amortized O(1) a record), else grow
		// kbuf (up to twice the limit).
		n := len(x.keys)
		if 2*n > cap(x.kbuf) {
			x.kbuf = make([]KeyRecord, min(max(2*n, 4), 2*int(b.limit)))
			if 2*n > cap(x.kbuf) {
				x.kbuf = make([]KeyRecord, 2*n)
			}
		}
		x.kbuf = x.kbuf[:cap(x.kbuf)]
		copy(x.kbuf, x.keys)
		clear(x.kbuf[n:])
		x.keys = x.kbuf[:n]
	}
	x.keys = append(x.keys, r)
}

// Stream is a box's whole state, for handing the stream to another edge.
type Stream struct {
	Epoch      string
	Last       uint64
	Floor      uint64
	LostUnsent uint64
	Shown      bool
	Messages   []Message
	Keys       []KeyRecord
}

// Snapshot returns the box's stream (expired messages and records dropped
// first). The box is left as it was; the caller forgets it.
func (b *Box) Snapshot(now int64) Stream {
	b.Expire(now)
	st := Stream{Epoch: b.Epoch, Last: b.last, Floor: b.floor, LostUnsent: b.lostUnsent(), Shown: b.shown,
		Keys: append([]KeyRecord(nil), b.keys()...)}
	for i := 0; i < b.n; i++ {
		st.Messages = append(st.Messages, *b.at(i))
	}
	return st
}

// Newest keeps, of streams that name the same epoch (copies of one stream
// handed along a chain of edges, some of them stale), the one furthest
// along: the highest Last, then the most messages marked sent. Streams of
// other epochs keep their order; the result reuses sts.
func Newest(sts []Stream) []Stream {
	out := sts[:0]
	for _, st := range sts {
		i := slices.IndexFunc(out, func(o Stream) bool { return o.Epoch == st.Epoch })
		switch {
		case i < 0:
			out = append(out, st)
		case furtherAlong(st, out[i]):
			out[i] = st
		}
	}
	return out
}

// furtherAlong reports whether a is a later copy of b's epoch than b.
func furtherAlong(a, b Stream) bool {
	if a.Last != b.Last {
		return a.Last > b.Last
	}
	sent := func(st Stream) (n int) {
		for _, m := range st.Messages {
			if m.Sent {
				n++
			}
		}
		return n
	}
	return sent(a) > sent(b)
}

// Restore builds a box that continues st, keeping at most limit messages.
func Restore(limit int, st Stream) *Box {
	b := New(limit, st.Epoch)
	b.last, b.floor, b.shown = st.Last, st.Floor, st.Shown
	b.setLostUnsent(st.LostUnsent)
	for _, m := range st.Messages {
		if m.Seq == 0 || m.Seq > st.Last {
			continue // malformed: never issued in this stream
		}
		b.append(m)
	}
	for _, r := range st.Keys {
		b.RememberKey(r)
	}
	return b
}

// Adopt merges a stream handed over from another edge into b, a stream this
// edge started meanwhile, and returns the box to keep:
//
//   - If nothing of b's epoch reached a connection, the handed-over stream
//     continues: it becomes the box, and b's messages (all unsent) follow
//     in their order with the next numbers.
//   - Otherwise b's epoch is the one clients hold: the handed-over messages
//     no connection took are appended to b as new messages; those that
//     were sent are dropped (a client resuming that epoch gets a gap).
//
// Idempotency records of both are kept, with their first answers. A
// message applied under a key the other stream applied too (a publish
// retried on the other edge, or the same handed-over stream merged again
// after its record of being merged was left behind with an earlier box)
// is kept once, as the surviving stream numbered it: appending it again
// would deliver its payload a second time under a new seq.
func (b *Box) Adopt(st Stream, now int64) *Box {
	if st.Epoch == b.Epoch || slices.Contains(b.adopted(), st.Epoch) {
		return b // merged already (the same stream handed over again)
	}
	if !b.shown {
		nb := Restore(int(b.limit), st)
		mine := b.keys()
		for i := 0; i < b.n; i++ {
			m := b.at(i)
			if m.Expires > now && !nb.applied(mine, b.Epoch, m.Seq) {
				nb.Push(m.Body, m.Expires, m.Sent)
			}
		}
		for _, r := range mine {
			nb.rememberFirst(r)
		}
		x := nb.ext()
		x.adopted = append(append(x.adopted, b.adopted()...), b.Epoch)
		return nb
	}
	x := b.ext()
	x.adopted = append(x.adopted, st.Epoch)
	for _, m := range st.Messages {
		if !m.Sent && m.Expires > now && !b.Full() && !b.applied(st.Keys, st.Epoch, m.Seq) {
			b.Push(m.Body, m.Expires, false)
		}
	}
	for _, r := range st.Keys {
		b.rememberFirst(r)
	}
	return b
}

// applied reports whether the message numbered seq in epoch was published
// under an idempotency key (found in recs, that stream's records) that b
// has applied already.
func (b *Box) applied(recs []KeyRecord, epoch string, seq uint64) bool {
	for _, r := range recs {
		if r.Seq == seq && r.Epoch == epoch {
			_, ok := b.Key(r.Key)
			return ok
		}
	}
	return false
}

// rememberFirst is RememberKey for a record merged from another stream: a
// key b already remembers keeps its first answer.
func (b *Box) rememberFirst(r KeyRecord) {
	if _, ok := b.Key(r.Key); !ok {
		b.RememberKey(r)
	}
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
