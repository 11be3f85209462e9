package console

import (
	"bufio"
	"context"
	"fmt"
	"io"
	"math"
	"net"
	"net/http"
	"net/netip"
	"slices"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/pushcluster/push/pkg/owner"
)

// minScrapeGap: requests closer together than this share one scrape, so
// several open consoles cost the edges one read a second.
const minScrapeGap = 750 * time.Millisecond

// maxMetricsBytes bounds what is read of one /metrics answer.
const maxMetricsBytes = 8 << 20

// edgesJSON is GET /api/v1/edges.
type edgesJSON struct {
	// At is when the edges were read; Source says where the figures come
	// from ("metrics": each edge's admin /metrics, at the address its
	// lease publishes).
	At     time.Time  `json:"at"`
	Source string     `json:"source"`
	Edges  []edgeJSON `json:"edges"`
	Totals totalsJSON `json:"totals"`
}

// edgeJSON is one live edge's figures. Rates are per second over the time
// since the previous read (null on the first read of an edge, or after it
// restarted).
type edgeJSON struct {
	ID uint32 `json:"id"`
	// Name is the ring's name for the member ("" when the ring does not
	// name it); InRing is whether it does.
	Name   string `json:"name"`
	InRing bool   `json:"in_ring"`
	// Metrics is the URL read; Error why it could not be (the figures
	// are then absent).
	Metrics string `json:"metrics"`
	Error   string `json:"error,omitempty"`

	Connections int64 `json:"connections"`         // push_edge_connections
	Guests      int64 `json:"guests"`              // push_edge_guest_connections
	Fenced      bool  `json:"fenced"`              // push_edge_fenced
	StoreOutage bool  `json:"store_outage"`        // push_edge_store_outage
	RingVersion int64 `json:"ring_version"`        // push_edge_ring_version
	MovedTotal  int64 `json:"moved_total"`         // push_edge_moved_total (4003 closes)
	FencedTotal int64 `json:"fenced_total"`        // push_edge_fenced_total
	Publishes   int64 `json:"publishes_total"`     // push_edge_publishes_total{outcome=delivered|stored}
	TakenTotal  int64 `json:"streams_taken_total"` // push_edge_streams_taken_total
	GivenTotal  int64 `json:"streams_given_total"` // push_edge_streams_given_total

	PublishesPerS   *float64 `json:"publishes_per_s"`    // acknowledged publishes (delivered or stored)
	MessagesOutPerS *float64 `json:"messages_out_per_s"` // push_edge_messages_out_total
	ConnectsPerS    *float64 `json:"connects_per_s"`     // push_edge_handshakes_total{result=ok}
	MovesPerS       *float64 `json:"moves_per_s"`        // push_edge_moved_total
	TakenPerS       *float64 `json:"streams_taken_per_s"`
}

// totalsJSON sums the edges read.
type totalsJSON struct {
	Connections   int64   `json:"connections"`
	Guests        int64   `json:"guests"`
	Fenced        int     `json:"fenced"` // edges fenced
	PublishesPerS float64 `json:"publishes_per_s"`
	MovesPerS     float64 `json:"moves_per_s"`
}

// sample is one read of an edge's /metrics: every series by its name and
// label text, e.g. `push_edge_publishes_total{outcome="stored"}`.
type sample struct {
	at          time.Time
	incarnation string
	series      map[string]float64
}

// get sums the series of family name.
func (s sample) get(name string) float64 { return s.with(name, "") }

// with sums the series of family name whose labels contain label (e.g.
// `outcome="stored"`; "" for all).
func (s sample) with(name, label string) float64 {
	sum := 0.0
	for k, v := range s.series {
		rest, ok := strings.CutPrefix(k, name)
		if !ok || (rest != "" && rest[0] != '{') {
			continue
		}
		if label == "" || strings.Contains(rest, label) {
			sum += v
		}
	}
	return sum
}

// parseMetrics reads a Prometheus text exposition, keeping the push_edge_
// series.
func parseMetrics(r io.Reader) (map[string]float64, error) {
	out := map[string]float64{}
	sc := bufio.NewScanner(r)
	sc.Buffer(make([]byte, 0, 64<<10), 1<<20)
	for sc.Scan() {
		line := sc.Text()
		if !strings.HasPrefix(line, "push_edge_") {
			continue
		}
		// The value follows the series (whose label values may hold
		// spaces: split after the closing brace).
		key, rest := line, ""
		if i := strings.IndexByte(line, '{'); i >= 0 {
			j := strings.LastIndexByte(line, '}')
			if j < i {
				return nil, fmt.Errorf("malformed line %q", line)
			}
			key, rest = line[:j+1], line[j+1:]
		} else if i := strings.IndexAny(line, " \t"); i >= 0 {
			key, rest = line[:i], line[i:]
		}
		fields := strings.Fields(rest)
		if len(fields) == 0 {
			return nil, fmt.Errorf("malformed line %q", line)
		}
		v, err := strconv.ParseFloat(fields[0], 64)
		if err != nil || math.IsNaN(v) {
			continue // NaN/Inf gauges say nothing useful here
		}
		out[key] = v
	}
	if err := sc.Err(); err != nil {
		return nil, err
	}
	return out, nil
}

// metricsURL is the /metrics URL of an edge whose lease publishes admin
// (host:port) and whose ring entry has ws: an empty or unspecified host
// (":9100", "0.0.0.0:9100") is the ws address's host. "" when admin is
// empty or unusable.
func metricsURL(admin, ws string) string {
	if admin == "" {
		return ""
	}
	host, port, err := net.SplitHostPort(admin)
	if err != nil || port == "" {
		return ""
	}
	if a, err := netip.ParseAddr(host); host == "" || (err == nil && a.IsUnspecified()) {
		wsHost, _, err := net.SplitHostPort(ws)
		if err != nil || wsHost == "" {
			return ""
		}
		host = wsHost
	}
	return "http://" + net.JoinHostPort(host, port) + "/metrics"
}

