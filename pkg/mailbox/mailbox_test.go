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
