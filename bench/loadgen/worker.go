package loadgen

import (
	"bufio"
	"encoding/json"
	"fmt"
	"io"
	"os"
	"strconv"
	"strings"
	"time"
)

// Event is one line a worker prints on stdout.
type Event struct {
	Type     string `json:"type"` // progress, opened, report, error
	Open     int64  `json:"open"`
	Moved    int64  `json:"moved"`
	Failed   int64  `json:"failed"`
	Closed   int64  `json:"closed"`
	Received int64  `json:"received"`
	// Compressed counts the received messages that were compressed.
	Compressed int64              `json:"compressed,omitempty"`
	Err        string             `json:"err,omitempty"`
	Hist       *Hist              `json:"hist,omitempty"`
	Bcast      map[int64]*Arrival `json:"bcast,omitempty"`
}

// RunWorker serves a runner over stdin/stdout: "open K R" opens the next K
// clients at R per second, "report" prints and resets the stats, EOF closes
// everything. uids are prefix+index from first.
func RunWorker(cfg Config, prefix string, first int, in io.Reader, out io.Writer) error {
	pool, err := NewPool(cfg)
	if err != nil {
		return err
	}
	defer pool.Close()
	enc := json.NewEncoder(out)
	emit := func(typ string) {
		e := Event{Type: typ, Open: pool.Count(), Moved: pool.Moved.Load(), Failed: pool.Failed.Load(), Closed: pool.Closed.Load(), Received: pool.Received.Load()}
		if v, ok := pool.LastErr.Load().(string); ok {
			e.Err = v
		}
		enc.Encode(e)
	}
	next := first
	sc := bufio.NewScanner(in)
	for sc.Scan() {
		f := strings.Fields(sc.Text())
		if len(f) == 0 {
			continue
		}
		switch f[0] {
		case "open":
			if len(f) != 3 {
				return fmt.Errorf("worker: want 'open COUNT RATE', got %q", sc.Text())
			}
			k, _ := strconv.Atoi(f[1])
			rate, _ := strconv.Atoi(f[2])
			target := pool.Opened.Load() + pool.Failed.Load() + int64(k)
			start := time.Now()
			lastEmit := start
			for i := 0; i < k; i++ {
				if rate > 0 {
					if d := time.Until(start.Add(time.Duration(i) * time.Second / time.Duration(rate))); d > 0 {
						time.Sleep(d)
					}
				}
				pool.Open(UID(prefix, next), next)
				next++
				if time.Since(lastEmit) > 500*time.Millisecond {
					lastEmit = time.Now()
					emit("progress")
				}
			}
			deadline := time.Now().Add(60 * time.Second)
			for pool.Opened.Load()+pool.Failed.Load() < target && time.Now().Before(deadline) {
				time.Sleep(5 * time.Millisecond)
			}
			emit("opened")
		case "status":
			emit("status")
		case "report":
			h, b := pool.Stats.Take()
			e := Event{Type: "report", Open: pool.Count(), Failed: pool.Failed.Load(), Closed: pool.Closed.Load(),
				Received: pool.Received.Load(), Compressed: pool.Compressed.Load(), Hist: &h, Bcast: b}
			enc.Encode(e)
		default:
			fmt.Fprintf(os.Stderr, "worker: unknown command %q\n", f[0])
		}
	}
	return sc.Err()
}
