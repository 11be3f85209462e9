package report

import (
	"os"
	"path/filepath"
	"testing"
)

// A log-scale chart whose every point is zero (a server that died before
// its first measured step) renders as an empty chart instead of panicking
// and losing the run's tables.
func TestLogChartWithNoPositiveData(t *testing.T) {
	path := filepath.Join(t.TempDir(), "c.png")
	c := Chart{Name: "p99", Title: "p99", X: "rate", Y: "ms", LogY: true, LogX: true,
		Series: []Series{{Name: "dead", Points: [][2]float64{{0, 0}, {1000, 0}}}}}
	if err := c.render(path); err != nil {
		t.Fatal(err)
	}
	if fi, err := os.Stat(path); err != nil || fi.Size() == 0 {
		t.Fatalf("no chart written: %v", err)
	}
}
