package mailbox

import (
	"fmt"
	"reflect"
	"testing"
)

const sec = int64(1e9)

func seqs(ms []Message) []uint64 {
	out := []uint64{}
	for _, m := range ms {
		out = append(out, m.Seq)
	}
	return out
}

func bodies(ms []Message) []string {
	out := []string{}
	for _, m := range ms {
		out = append(out, string(m.Body))
	}
	return out
}

func TestPushNumbersFromOne(t *testing.T) {
	b := New(4, "e1")
	for i := uint64(1); i <= 3; i++ {
		if got := b.Push([]byte("x"), 10*sec, true); got != i {
			t.Fatalf("push %d got seq %d", i, got)
		}
	}
	if b.Last() != 3 || b.Len() != 3 {
		t.Fatalf("last %d len %d", b.Last(), b.Len())
	}
}

func TestResumeReplaysExactlyTheMissed(t *testing.T) {
	b := New(10, "e1")
	for _, s := range []string{"a", "b", "c", "d"} {
		b.Push([]byte(s), 100*sec, true)
	}
	got, gap := b.Resume(nil, 2, true, 1)
	if want := []string{"c", "d"}; !reflect.DeepEqual(bodies(got), want) || gap != (Gap{}) {
		t.Fatalf("got %v gap %v, want %v and no gap", bodies(got), gap, want)
	}
	if got := seqs(got); !reflect.DeepEqual(got, []uint64{3, 4}) {
		t.Fatalf("seqs %v", got)
	}
	// Up to date: nothing.
	if got, gap := b.Resume(nil, 4, true, 1); len(got) != 0 || gap != (Gap{}) {
		t.Fatalf("got %v gap %v", got, gap)
	}
}

func TestEvictionReportsGap(t *testing.T) {
	b := New(3, "e1")
	for i := 0; i < 6; i++ { // 1..6, keeps 4,5,6
		b.Push([]byte{byte('a' + i)}, 100*sec, true)
	}
	got, gap := b.Resume(nil, 1, true, 1)
	if !reflect.DeepEqual(seqs(got), []uint64{4, 5, 6}) {
		t.Fatalf("seqs %v", seqs(got))
	}
	if gap != (Gap{From: 2, To: 3}) {
		t.Fatalf("gap %+v, want 2..3", gap)
	}
}

func TestExpiry(t *testing.T) {
	b := New(10, "e1")
	b.Push([]byte("old"), 5*sec, false)
	b.Push([]byte("new"), 50*sec, false)
	if n := b.Expire(5 * sec); n != 1 {
		t.Fatalf("expired %d, want 1", n)
	}
	got, gap := b.Resume(nil, 0, true, 6*sec)
	if !reflect.DeepEqual(bodies(got), []string{"new"}) || gap != (Gap{From: 1, To: 1}) {
		t.Fatalf("got %v gap %+v", bodies(got), gap)
	}
	b.Expire(100 * sec)
	if !b.Idle(100*sec, 0) || b.Idle(100*sec-1, 1) || b.msgs != nil {
		t.Fatalf("box should be empty and release its buffer")
	}
}

func TestFreshClientGetsOnlyUnsent(t *testing.T) {
	b := New(10, "e1")
	b.Push([]byte("seen"), 100*sec, true)
	b.Push([]byte("stored1"), 100*sec, false)
	b.Push([]byte("stored2"), 100*sec, false)
	got, gap := b.Resume(nil, 0, false, 1)
	if !reflect.DeepEqual(bodies(got), []string{"stored1", "stored2"}) || gap != (Gap{}) {
		t.Fatalf("got %v gap %v", bodies(got), gap)
	}
	// Now they are sent: a second fresh client gets nothing.
	if got, _ := b.Resume(nil, 0, false, 1); len(got) != 0 {
		t.Fatalf("second fresh resume got %v", bodies(got))
	}
}

// A user moves here from another edge that numbered up to 57, while this
// edge stored two messages for them numbered 1 and 2.
func TestAdoptsHigherLastSeqFromAnotherEdge(t *testing.T) {
	b := New(10, "e1")
	b.Push([]byte("x"), 100*sec, false)
	b.Push([]byte("y"), 100*sec, false)
	got, gap := b.Resume(nil, 57, true, 1)
	if !reflect.DeepEqual(seqs(got), []uint64{58, 59}) || !reflect.DeepEqual(bodies(got), []string{"x", "y"}) {
		t.Fatalf("got %v %v, want 58,59 x,y", seqs(got), bodies(got))
	}
	if gap != (Gap{}) {
		t.Fatalf("gap %+v", gap)
	}
	if next := b.Push([]byte("z"), 100*sec, true); next != 60 {
		t.Fatalf("next seq %d, want 60", next)
	}
}

