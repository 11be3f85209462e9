package report

import (
	"encoding/json"
	"fmt"
	"image/color"
	"os"
	"path/filepath"

	"gonum.org/v1/plot"
	"gonum.org/v1/plot/plotter"
	"gonum.org/v1/plot/vg"
)

// Series is one named line of a chart: points (x, y).
type Series struct {
	Name   string       `json:"name"`
	Points [][2]float64 `json:"points"`
}

// Chart is a line chart saved as <date>-<scenario>-<Name>.png next to the
// run's JSON and linked from its Markdown table.
type Chart struct {
	Name  string `json:"name"` // file-name part, e.g. "latency-cdf"
	Title string `json:"title"`
	X     string `json:"x"`
	Y     string `json:"y"`
	LogX  bool   `json:"log_x,omitempty"`
	LogY  bool   `json:"log_y,omitempty"` // latencies that span decades as load grows
	// LegendRight puts the legend in the upper right, for curves that
	// fall to the right (cost per message against rate).
	LegendRight bool     `json:"legend_right,omitempty"`
	Series      []Series `json:"series"`
	File        string   `json:"file,omitempty"` // set by Save
}

// AddChart records a chart to render when the run is saved.
func (r *Run) AddChart(c Chart) { r.Charts = append(r.Charts, c) }

var palette = []color.Color{
	color.RGBA{R: 0x1f, G: 0x77, B: 0xb4, A: 0xff},
	color.RGBA{R: 0xd6, G: 0x27, B: 0x28, A: 0xff},
	color.RGBA{R: 0x2c, G: 0xa0, B: 0x2c, A: 0xff},
	color.RGBA{R: 0xff, G: 0x7f, B: 0x0e, A: 0xff},
	color.RGBA{R: 0x94, G: 0x67, B: 0xbd, A: 0xff},
}

// render writes c as a PNG to path.
func (c Chart) render(path string) error {
	p := plot.New()
	p.Title.Text = c.Title
	p.X.Label.Text = c.X
	p.Y.Label.Text = c.Y
	p.Add(plotter.NewGrid())
	if c.LogX {
		p.X.Scale = plot.LogScale{}
		p.X.Tick.Marker = plot.LogTicks{Prec: -1}
	}
	if c.LogY {
		p.Y.Scale = plot.LogScale{}
		p.Y.Tick.Marker = plot.LogTicks{Prec: -1}
	}
	drawn := 0
	for i, s := range c.Series {
		xy := make(plotter.XYs, 0, len(s.Points))
		for _, pt := range s.Points {
			if (c.LogX && pt[0] <= 0) || (c.LogY && pt[1] <= 0) {
				continue
			}
			xy = append(xy, plotter.XY{X: pt[0], Y: pt[1]})
		}
		if len(xy) == 0 {
			continue
		}
		drawn++
		l, err := plotter.NewLine(xy)
		if err != nil {
			return err
		}
		col := palette[i%len(palette)]
		l.Color, l.Width = col, vg.Points(1.5)
		p.Add(l)
		if len(xy) <= 40 { // mark measured points when they are few
			pts, err := plotter.NewScatter(xy)
			if err != nil {
				return err
			}
			pts.Color, pts.Radius = col, vg.Points(2.5)
			p.Add(pts)
		}
		if s.Name != "" {
			p.Legend.Add(s.Name, l)
		}
	}
	if drawn == 0 {
		// Nothing measured (a server died before its first step): an empty
		// chart on linear axes, as a log axis has no range to show.
		p.X.Scale, p.Y.Scale = plot.LinearScale{}, plot.LinearScale{}
		p.X.Tick.Marker, p.Y.Tick.Marker = plot.DefaultTicks{}, plot.DefaultTicks{}
		p.Title.Text += " (no data)"
	}
	p.Legend.Top, p.Legend.Left = true, !c.LegendRight // rising curves leave the upper left free
	return p.Save(7*vg.Inch, 4*vg.Inch, path)
}

// saveCharts renders every chart next to base (the results path without
// extension) and records the file names.
func (r *Run) saveCharts(base string) error {
	for i := range r.Charts {
		path := base + "-" + r.Charts[i].Name + ".png"
		if err := r.Charts[i].render(path); err != nil {
			return fmt.Errorf("chart %s: %w", r.Charts[i].Name, err)
		}
		r.Charts[i].File = filepath.Base(path)
	}
	return nil
}

// Rerender reads a saved run (<date>-<scenario>.json) and renders its
// charts again next to it, e.g. after a change of chart style; the figures
// are not touched.
func Rerender(jsonPath string) error {
	b, err := os.ReadFile(jsonPath)
	if err != nil {
		return err
	}
	var r Run
	if err := json.Unmarshal(b, &r); err != nil {
		return fmt.Errorf("%s: %w", jsonPath, err)
	}
	dir := filepath.Dir(jsonPath)
	for _, c := range r.Charts {
		if c.File == "" {
			continue
		}
		if err := c.render(filepath.Join(dir, c.File)); err != nil {
			return fmt.Errorf("chart %s: %w", c.Name, err)
		}
	}
	return nil
}
