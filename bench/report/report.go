// Package report writes a benchmark run as JSON and a Markdown table under
// bench/results, with the machine it ran on and the exact command, and
// prints each figure against its target so a miss is plain to see.
package report

import (
	"encoding/json"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"runtime"
	"strings"
	"time"
)

// Figure is one measured number, optionally with a target.
type Figure struct {
	Name   string  `json:"name"`
	Value  float64 `json:"value"`
	Unit   string  `json:"unit"`
	Target string  `json:"target,omitempty"` // e.g. "<= 512"
	Met    *bool   `json:"met,omitempty"`
	Note   string  `json:"note,omitempty"`
}

// Machine describes where a run happened.
type Machine struct {
	Cores  int    `json:"cores"`
	Kernel string `json:"kernel"`
	Go     string `json:"go"`
	Host   string `json:"host"`
}

// Run is one scenario's result.
type Run struct {
	Scenario string         `json:"scenario"`
	Started  time.Time      `json:"started"`
	Command  string         `json:"command"`
	Machine  Machine        `json:"machine"`
	Params   map[string]any `json:"params"`
	Figures  []Figure       `json:"figures"`
	Charts   []Chart        `json:"charts,omitempty"`
	Tables   []Table        `json:"tables,omitempty"`
	Raw      map[string]any `json:"raw,omitempty"`
}

// New starts a run record.
func New(scenario string, params map[string]any) *Run {
	kernel, _ := os.ReadFile("/proc/sys/kernel/osrelease")
	host, _ := os.Hostname()
	return &Run{
		Scenario: scenario, Started: time.Now().UTC(),
		Command: strings.Join(os.Args, " "),
		Machine: Machine{Cores: runtime.NumCPU(), Kernel: strings.TrimSpace(string(kernel)), Go: runtime.Version(), Host: host},
		Params:  params, Raw: map[string]any{},
	}
}

// Table is a side-by-side view of figures already recorded (peers against
// each other), printed after the figure table.
type Table struct {
	Title   string     `json:"title"`
	Columns []string   `json:"columns"`
	Rows    [][]string `json:"rows"`
}

// AddTable records a table to print after the figures.
func (r *Run) AddTable(t Table) { r.Tables = append(r.Tables, t) }

// Add records a figure. cmp is "<=" or ">=" (empty: no target).
func (r *Run) Add(name string, value float64, unit, cmp string, target float64, note string) {
	f := Figure{Name: name, Value: value, Unit: unit, Note: note}
	if cmp != "" {
		met := (cmp == "<=" && value <= target) || (cmp == ">=" && value >= target)
		f.Met = &met
		f.Target = fmt.Sprintf("%s %s", cmp, trim(target))
	}
	r.Figures = append(r.Figures, f)
}

func trim(v float64) string {
	s := fmt.Sprintf("%.3f", v)
	s = strings.TrimRight(strings.TrimRight(s, "0"), ".")
	return s
}

// Markdown renders the figures as a table.
func (r *Run) Markdown() string {
	var b strings.Builder
	fmt.Fprintf(&b, "## %s — %s\n\n", r.Scenario, r.Started.Format("2006-01-02 15:04 UTC"))
	fmt.Fprintf(&b, "`%s`  \n%d cores, Linux %s, %s\n\n", r.Command, r.Machine.Cores, r.Machine.Kernel, r.Machine.Go)
	b.WriteString("| figure | value | target | met |\n|---|---|---|---|\n")
	for _, f := range r.Figures {
		met := ""
		if f.Met != nil {
			met = "yes"
			if !*f.Met {
				met = "**NO**"
			}
		}
		v := trim(f.Value) + " " + f.Unit
		if f.Note != "" {
			v += " (" + f.Note + ")"
		}
		fmt.Fprintf(&b, "| %s | %s | %s | %s |\n", f.Name, v, f.Target, met)
	}
	for _, t := range r.Tables {
		fmt.Fprintf(&b, "\n%s\n\n| %s |\n|%s\n", t.Title, strings.Join(t.Columns, " | "), strings.Repeat("---|", len(t.Columns)))
		for _, row := range t.Rows {
			fmt.Fprintf(&b, "| %s |\n", strings.Join(row, " | "))
		}
	}
	if len(r.Charts) > 0 {
		b.WriteString("\n")
		for _, c := range r.Charts {
			if c.File != "" {
				fmt.Fprintf(&b, "![%s](%s)\n", c.Title, c.File)
			}
		}
	}
	return b.String()
}

// Print writes the table to w.
func (r *Run) Print(w io.Writer) { fmt.Fprintln(w, r.Markdown()) }

// Save writes <dir>/<date>-<scenario>.json and .md and returns the paths.
func (r *Run) Save(dir string) (string, error) {
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return "", err
	}
	base := filepath.Join(dir, r.Started.Format("2006-01-02")+"-"+r.Scenario)
	if err := r.saveCharts(base); err != nil {
		return "", err
	}
	js, err := json.MarshalIndent(r, "", "  ")
	if err != nil {
		return "", err
	}
	if err := os.WriteFile(base+".json", js, 0o644); err != nil {
		return "", err
	}
	return base + ".json", os.WriteFile(base+".md", []byte(r.Markdown()), 0o644)
}
