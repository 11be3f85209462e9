package faults

import (
	"encoding/json"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"sort"
	"strings"
	"text/tabwriter"
	"time"
)

// columns of the table, in order.
var columns = []string{"scenario", "store", "acked", "lost", "lost w/ gap", "dup", "out of order", "gap notices",
	"max 4003/user", "unaffected moved", "p50 ms", "p99 ms", "max ms", "fail in fault", "verdict"}

func (r *Row) cells(withLatency bool) []string {
	if r.Skipped != "" {
		c := []string{r.Scenario, r.Store}
		for range columns[2 : len(columns)-1] {
			c = append(c, "-")
		}
		return append(c, "SKIP")
	}
	return []string{r.Scenario, r.Store, fmt.Sprint(r.Acked), fmt.Sprint(r.Lost), fmt.Sprint(r.LostWithGap),
		fmt.Sprint(r.Duplicated), fmt.Sprint(r.OutOfOrder), fmt.Sprint(r.GapNotices), fmt.Sprint(r.MaxMoves),
		fmt.Sprint(r.Unaffected), fmt.Sprintf("%.1f", r.P50ms), fmt.Sprintf("%.1f", r.P99ms), fmt.Sprintf("%.0f", r.MaxMs),
		fmt.Sprint(r.FaultFailures), r.Verdict(withLatency)}
}

// WriteTable prints the rows as an aligned table, then why each failing
// row fails. withLatency makes a p99 above 50 ms a failure.
func WriteTable(w io.Writer, rows []Row, withLatency bool) {
	tw := tabwriter.NewWriter(w, 0, 0, 2, ' ', tabwriter.AlignRight)
	fmt.Fprintln(tw, strings.Join(columns, "\t")+"\t")
	for i := range rows {
		fmt.Fprintln(tw, strings.Join(rows[i].cells(withLatency), "\t")+"\t")
	}
	tw.Flush()
	for i := range rows {
		writeWhy(w, &rows[i], withLatency)
	}
}

func writeWhy(w io.Writer, r *Row, withLatency bool) bool {
	var why []string
	if r.Skipped != "" {
		why = append(why, "skipped: "+r.Skipped)
	}
	why = append(why, r.Failures...)
	if r.Skipped == "" && r.LatencyMiss {
		s := fmt.Sprintf("publish p99 %.1f ms above the %v target", r.P99ms, P99Target)
		if !withLatency {
			s += " (not asserted)"
		}
		why = append(why, s)
	}
	if len(r.FailureKinds) > 0 {
		var kinds []string
		for k, n := range r.FailureKinds {
			kinds = append(kinds, fmt.Sprintf("%s %d", k, n))
		}
		sort.Strings(kinds)
		why = append(why, fmt.Sprintf("%d of %d publishes failed, %d of them to healthy users (%s)",
			r.Failed, r.Published, r.HealthyFailures, strings.Join(kinds, ", ")))
	}
	why = append(why, r.Notes...)
	if len(why) == 0 {
		return false
	}
	fmt.Fprintf(w, "%s (%s): %s\n", r.Scenario, r.Store, strings.Join(why, "; "))
	return true
}

// Markdown renders the rows as a Markdown table with the reasons below.
// meta lines (command, tree) go under the title.
func Markdown(rows []Row, p Params, withLatency bool, meta []string) string {
	var b strings.Builder
	fmt.Fprintf(&b, "# Fault suite\n\n%d users, %.0f msg/s (two publishers), %v publishing per scenario, lease TTL %v, ping %v.\n",
		p.Users, p.Rate, p.Duration, p.LeaseTTL, p.Ping)
	for _, m := range meta {
		b.WriteString(m + "\n")
	}
	b.WriteString("\nScenarios, columns and targets: test/faults/doc.go (`go doc ./test/faults`).\n\n")
	b.WriteString("| " + strings.Join(columns, " | ") + " |\n|")
	for range columns {
		b.WriteString("---|")
	}
	b.WriteString("\n")
	for i := range rows {
		b.WriteString("| " + strings.Join(rows[i].cells(withLatency), " | ") + " |\n")
	}
	b.WriteString("\n")
	for i := range rows {
		if writeWhy(&b, &rows[i], withLatency) {
			b.WriteString("\n")
		}
	}
	return b.String()
}

// Results is what the JSON file holds.
type Results struct {
	Date     time.Time      `json:"date"`
	Params   map[string]any `json:"params"`
	Rows     []Row          `json:"rows"`
	AllPass  bool           `json:"all_pass"`
	Scenario []string       `json:"scenario_descriptions"`
	Meta     []string       `json:"meta,omitempty"`
}

// WriteResults writes <dir>/<date>-faults.json and .md and returns their
// paths.
func WriteResults(dir string, rows []Row, p Params, withLatency bool, meta []string) (string, string, error) {
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return "", "", err
	}
	now := time.Now()
	res := Results{Date: now, Rows: rows, AllPass: true, Meta: meta, Params: map[string]any{
		"users": p.Users, "rate": p.Rate, "duration_s": p.Duration.Seconds(), "lease_ttl_s": p.LeaseTTL.Seconds(),
		"ping_s": p.Ping.Seconds(), "restart_after_s": p.Restart.Seconds(), "add_wait_s": p.AddWait.Seconds()}}
	for i := range rows {
		if rows[i].Verdict(withLatency) == "FAIL" {
			res.AllPass = false
		}
	}
	for _, sc := range Scenarios() {
		res.Scenario = append(res.Scenario, fmt.Sprintf("%s (%s): %s", sc.Name, sc.Store, sc.Desc))
	}
	base := filepath.Join(dir, now.Format("2006-01-02")+"-faults")
	js, err := json.MarshalIndent(res, "", "  ")
	if err != nil {
		return "", "", err
	}
	if err := os.WriteFile(base+".json", append(js, '\n'), 0o644); err != nil {
		return "", "", err
	}
	if err := os.WriteFile(base+".md", []byte(Markdown(rows, p, withLatency, meta)), 0o644); err != nil {
		return "", "", err
	}
	return base + ".json", base + ".md", nil
}
