package loadgen

import (
	"bytes"
	"math"
	"sort"
	"strconv"
	"sync"
)

// Stats collects what clients received. Messages carry {"t":<send unix ns>}
// in their data, broadcasts also {"b":<id>}.
type Stats struct {
	mu    sync.Mutex
	hist  Hist
	bcast map[int64]*Arrival
}

// Arrival is how many clients got a broadcast and when the last one did.
type Arrival struct {
	Count int64 `json:"count"`
	Sent  int64 `json:"sent"`
	Last  int64 `json:"last"`
}

// NewStats returns empty stats.
func NewStats() *Stats { return &Stats{hist: NewHist(), bcast: map[int64]*Arrival{}} }

func field(p []byte, name string) (int64, bool) {
	i := bytes.Index(p, []byte(`"`+name+`":`))
	if i < 0 {
		return 0, false
	}
	j := i + len(name) + 3
	k := j
	for k < len(p) && p[k] >= '0' && p[k] <= '9' {
		k++
	}
	v, err := strconv.ParseInt(string(p[j:k]), 10, 64)
	return v, err == nil
}

func (s *Stats) record(p []byte, now int64) {
	t, ok := field(p, "t")
	if !ok {
		return
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	if b, ok := field(p, "b"); ok {
		a := s.bcast[b]
		if a == nil {
			a = &Arrival{Sent: t}
			s.bcast[b] = a
		}
		a.Count++
		if now > a.Last {
			a.Last = now
		}
		return
	}
	s.hist.Add(now - t)
}

// Take returns and resets the collected stats.
func (s *Stats) Take() (Hist, map[int64]*Arrival) {
	s.mu.Lock()
	defer s.mu.Unlock()
	h, b := s.hist, s.bcast
	s.hist, s.bcast = NewHist(), map[int64]*Arrival{}
	return h, b
}

// Hist is a log-linear latency histogram in nanoseconds: exact to 1 µs
// below 1 ms, then 1% relative precision; mergeable across processes.
type Hist struct {
	Counts map[int]int64 `json:"counts"`
	N      int64         `json:"n"`
	Max    int64         `json:"max"`
}

// NewHist returns an empty histogram.
func NewHist() Hist { return Hist{Counts: map[int]int64{}} }

func bucket(ns int64) int {
	us := ns / 1000
	if us < 1000 {
		if us < 0 {
			us = 0
		}
		return int(us)
	}
	return 1000 + int(math.Log(float64(us)/1000)/math.Log(1.01))
}

func bucketValue(b int) int64 {
	if b < 1000 {
		return int64(b) * 1000
	}
	return int64(1000*math.Pow(1.01, float64(b-1000))) * 1000
}

// Add records one latency.
func (h *Hist) Add(ns int64) {
	h.Counts[bucket(ns)]++
	h.N++
	if ns > h.Max {
		h.Max = ns
	}
}

// Merge adds o into h.
func (h *Hist) Merge(o Hist) {
	for b, n := range o.Counts {
		h.Counts[b] += n
	}
	h.N += o.N
	if o.Max > h.Max {
		h.Max = o.Max
	}
}

// Quantile returns the latency at q (0..1) in nanoseconds.
func (h *Hist) Quantile(q float64) int64 {
	if h.N == 0 {
		return 0
	}
	keys := make([]int, 0, len(h.Counts))
	for b := range h.Counts {
		keys = append(keys, b)
	}
	sort.Ints(keys)
	want := int64(math.Ceil(q * float64(h.N)))
	var seen int64
	for _, b := range keys {
		seen += h.Counts[b]
		if seen >= want {
			v := bucketValue(b)
			if v > h.Max {
				v = h.Max
			}
			return v
		}
	}
	return h.Max
}

// CDF returns (latency ms, fraction of messages at or below it), one point
// per non-empty bucket, for plotting.
func (h *Hist) CDF() [][2]float64 {
	keys := make([]int, 0, len(h.Counts))
	for b := range h.Counts {
		keys = append(keys, b)
	}
	sort.Ints(keys)
	out := make([][2]float64, 0, len(keys))
	var seen int64
	for _, b := range keys {
		seen += h.Counts[b]
		v := min(bucketValue(b), h.Max)
		out = append(out, [2]float64{float64(v) / 1e6, float64(seen) / float64(max(h.N, 1))})
	}
	return out
}
