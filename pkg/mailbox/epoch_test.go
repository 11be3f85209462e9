package mailbox

import (
	"fmt"
	"testing"
)

func eseqs(ms []Message) string {
	s := ""
	for _, m := range ms {
		s += fmt.Sprintf("%d:%s ", m.Seq, m.Body)
	}
	return s
}

const far = int64(1) << 62

// Same epoch: exactly what came after last_seq; another epoch: one open
// gap in the client's epoch, then only what no connection took.
func TestResumeEpoch(t *testing.T) {
	b := New(10, "A")
	for i := 1; i <= 5; i++ {
		b.Push([]byte(fmt.Sprint("m", i)), far, i <= 3)
	}
	got, gap := b.ResumeEpoch(nil, "A", 2, true, 0)
	if eseqs(got) != "3:m3 4:m4 5:m5 " || gap != (Gap{}) {
		t.Fatalf("same epoch: %s %+v", eseqs(got), gap)
	}
	c := New(10, "B")
	c.Push([]byte("x1"), far, true)
	c.Push([]byte("x2"), far, false)
	got, gap = c.ResumeEpoch(nil, "A", 57, true, 0)
	if eseqs(got) != "2:x2 " || gap != (Gap{From: 58, Epoch: "A", Open: true}) {
		t.Fatalf("other epoch: %s %+v", eseqs(got), gap)
	}
	if !c.Shown() {
		t.Fatal("replayed messages must mark the epoch shown")
	}
}

// A planned hand-over continues the stream: same epoch, the numbering
// goes on, idempotency records travel.
func TestSnapshotRestoreContinues(t *testing.T) {
	b := New(10, "A")
	b.Push([]byte("m1"), far, true)
	b.Push([]byte("m2"), far, false)
	b.RememberKey(KeyRecord{Key: "k1", Epoch: "A", Seq: 1, Outcome: 1, Expires: far})
	nb := Restore(10, b.Snapshot(0))
	if nb.Epoch != "A" || nb.Last() != 2 || !nb.Shown() {
		t.Fatalf("restored %q last %d shown %v", nb.Epoch, nb.Last(), nb.Shown())
	}
	if r, ok := nb.Key("k1"); !ok || r.Seq != 1 {
		t.Fatalf("key record lost: %+v %v", r, ok)
	}
	if s := nb.Push([]byte("m3"), far, false); s != 3 {
		t.Fatalf("next seq %d, want 3", s)
	}
	got, _ := nb.ResumeEpoch(nil, "A", 1, true, 0)
	if eseqs(got) != "2:m2 3:m3 " {
		t.Fatalf("resume after hand-over: %s", eseqs(got))
	}
}

// Adopt into a stream nobody saw yet: the handed-over stream continues and
// what was stored meanwhile follows it.
func TestAdoptIntoUnshown(t *testing.T) {
	old := New(10, "A")
	old.Push([]byte("a1"), far, true)
	old.Push([]byte("a2"), far, false)
	mine := New(10, "B")
	mine.Push([]byte("b1"), far, false)
	mine.RememberKey(KeyRecord{Key: "kb", Epoch: "B", Seq: 1, Expires: far})
	nb := mine.Adopt(old.Snapshot(0), 0)
	if nb.Epoch != "A" {
		t.Fatalf("epoch %q, want the handed-over A", nb.Epoch)
	}
	got, gap := nb.ResumeEpoch(nil, "A", 1, true, 0)
	if eseqs(got) != "2:a2 3:b1 " || gap != (Gap{}) {
		t.Fatalf("%s %+v", eseqs(got), gap)
	}
	if r, ok := nb.Key("kb"); !ok || r.Epoch != "B" || r.Seq != 1 {
		t.Fatal("the first answer of a key must be kept as given")
	}
}

// Adopt into a stream clients already hold: only unsent handed-over
// messages join it, as new numbers.
func TestAdoptIntoShown(t *testing.T) {
	old := New(10, "A")
	old.Push([]byte("a1"), far, true)
	old.Push([]byte("a2"), far, false)
	mine := New(10, "B")
	s := mine.Push([]byte("b1"), far, false)
	mine.MarkSent(s)
	nb := mine.Adopt(old.Snapshot(0), 0)
	if nb != mine || nb.Epoch != "B" {
		t.Fatal("a shown stream must stay")
	}
	got, _ := nb.ResumeEpoch(nil, "B", 1, true, 0)
	if eseqs(got) != "2:a2 " {
		t.Fatalf("%s", eseqs(got))
	}
}

