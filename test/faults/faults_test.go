package faults

import (
	"context"
	"os"
	"strings"
	"testing"
	"time"
)

// shortSet is what go test runs, at ShortParams sizes: one planned resize
// and every fault (h is skipped without root). The other planned resize
// (a-etcd) runs in make faults (FAULTS_SCENARIOS=all here).
var shortSet = []string{"a-file", "b", "c", "d", "e", "f", "g", "h", "i"}

// TestFaults runs the short fault suite against processes built from this
// tree and asserts the outcome counts of every row (0 lost, duplicated,
// out of order; moves within budget; ...). Latency is printed, never
// asserted. FAULTS_SCENARIOS=all (or a list) overrides the set;
// FAULTS_KEEP=dir keeps every scenario's logs and anomalies.txt there.
func TestFaults(t *testing.T) {
	if testing.Short() {
		t.Skip("runs a cluster of real processes for minutes")
	}
	set := shortSet
	if v := os.Getenv("FAULTS_SCENARIOS"); v != "" {
		set = strings.Split(v, ",")
	}
	var scs []Scenario
	for _, name := range set {
		s, err := Select(name)
		if err != nil {
			t.Fatal(err)
		}
		scs = append(scs, s...)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
	defer cancel()
	bins, err := Build(ctx, t.TempDir())
	if err != nil {
		t.Fatal(err)
	}
	p := ShortParams()
	var rows []Row
	for _, sc := range scs {
		t.Run(sc.Name, func(t *testing.T) {
			base := t.TempDir()
			if keep := os.Getenv("FAULTS_KEEP"); keep != "" {
				base = keep // logs and anomalies.txt outlive the test
				if err := os.MkdirAll(base, 0o755); err != nil {
					t.Fatal(err)
				}
			}
			row, err := Run(sc, bins, p, base, t.Logf)
			if err != nil {
				row.Scenario, row.Store = sc.Name, sc.Store
				row.Failures = append(row.Failures, "harness: "+err.Error())
			}
			rows = append(rows, row)
			if row.Skipped != "" {
				// Only for missing privileges (network namespaces).
				t.Skip(row.Skipped)
			}
			for _, f := range row.Failures {
				t.Errorf("%s (%s): %s", row.Scenario, row.Store, f)
			}
			if len(row.Failures) > 0 {
				for i, d := range row.Details {
					if i == 20 {
						t.Logf("... %d more in anomalies.txt (FAULTS_KEEP=dir keeps it)", len(row.Details)-i)
						break
					}
					t.Log(d)
				}
			}
			t.Logf("publish p50/p99/max %.1f/%.1f/%.0f ms to healthy users (target p99 <= %v, not asserted)",
				row.P50ms, row.P99ms, row.MaxMs, P99Target)
		})
	}
	var b strings.Builder
	WriteTable(&b, rows, false)
	t.Logf("fault suite, %d users, %.0f msg/s:\n%s", p.Users, p.Rate, b.String())
}
