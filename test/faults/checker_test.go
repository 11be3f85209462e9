package faults

import (
	"testing"
	"time"
)

// TestCheck holds the checker to the definitions in the package doc on a
// hand-made run (no processes: it runs with -short too).
func TestCheck(t *testing.T) {
	t0 := time.Unix(1000, 0)
	ms := func(n int) time.Time { return t0.Add(time.Duration(n) * time.Millisecond) }
	pub := func(p, n int64, user int, sent, done int, acked bool) Publish {
		return Publish{P: p, N: n, User: user, Sent: ms(sent), Done: ms(done), Acked: acked, Outcome: "X"}
	}
	got := func(p, n int64, at int) Received { return Received{P: p, N: n, At: ms(at)} }
	pubs := []Publish{
		pub(1, 1, 0, 0, 5, true),      // u0: received
		pub(1, 2, 0, 10, 15, true),    // u0: received after 1,3 (3 was sent after 2's ack): out of order
		pub(1, 3, 0, 20, 25, true),    // u0: received twice
		pub(2, 1, 0, 30, 1030, false), // u0: failed, never received: not lost
		pub(2, 2, 1, 13, 14, true),    // u1: lost, no gap notice after it
		pub(2, 3, 1, 10, 15, true),    // u1: lost, gap notice after it
		pub(2, 4, 1, 20, 22, true),    // u1: received
		pub(1, 4, 2, 40, 1040, false), // u2: failed during the fault
		pub(1, 5, 2, 50, 55, true),    // u2: received, sent concurrently with 6
		pub(1, 6, 2, 51, 56, true),    // u2: received before 5: not out of order (6 sent before 5's ack)
	}
	users := []UserStats{
		{UID: "u0", Connected: true, Moves: 2, Got: []Received{got(1, 1, 6), got(1, 3, 26), got(1, 2, 27), got(1, 3, 28)}},
		{UID: "u1", Connected: true, Moves: 3, Gaps: []time.Time{ms(12)}, Got: []Received{got(2, 4, 23), got(9, 9, 24)}},
		{UID: "u2", Connected: true, Moves: 1, Got: []Received{got(1, 6, 57), got(1, 5, 58)}},
	}
	in := Input{Users: users, Publishes: pubs, Changes: []int{1, 1, 0}, Healthy: []bool{true, false, true},
		FaultStart: ms(35), FaultEnd: ms(100)}

	r := Check(in)
	want := map[string][2]int{
		"acked":        {r.Acked, 8},
		"failed":       {r.Failed, 2},
		"lost":         {r.Lost, 2}, // no gap loss allowed: both of u1's count
		"lost w/ gap":  {r.LostWithGap, 0},
		"duplicated":   {r.Duplicated, 1},
		"out of order": {r.OutOfOrder, 1},
		"misdelivered": {r.Misdelivered, 1},
		"gap notices":  {r.GapNotices, 1},
		"max moves":    {r.MaxMoves, 3},
		"over budget":  {r.OverBudget, 1}, // u1: 3 moves for 1 change
		"unaffected":   {r.Unaffected, 1}, // u2 moved without an owner change
		"in fault":     {r.FaultFailures, 1},
		"affected":     {r.Affected, 2},
	}
	for k, v := range want {
		if v[0] != v[1] {
			t.Errorf("%s = %d, want %d", k, v[0], v[1])
		}
	}
	if r.Pass() {
		t.Error("row passes")
	}

	in.Expect.GapLoss = true
	r = Check(in)
	if r.Lost != 1 || r.LostWithGap != 1 {
		t.Errorf("with gap loss allowed: lost %d, lost with gap %d; want 1, 1", r.Lost, r.LostWithGap)
	}
	// Latency over healthy users only: u0 and u2's acked publishes.
	if r.MaxMs != 5 {
		t.Errorf("max latency %v ms, want 5", r.MaxMs)
	}

	// A clean run passes.
	clean := Check(Input{Users: []UserStats{{UID: "u0", Connected: true, Got: []Received{got(1, 1, 6)}}},
		Publishes: []Publish{pub(1, 1, 0, 0, 5, true)}, FaultStart: ms(0), FaultEnd: ms(10)})
	if !clean.Pass() || clean.Verdict(true) != "PASS" {
		t.Errorf("clean run: %v", clean.Failures)
	}
}