// At MaxSeq the stream continues in a new epoch from 1, carrying what no
// connection took; seq never exceeds 2^53-1.
func TestRolloverAtMaxSeq(t *testing.T) {
	b := New(10, "A")
	b.last = MaxSeq - 1
	if s := b.Push([]byte("last"), far, true); s != MaxSeq || !b.Full() {
		t.Fatalf("seq %d full %v", s, b.Full())
	}
	b.last = MaxSeq // as if a last unsent message were stored too
	b.append(Message{Seq: MaxSeq, Body: []byte("unsent"), Expires: far})
	b.Rollover("B", 0)
	if b.Epoch != "B" || b.Full() {
		t.Fatalf("epoch %q full %v", b.Epoch, b.Full())
	}
	if s := b.Push([]byte("next"), far, false); s != 2 {
		t.Fatalf("after rollover: seq %d, want 2 (the unsent one is 1)", s)
	}
	got, gap := b.ResumeEpoch(nil, "A", MaxSeq-1, true, 0)
	if eseqs(got) != "1:unsent 2:next " || !gap.Open || gap.Epoch != "A" {
		t.Fatalf("%s %+v", eseqs(got), gap)
	}
}

// The same stream handed over twice (a giver answering a repeated Take) is
// merged once.
func TestAdoptTwiceMergesOnce(t *testing.T) {
	old := New(10, "A")
	old.Push([]byte("a1"), far, false)
	st := old.Snapshot(0)
	mine := New(10, "B")
	s := mine.Push([]byte("b1"), far, false)
	mine.MarkSent(s)
	nb := mine.Adopt(st, 0).Adopt(st, 0)
	if nb.Len() != 2 || nb.Last() != 2 {
		t.Fatalf("len %d last %d, want the handed-over message once", nb.Len(), nb.Last())
	}
	fresh := Restore(10, st)
	if again := fresh.Adopt(st, 0); again != fresh || again.Len() != 1 {
		t.Fatal("a stream adopted into itself")
	}
}

// ResumePasses is true exactly when Resume would number past MaxSeq.
func TestResumePassesMatchesResume(t *testing.T) {
	for _, tc := range []struct {
		stored int
		sent   bool
		last   uint64
	}{
		{0, false, MaxSeq}, {2, false, MaxSeq}, {2, false, MaxSeq - 1}, {2, false, MaxSeq - 2},
		{2, true, MaxSeq}, {1, false, MaxSeq - 1}, {3, false, 0}, {0, false, 0},
	} {
		b := New(8, "A")
		for i := 0; i < tc.stored; i++ {
			b.Push([]byte("x"), far, tc.sent)
		}
		passes := b.ResumePasses(tc.last)
		msgs, gap := b.Resume(nil, tc.last, true, 0)
		over := b.Last() > MaxSeq || gap.To > MaxSeq
		for _, m := range msgs {
			over = over || m.Seq > MaxSeq
		}
		if passes != over {
			t.Errorf("%+v: ResumePasses %v, Resume went past MaxSeq: %v", tc, passes, over)
		}
	}
}

// Of several copies of one epoch, the one furthest along is kept.
func TestNewestKeepsTheFurthestCopy(t *testing.T) {
	stale := Stream{Epoch: "e", Last: 3, Messages: []Message{{Seq: 3, Body: []byte("c")}}}
	later := Stream{Epoch: "e", Last: 7, Messages: []Message{{Seq: 7, Body: []byte("g")}}}
	other := Stream{Epoch: "f", Last: 1}
	got := Newest([]Stream{stale, other, later})
	if len(got) != 2 || got[0].Epoch != "e" || got[0].Last != 7 || got[1].Epoch != "f" {
		t.Fatalf("Newest = %+v, want e@7 then f", got)
	}
	sentLater := Stream{Epoch: "e", Last: 3, Messages: []Message{{Seq: 3, Body: []byte("c"), Sent: true}}}
	if got := Newest([]Stream{stale, sentLater}); len(got) != 1 || !got[0].Messages[0].Sent {
		t.Fatalf("on equal Last the copy with more sent messages wins, got %+v", got)
	}
}