// scrape reads one /metrics URL.
func (c *Console) scrape(ctx context.Context, url string) (sample, error) {
	ctx, cancel := context.WithTimeout(ctx, c.cfg.ScrapeTimeout)
	defer cancel()
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, url, nil)
	if err != nil {
		return sample{}, err
	}
	resp, err := c.cfg.Client.Do(req)
	if err != nil {
		return sample{}, err
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		return sample{}, fmt.Errorf("%s: %s", url, resp.Status)
	}
	series, err := parseMetrics(io.LimitReader(resp.Body, maxMetricsBytes))
	if err != nil {
		return sample{}, fmt.Errorf("%s: %w", url, err)
	}
	return sample{at: time.Now(), series: series}, nil
}

func (c *Console) edges(w http.ResponseWriter, r *http.Request) {
	out, err := c.readEdges(r.Context())
	if err != nil {
		fail(w, http.StatusBadGateway, "%v", err)
		return
	}
	writeJSON(w, http.StatusOK, out)
}

// readEdges reads every live edge's /metrics (the members with a lease, and
// live edges the ring does not name yet) and computes rates against the
// previous read. Reads closer together than minScrapeGap share one.
func (c *Console) readEdges(ctx context.Context) (*edgesJSON, error) {
	c.scrapeMu.Lock()
	defer c.scrapeMu.Unlock()
	if c.last != nil && time.Since(c.last.At) < minScrapeGap {
		return c.last, nil
	}
	leases, err := c.readLeases(ctx)
	if err != nil {
		return nil, fmt.Errorf("read the leases: %w", err)
	}
	v := c.f.View()
	var ids []uint32
	if leases == nil { // no liveness: every member is live, but nobody says where its metrics are
		leases = map[uint32]owner.Live{}
	}
	for id := range leases {
		ids = append(ids, id)
	}
	slices.Sort(ids)
	out := &edgesJSON{At: time.Now(), Source: "metrics", Edges: make([]edgeJSON, len(ids))}
	samples := make([]sample, len(ids))
	errs := make([]error, len(ids))
	var wg sync.WaitGroup
	for i, id := range ids {
		m, inRing := v.Member(id)
		l := leases[id]
		e := &out.Edges[i]
		e.ID, e.Name, e.InRing = id, m.Name, inRing
		e.Metrics = metricsURL(l.Admin, m.WS)
		if e.Metrics == "" {
			e.Error = "its lease publishes no admin address"
			e.Connections = l.Users
			continue
		}
		wg.Go(func() {
			samples[i], errs[i] = c.scrape(ctx, e.Metrics)
			samples[i].incarnation = l.Incarnation
		})
	}
	wg.Wait()
	next := map[uint32]sample{}
	for i, id := range ids {
		e := &out.Edges[i]
		if e.Metrics == "" {
			continue
		}
		if errs[i] != nil {
			e.Error = errs[i].Error()
			e.Connections = leases[id].Users
			continue
		}
		s := samples[i]
		next[id] = s
		e.Connections = int64(s.get("push_edge_connections"))
		e.Guests = int64(s.get("push_edge_guest_connections"))
		e.Fenced = s.get("push_edge_fenced") > 0
		e.StoreOutage = s.get("push_edge_store_outage") > 0
		e.RingVersion = int64(s.get("push_edge_ring_version"))
		e.MovedTotal = int64(s.get("push_edge_moved_total"))
		e.FencedTotal = int64(s.get("push_edge_fenced_total"))
		e.Publishes = int64(acked(s))
		e.TakenTotal = int64(s.get("push_edge_streams_taken_total"))
		e.GivenTotal = int64(s.get("push_edge_streams_given_total"))
		if p, ok := c.prev[id]; ok && p.incarnation == s.incarnation {
			dt := s.at.Sub(p.at).Seconds()
			rate := func(cur, prev float64) *float64 {
				if dt <= 0 || cur < prev {
					return nil
				}
				r := (cur - prev) / dt
				return &r
			}
			e.PublishesPerS = rate(acked(s), acked(p))
			e.MessagesOutPerS = rate(s.get("push_edge_messages_out_total"), p.get("push_edge_messages_out_total"))
			e.ConnectsPerS = rate(s.with("push_edge_handshakes_total", `result="ok"`), p.with("push_edge_handshakes_total", `result="ok"`))
			e.MovesPerS = rate(s.get("push_edge_moved_total"), p.get("push_edge_moved_total"))
			e.TakenPerS = rate(s.get("push_edge_streams_taken_total"), p.get("push_edge_streams_taken_total"))
		}
		out.Totals.Connections += e.Connections
		out.Totals.Guests += e.Guests
		if e.Fenced {
			out.Totals.Fenced++
		}
		if e.PublishesPerS != nil {
			out.Totals.PublishesPerS += *e.PublishesPerS
		}
		if e.MovesPerS != nil {
			out.Totals.MovesPerS += *e.MovesPerS
		}
	}
	c.prev, c.last = next, out
	return out, nil
}

// acked is an edge's acknowledged publishes: delivered or stored.
func acked(s sample) float64 {
	return s.with("push_edge_publishes_total", `outcome="delivered"`) + s.with("push_edge_publishes_total", `outcome="stored"`)
}

func sortLeases(ls []leaseJSON) {
	slices.SortFunc(ls, func(a, b leaseJSON) int { return int(a.ID) - int(b.ID) })
}
