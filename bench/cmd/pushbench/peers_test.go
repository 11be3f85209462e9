package main

import (
	"reflect"
	"testing"
	"time"
)

// fakeServer holds any rate up to limit and falls behind above it; tried
// records the rates in the order the search asked for them.
type fakeServer struct {
	limit int
	tried []int
}

func (f *fakeServer) measure(s satRules) func(int) (rateStep, error) {
	return func(rate int) (rateStep, error) {
		f.tried = append(f.tried, rate)
		st := rateStep{Rate: rate, Achieved: float64(rate), Delivered: 1, P99: 1}
		if rate > f.limit {
			st.P99 = 500
		}
		s.judge(&st)
		return st, nil
	}
}

func TestSaturateStepsUpThenBisects(t *testing.T) {
	s := satRules{maxP99: 50 * time.Millisecond, factor: 2, limit: 1 << 20, bisect: 2}
	f := &fakeServer{limit: 30000}
	sat, err := s.saturate(f.measure(s), []int{10000}, false)
	if err != nil {
		t.Fatal(err)
	}
	// 10k, 20k hold, 40k fails; bisect: 30k holds, 35k fails.
	if want := []int{10000, 20000, 40000, 30000, 35000}; !reflect.DeepEqual(f.tried, want) {
		t.Fatalf("tried %v, want %v", f.tried, want)
	}
	if sat.Best != 30000 || sat.FirstFail != 35000 {
		t.Fatalf("best %d first fail %d, want 30000 and 35000", sat.Best, sat.FirstFail)
	}
}

func TestSaturateSweepKeepsListedRatesAfterAFailure(t *testing.T) {
	s := satRules{maxP99: 50 * time.Millisecond, factor: 2, limit: 1 << 20, bisect: 1}
	f := &fakeServer{limit: 7000}
	sat, err := s.saturate(f.measure(s), []int{1000, 5000, 10000, 20000}, true)
	if err != nil {
		t.Fatal(err)
	}
	// Every listed rate is drawn, no stepping beyond them after a failure,
	// one bisection between 5k (held) and 10k (failed).
	if want := []int{1000, 5000, 10000, 20000, 7500}; !reflect.DeepEqual(f.tried, want) {
		t.Fatalf("tried %v, want %v", f.tried, want)
	}
	if sat.Best != 5000 || sat.FirstFail != 7500 {
		t.Fatalf("best %d first fail %d, want 5000 and 7500", sat.Best, sat.FirstFail)
	}
}

func TestSaturateNoFailureUpToLimit(t *testing.T) {
	s := satRules{maxP99: 50 * time.Millisecond, factor: 2, limit: 50000, bisect: 2}
	f := &fakeServer{limit: 1 << 30}
	sat, err := s.saturate(f.measure(s), []int{10000}, false)
	if err != nil {
		t.Fatal(err)
	}
	if want := []int{10000, 20000, 40000}; !reflect.DeepEqual(f.tried, want) {
		t.Fatalf("tried %v, want %v", f.tried, want)
	}
	if sat.Best != 40000 || sat.FirstFail != 0 {
		t.Fatalf("best %d first fail %d, want 40000 and 0", sat.Best, sat.FirstFail)
	}
}

func TestJudge(t *testing.T) {
	s := satRules{maxP99: 50 * time.Millisecond}
	for _, c := range []struct {
		st rateStep
		ok bool
	}{
		{rateStep{Rate: 1000, Achieved: 1000, Delivered: 1, P99: 2}, true},
		{rateStep{Rate: 1000, Achieved: 900, Delivered: 1, P99: 2}, false},     // publishers could not keep the rate
		{rateStep{Rate: 1000, Achieved: 1000, Delivered: 0.99, P99: 2}, false}, // delivery fell behind
		{rateStep{Rate: 1000, Achieved: 1000, Delivered: 1, Errors: 1, P99: 2}, false},
		{rateStep{Rate: 1000, Achieved: 1000, Delivered: 1, P99: 51}, false},
	} {
		st := c.st
		s.judge(&st)
		if st.OK != c.ok || (!st.OK && st.Why == "") {
			t.Errorf("%+v: ok %v (%q), want %v", c.st, st.OK, st.Why, c.ok)
		}
	}
}