// A box restored from a stale copy of the client's epoch (behind what the
// client saw) reuses no number: what it holds unsent follows the client's
// position.
func TestResumeEpochAheadOfTheBox(t *testing.T) {
	b := Restore(16, Stream{Epoch: "e", Last: 3, Messages: []Message{{Seq: 1, Sent: true}, {Seq: 2, Sent: true}, {Seq: 3, Sent: true}}})
	seq := b.Push([]byte("new"), 1<<62, false) // published before the client came back
	if seq != 4 {
		t.Fatalf("push got %d", seq)
	}
	msgs, gap := b.ResumeEpoch(nil, "e", 7, true, 1)
	if gap != (Gap{}) || len(msgs) != 1 || msgs[0].Seq != 8 || string(msgs[0].Body) != "new" {
		t.Fatalf("resume at 7: %+v gap %+v, want the new message as seq 8", msgs, gap)
	}
	if next := b.Push([]byte("next"), 1<<62, false); next != 9 {
		t.Fatalf("next push got seq %d, want 9", next)
	}
}

// A publish applied under one idempotency key in both streams (retried on
// the other edge) is kept once when they merge, whichever way: with the
// number and first answer of the stream that survives.
func TestAdoptKeepsAKeyedMessageOnce(t *testing.T) {
	// Into a stream clients hold: the other copy is not appended.
	old := New(10, "A")
	old.RememberKey(KeyRecord{Key: "k", Epoch: "A", Seq: old.Push([]byte("x"), far, false), Expires: far})
	mine := New(10, "B")
	s := mine.Push([]byte("x"), far, false)
	mine.MarkSent(s)
	mine.RememberKey(KeyRecord{Key: "k", Epoch: "B", Seq: s, Expires: far})
	nb := mine.Adopt(old.Snapshot(0), 0)
	if got, _ := nb.ResumeEpoch(nil, "B", 1, true, 0); len(got) != 0 || nb.Last() != 1 {
		t.Fatalf("resume after the merge: %s (last %d), want nothing: x was applied here", eseqs(got), nb.Last())
	}
	if r, ok := nb.Key("k"); !ok || r.Epoch != "B" || r.Seq != 1 {
		t.Fatalf("key answer %+v, want this stream's first answer", r)
	}

	// Into a stream nobody saw: the handed-over one continues, x once.
	mine = New(10, "B")
	mine.RememberKey(KeyRecord{Key: "k", Epoch: "B", Seq: mine.Push([]byte("x"), far, false), Expires: far})
	mine.Push([]byte("y"), far, false)
	nb = mine.Adopt(old.Snapshot(0), 0)
	if got, _ := nb.Resume(nil, 0, false, 0); eseqs(got) != "1:x 2:y " {
		t.Fatalf("merged stream %s, want 1:x 2:y", eseqs(got))
	}
	if r, ok := nb.Key("k"); !ok || r.Epoch != "A" || r.Seq != 1 {
		t.Fatalf("key answer %+v, want the continued stream's", r)
	}
}

// A stream merged into another, which was then handed over (the record of
// the merge stays behind), is not merged a second time when a stale copy
// of it comes back (a giver answering a repeated Take with what it gave):
// its keyed messages were delivered already and would arrive again under
// new numbers.
func TestAdoptAfterHandOverMergesOnce(t *testing.T) {
	old := New(10, "A")
	old.RememberKey(KeyRecord{Key: "k1", Epoch: "A", Seq: old.Push([]byte("x1"), far, false), Expires: far})
	old.RememberKey(KeyRecord{Key: "k2", Epoch: "A", Seq: old.Push([]byte("x2"), far, false), Expires: far})
	stale := old.Snapshot(0)
	mine := New(10, "B")
	mine.MarkSent(mine.Push([]byte("b1"), far, false))
	mine = mine.Adopt(stale, 0)
	if got, _ := mine.ResumeEpoch(nil, "B", 1, true, 0); eseqs(got) != "2:x1 3:x2 " {
		t.Fatalf("first merge: %s", eseqs(got))
	}
	moved := Restore(10, mine.Snapshot(0)) // handed over to another edge
	again := moved.Adopt(stale, 0)
	if got, _ := again.ResumeEpoch(nil, "B", 3, true, 0); len(got) != 0 || again.Last() != 3 {
		t.Fatalf("merged again: %s (last %d), want nothing new", eseqs(got), again.Last())
	}
}