func TestAdoptionReportsLostUnsent(t *testing.T) {
	b := New(2, "e1")
	for _, s := range []string{"a", "b", "c"} { // "a" is evicted unsent
		b.Push([]byte(s), 100*sec, false)
	}
	got, gap := b.Resume(nil, 10, true, 1)
	if gap != (Gap{From: 11, To: 11}) {
		t.Fatalf("gap %+v, want 11..11", gap)
	}
	if !reflect.DeepEqual(seqs(got), []uint64{12, 13}) || !reflect.DeepEqual(bodies(got), []string{"b", "c"}) {
		t.Fatalf("got %v %v", seqs(got), bodies(got))
	}
}

// When the client saw numbers from another edge that overlap what this
// box stored unsent, every unsent message is renumbered after last_seq in
// the order it was stored: nothing is skipped and publish order holds.
func TestOverlappingNumberingRenumbersUnsentInOrder(t *testing.T) {
	b := New(10, "e1")
	b.Push([]byte("s1"), 100*sec, true)  // 1
	b.Push([]byte("u2"), 100*sec, false) // 2
	b.Push([]byte("s3"), 100*sec, true)  // 3
	b.Push([]byte("u4"), 100*sec, false) // 4
	got, _ := b.Resume(nil, 3, true, 1)
	if !reflect.DeepEqual(bodies(got), []string{"u2", "u4"}) || !reflect.DeepEqual(seqs(got), []uint64{4, 5}) {
		t.Fatalf("got %v %v, want u2,u4 as 4,5", bodies(got), seqs(got))
	}
	for i := 1; i < b.n; i++ {
		if b.at(i-1).Seq >= b.at(i).Seq {
			t.Fatalf("box not sorted: %d then %d", b.at(i-1).Seq, b.at(i).Seq)
		}
	}
}

// The move the browser test caught: the new owner stored 33 messages (its
// numbers 1..33) while the client was still on the old edge, which had
// numbered up to 20. They must arrive after 20 in the order published.
func TestMovedUserGetsStoredMessagesInPublishOrder(t *testing.T) {
	b := New(64, "e1")
	for i := 21; i <= 53; i++ {
		b.Push([]byte(fmt.Sprint(i)), 100*sec, false)
	}
	got, gap := b.Resume(nil, 20, true, 1)
	if gap != (Gap{}) || len(got) != 33 {
		t.Fatalf("got %d messages, gap %+v", len(got), gap)
	}
	for i, m := range got {
		if string(m.Body) != fmt.Sprint(21+i) || m.Seq != uint64(21+i) {
			t.Fatalf("message %d: body %s seq %d, want %d", i, m.Body, m.Seq, 21+i)
		}
	}
	if next := b.Push([]byte("54"), 100*sec, true); next != 54 {
		t.Fatalf("next seq %d, want 54", next)
	}
}

func TestRingWrapKeepsOrder(t *testing.T) {
	b := New(4, "e1")
	for i := 0; i < 11; i++ {
		b.Push([]byte{byte(i)}, 100*sec, true)
	}
	got, gap := b.Resume(nil, 6, true, 1)
	if !reflect.DeepEqual(seqs(got), []uint64{8, 9, 10, 11}) || gap != (Gap{From: 7, To: 7}) {
		t.Fatalf("got %v gap %+v", seqs(got), gap)
	}
}

func TestPushDoesNotAllocateOnceGrown(t *testing.T) {
	b := New(8, "e1")
	body := []byte("x")
	for i := 0; i < 8; i++ {
		b.Push(body, 100*sec, true)
	}
	if n := testing.AllocsPerRun(1000, func() { b.Push(body, 100*sec, true) }); n != 0 {
		t.Fatalf("Push allocates %v times", n)
	}
}

func TestTakeUnsent(t *testing.T) {
	b := New(10, "e1")
	b.Push([]byte("s1"), 100*sec, true)
	b.Push([]byte("u2"), 100*sec, false)
	b.Push([]byte("old"), 1*sec, false)
	b.Push([]byte("u4"), 100*sec, false)
	got := b.TakeUnsent(2 * sec)
	if !reflect.DeepEqual(bodies(got), []string{"u2", "u4"}) {
		t.Fatalf("took %v", bodies(got))
	}
	if b.Len() != 1 || b.at(0).Seq != 1 {
		t.Fatalf("left %d messages", b.Len())
	}
	if next := b.Push([]byte("x"), 100*sec, true); next != 5 {
		t.Fatalf("numbering must go on: %d", next)
	}
}

