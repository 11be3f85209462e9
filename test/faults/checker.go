package faults

import (
	"fmt"
	"slices"
	"sort"
	"time"
)

// Expect is what a scenario allows.
type Expect struct {
	// GapLoss: messages may be lost for a user who got a gap notice after
	// they were sent (scenarios b, c, d: what lived only in a killed
	// edge's memory for an offline user).
	GapLoss bool
	// NoMoves: no 4003 at all (scenario f).
	NoMoves bool
}

// Input is everything the checker needs about one run.
type Input struct {
	Users     []UserStats
	Publishes []Publish
	// Changes[i] is how many times user i's owner changed in the
	// scenario (see the package doc for how it is derived); a user with
	// Changes > 0 is "affected" and may see up to 2 moves per change.
	Changes []int
	// Healthy[i]: user i's owner was never the faulty member; publish
	// latency is measured on these users only.
	Healthy []bool
	// FaultStart, FaultEnd: the window in which publish failures are
	// counted as "during the fault".
	FaultStart, FaultEnd time.Time
	Expect               Expect
}

// Row is one line of the table: the outcome of one scenario.
type Row struct {
	Scenario string `json:"scenario"`
	Store    string `json:"store"`
	Skipped  string `json:"skipped,omitempty"`

	Users     int `json:"users"`
	Published int `json:"published"`
	Acked     int `json:"acknowledged"`
	Failed    int `json:"publish_failures"`

	Lost          int `json:"lost"`
	LostWithGap   int `json:"lost_with_gap_notice"`
	Duplicated    int `json:"duplicated"`
	OutOfOrder    int `json:"out_of_order"`
	Misdelivered  int `json:"misdelivered"` // payloads a user got that were published to another user
	GapNotices    int `json:"gap_notices"`
	MaxMoves      int `json:"max_moves_one_user"`
	OverBudget    int `json:"affected_users_over_2_moves_per_change"`
	Unaffected    int `json:"unaffected_users_moved"`
	Affected      int `json:"affected_users"`
	TotalMoves    int `json:"total_moves"`
	LostUsers     int `json:"users_with_loss"`
	NotConnected  int `json:"users_not_connected_at_end"`
	FatalCloses   int `json:"users_closed_4001_4002_4004"`
	ReadTimeouts  int `json:"read_timeouts"`
	Reconnects    int `json:"reconnects"`
	FaultFailures int `json:"publish_failures_during_fault"`
	// HealthyFailures: failed publishes to healthy users (whole run).
	HealthyFailures int `json:"publish_failures_healthy_users"`
	// FailureKinds counts failed publishes by publisher and outcome
	// ("router DeadlineExceeded", "sdk Unavailable", ...).
	FailureKinds map[string]int `json:"publish_failure_kinds,omitempty"`

	P50ms float64 `json:"publish_p50_ms"`
	P99ms float64 `json:"publish_p99_ms"`
	MaxMs float64 `json:"publish_max_ms"`

	// Details describe the first anomalies (lost, duplicated, out of
	// order, misdelivered), one line each; Run writes them to
	// anomalies.txt in the scenario directory.
	Details   []string `json:"-"`
	anomalous []string // users with a lost, duplicated, out-of-order or misdelivered message
	LogDir    string   `json:"log_dir,omitempty"`

	FaultSeconds float64  `json:"fault_window_s"`
	Seconds      float64  `json:"scenario_s"`
	Notes        []string `json:"notes,omitempty"`

	// Failures are the targets this row misses (latency excluded);
	// LatencyMiss is the p99 target alone.
	Failures    []string `json:"failures,omitempty"`
	LatencyMiss bool     `json:"latency_target_missed"`
}

// Pass reports whether the row meets every target but latency.
func (r *Row) Pass() bool { return r.Skipped == "" && len(r.Failures) == 0 }

// Verdict is PASS, FAIL or SKIP; withLatency also fails a missed p99.
func (r *Row) Verdict(withLatency bool) string {
	switch {
	case r.Skipped != "":
		return "SKIP"
	case len(r.Failures) > 0 || (withLatency && r.LatencyMiss):
		return "FAIL"
	}
	return "PASS"
}

const maxDetails = 300

// P99Target is the publish latency target for healthy users.
const P99Target = 50 * time.Millisecond

type key struct{ p, n int64 }