// Expire keeps a lower bound of the earliest deadline so that it can skip
// boxes with nothing due; every message and record must still go at its
// own deadline, whatever order deadlines arrive in.
func TestExpireOnTimeWithMixedDeadlines(t *testing.T) {
	b := New(10, "e1")
	b.Push([]byte("a"), 50*sec, true)
	if n := b.Expire(10 * sec); n != 0 || b.due != 50*sec {
		t.Fatalf("expire before any deadline removed %d, due %d", n, b.due)
	}
	b.Push([]byte("b"), 20*sec, true) // earlier than the stored one
	b.Push([]byte("c"), 30*sec, true)
	b.RememberKey(KeyRecord{Key: "k1", Seq: 2, Expires: 15 * sec})
	if n := b.Expire(15*sec - 1); n != 0 || b.Len() != 3 {
		t.Fatalf("expire before the earliest deadline removed %d, len %d", n, b.Len())
	}
	if b.Expire(15*sec) != 0 {
		t.Fatal("a record's deadline removed a message")
	}
	if _, ok := b.Key("k1"); ok {
		t.Fatal("the record outlived its deadline")
	}
	if b.due != 20*sec {
		t.Fatalf("due %d after the record went, want the next message's 20s", b.due)
	}
	if n := b.Expire(20 * sec); n != 1 || !reflect.DeepEqual(bodies(b.Snapshot(20*sec).Messages), []string{"a", "c"}) {
		t.Fatalf("at 20s removed %d, kept %v", n, bodies(b.Snapshot(20*sec).Messages))
	}
	if n := b.Expire(30 * sec); n != 1 {
		t.Fatalf("at 30s removed %d", n)
	}
	if n := b.Expire(50 * sec); n != 1 || b.Len() != 0 || b.due != noneDue {
		t.Fatalf("at 50s removed %d, len %d, due %d", n, b.Len(), b.due)
	}
	// A restored stream carries its deadlines with it.
	r := Restore(4, Stream{Epoch: "e2", Last: 2, Messages: []Message{{Seq: 1, Expires: 70 * sec}, {Seq: 2, Expires: 60 * sec}},
		Keys: []KeyRecord{{Key: "k2", Expires: 65 * sec}}})
	if n := r.Expire(60 * sec); n != 1 || seqs(r.Snapshot(60 * sec).Messages)[0] != 1 {
		t.Fatalf("restored box at 60s removed %d", n)
	}
	r.Expire(65 * sec)
	if _, ok := r.Key("k2"); ok {
		t.Fatal("a restored record outlived its deadline")
	}
}

// A box with nothing due is passed over without a walk: a zero-value box
// (due unknown) makes one pass and learns its deadline.
func TestExpireSkipsBoxWithNothingDue(t *testing.T) {
	var b Box
	b.limit = 4
	b.Push([]byte("x"), 40*sec, true)
	b.due = 0 // as a box built without New
	if b.Expire(sec) != 0 || b.due != 40*sec {
		t.Fatalf("due %d after a pass, want 40s", b.due)
	}
}

// A full box remembers a new key by letting its oldest go, in order,
// however many keys pass through it.
func TestRememberKeyKeepsTheNewestInOrder(t *testing.T) {
	for _, limit := range []int{1, 2, 3, 64} {
		b := New(limit, "e1")
		for i := range 5*limit + 3 {
			b.RememberKey(KeyRecord{Key: fmt.Sprint("k", i), Seq: uint64(i), Expires: 100 * sec})
			var want []string
			for j := max(0, i+1-limit); j <= i; j++ {
				want = append(want, fmt.Sprint("k", j))
			}
			var got []string
			for _, r := range b.Snapshot(sec).Keys {
				got = append(got, r.Key)
			}
			if !reflect.DeepEqual(got, want) {
				t.Fatalf("limit %d after key %d: %v, want %v", limit, i, got, want)
			}
			if _, ok := b.Key(fmt.Sprint("k", i-limit)); ok && i >= limit {
				t.Fatalf("limit %d: key %d outlived its eviction", limit, i-limit)
			}
			if r, ok := b.Key(fmt.Sprint("k", i)); !ok || r.Seq != uint64(i) {
				t.Fatalf("limit %d: key %d not found", limit, i)
			}
		}
		if cap(b.extra.kbuf) > 2*limit {
			t.Fatalf("limit %d: key buffer grew to %d", limit, cap(b.extra.kbuf))
		}
	}
}