// Check computes a row from a run.
func Check(in Input) Row {
	var r Row
	r.Users = len(in.Users)
	byKey := make(map[key]*Publish, len(in.Publishes))
	perUser := make([][]*Publish, len(in.Users))
	var lat []time.Duration
	for i := range in.Publishes {
		p := &in.Publishes[i]
		byKey[key{p.P, p.N}] = p
		r.Published++
		if !p.Acked {
			r.Failed++
			if r.FailureKinds == nil {
				r.FailureKinds = map[string]int{}
			}
			r.FailureKinds[publisherName(p.P)+" "+p.Outcome]++
			if p.User >= 0 && p.User < len(in.Users) && (in.Healthy == nil || in.Healthy[p.User]) {
				r.HealthyFailures++
			}
			if !p.Sent.IsZero() && !p.Sent.Before(in.FaultStart) && !p.Sent.After(in.FaultEnd) {
				r.FaultFailures++
			}
			continue
		}
		r.Acked++
		if p.User >= 0 && p.User < len(perUser) {
			perUser[p.User] = append(perUser[p.User], p)
			if in.Healthy == nil || in.Healthy[p.User] {
				lat = append(lat, p.Latency())
			}
		}
	}
	t0 := in.FaultStart
	at := func(t time.Time) string {
		if t.IsZero() {
			return "never"
		}
		return fmt.Sprintf("%+.3fs", t.Sub(t0).Seconds())
	}
	detail := func(format string, args ...any) {
		if len(r.Details) < maxDetails {
			r.Details = append(r.Details, fmt.Sprintf(format, args...))
		}
	}
	for i, u := range in.Users {
		changes := 0
		if i < len(in.Changes) {
			changes = in.Changes[i]
		}
		if changes > 0 {
			r.Affected++
		}
		r.GapNotices += len(u.Gaps)
		r.TotalMoves += u.Moves
		r.MaxMoves = max(r.MaxMoves, u.Moves)
		r.ReadTimeouts += u.Timeouts
		r.Reconnects += max(0, u.Conns-1)
		movedTooMuch := true
		switch {
		case u.Moves > 0 && changes == 0:
			r.Unaffected++
		case u.Moves > 2*changes:
			r.OverBudget++
		default:
			movedTooMuch = false
		}
		if !u.Connected {
			r.NotConnected++
		}
		if u.Fatal != "" {
			r.FatalCloses++
		}

		anomaliesBefore := r.Duplicated + r.OutOfOrder + r.Misdelivered
		// Received: count copies, find misdeliveries, check order.
		seen := make(map[key]int, len(u.Got))
		var maxSent time.Time // latest send time of an acked publish received so far
		for _, g := range u.Got {
			k := key{g.P, g.N}
			seen[k]++
			if seen[k] > 1 {
				r.Duplicated++
				detail("duplicated %s p=%d n=%d copy %d: seq %d epoch %q at %s on connection %d",
					u.UID, g.P, g.N, seen[k], g.Seq, g.Epoch, at(g.At), g.Conn)
				continue
			}
			p := byKey[k]
			if p == nil || p.User != i {
				r.Misdelivered++
				detail("misdelivered %s p=%d n=%d at %s", u.UID, g.P, g.N, at(g.At))
				continue
			}
			if !p.Acked {
				continue
			}
			// p is out of order if something received before it was
			// sent after p was acknowledged.
			if maxSent.After(p.Done) {
				r.OutOfOrder++
				detail("out of order %s p=%d n=%d sent %s acked %s (%s) received %s seq %d epoch %q connection %d, after one sent at %s",
					u.UID, g.P, g.N, at(p.Sent), at(p.Done), p.Outcome, at(g.At), g.Seq, g.Epoch, g.Conn, at(maxSent))
			}
			if p.Sent.After(maxSent) {
				maxSent = p.Sent
			}
		}
		lostHere := 0
		for _, p := range perUser[i] {
			if seen[key{p.P, p.N}] > 0 {
				continue
			}
			lostHere++
			gapAfter := slices.ContainsFunc(u.Gaps, func(t time.Time) bool { return t.After(p.Sent) })
			if gapAfter && in.Expect.GapLoss {
				r.LostWithGap++
			} else {
				r.Lost++
			}
			detail("lost %s p=%d n=%d sent %s acked %s (%s); gap notice after it: %v; user moves %d, connections %d",
				u.UID, p.P, p.N, at(p.Sent), at(p.Done), p.Outcome, gapAfter, u.Moves, u.Conns)
		}
		if lostHere > 0 {
			r.LostUsers++
		}
		if movedTooMuch || lostHere > 0 || r.Duplicated+r.OutOfOrder+r.Misdelivered > anomaliesBefore {
			r.anomalous = append(r.anomalous, u.UID)
		}
	}
	sort.Slice(lat, func(a, b int) bool { return lat[a] < lat[b] })
	r.P50ms, r.P99ms, r.MaxMs = ms(quantile(lat, 0.5)), ms(quantile(lat, 0.99)), ms(quantile(lat, 1))
	r.FaultSeconds = in.FaultEnd.Sub(in.FaultStart).Seconds()

	fail := func(format string, args ...any) { r.Failures = append(r.Failures, fmt.Sprintf(format, args...)) }
	if r.Acked == 0 {
		fail("no publish was acknowledged")
	}
	if r.Lost > 0 {
		fail("%d acknowledged publishes lost (for %d users)", r.Lost, r.LostUsers)
	}
	if r.Duplicated > 0 {
		fail("%d duplicated", r.Duplicated)
	}
	if r.OutOfOrder > 0 {
		fail("%d out of order", r.OutOfOrder)
	}
	if r.Misdelivered > 0 {
		fail("%d delivered to the wrong user", r.Misdelivered)
	}
	if r.OverBudget > 0 {
		fail("%d affected users moved more than twice per owner change (max %d moves)", r.OverBudget, r.MaxMoves)
	}
	if r.Unaffected > 0 {
		fail("%d unaffected users moved", r.Unaffected)
	}
	if in.Expect.NoMoves && r.TotalMoves > 0 {
		fail("%d moves (4003) where none are allowed", r.TotalMoves)
	}
	if r.NotConnected > 0 {
		fail("%d users not connected at the end", r.NotConnected)
	}
	if r.FatalCloses > 0 {
		fail("%d users closed with 4001/4002/4004", r.FatalCloses)
	}
	r.LatencyMiss = len(lat) == 0 || quantile(lat, 0.99) > P99Target
	return r
}

func publisherName(id int64) string {
	switch id {
	case 1:
		return "router"
	case 2:
		return "sdk"
	}
	return fmt.Sprint("publisher-", id)
}

func quantile(sorted []time.Duration, q float64) time.Duration {
	if len(sorted) == 0 {
		return 0
	}
	i := int(q*float64(len(sorted))+0.5) - 1
	i = min(max(i, 0), len(sorted)-1)
	return sorted[i]
}

func ms(d time.Duration) float64 { return float64(d.Microseconds()) / 1000 }
