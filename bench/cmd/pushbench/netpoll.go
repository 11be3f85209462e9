package main

import (
	"flag"
	"fmt"
	"os"
	"time"

	"github.com/pushcluster/push/bench/report"
	"github.com/pushcluster/push/bench/sample"
	"github.com/pushcluster/push/pkg/flagenv"
)

// runNetpoll measures what docs/decisions.md quotes: descriptors per
// connection and OS threads of a server holding N clients that each ping
// every few seconds, for the edge (own epoll poller on the socket's own
// descriptor) and for easygo/netpoll in its documented pattern.
func runNetpoll(args []string) error {
	fs := flag.NewFlagSet("pushbench netpoll", flag.ContinueOnError)
	edgeBin := fs.String("edge-bin", "bin/edge", "edge binary")
	easyBin := fs.String("easygo-bin", "bin/easygo-ws", "easygo comparison server binary")
	n := fs.Int("n", 19000, "pinging clients")
	workers := fs.Int("workers", 2, "load-generator processes")
	rate := fs.Int("rate", 4000, "upgrades per second while ramping")
	ping := fs.Duration("ping-each", 5*time.Second, "each client pings this often")
	split := fs.Duration("ping-split", 20*time.Millisecond, "each ping frame arrives in two segments this far apart (0: one segment)")
	hold := fs.Duration("hold", 20*time.Second, "how long to hold the pinging clients while sampling")
	sources := fs.String("sources", "127.0.0.2-127.0.0.41", "client source addresses")
	out := fs.String("out", "bench/results", "results directory")
	flagenv.SetUsage(fs, "PUSHBENCH", "pushbench netpoll [flags]", "Holds N pinging clients on the edge and on an easygo/netpoll server in turn and samples descriptors and OS threads.")
	if _, err := flagenv.Parse(fs, "PUSHBENCH", args, nil); err != nil {
		return err
	}
	os.Setenv("PUSH_JWT_SECRET", newSecret())
	r := report.New("netpoll", map[string]any{"n": *n, "ping_each": ping.String(), "ping_split": split.String(), "hold": hold.String()})
	type server struct {
		name, bin, ws, admin string
		args                 []string
	}
	for _, s := range []server{
		{"edge", *edgeBin, "127.0.0.1:18080", "127.0.0.1:19100",
			[]string{"--listen", "127.0.0.1:18080", "--grpc", "127.0.0.1:19090", "--admin", "127.0.0.1:19100", "--max-conns", "200000", "--log-level", "warn", "--drain-period", "1s"}},
		{"easygo", *easyBin, "127.0.0.1:18081", "127.0.0.1:19101",
			[]string{"--listen", "127.0.0.1:18081", "--admin", "127.0.0.1:19101"}},
	} {
		d, err := startDaemon(s.name, s.bin, s.args, nil, s.admin)
		if err != nil {
			return err
		}
		base, _ := sample.Read(d.pid(), "", "")
		var wk []*worker
		for i := 0; i < *workers; i++ {
			w, err := startWorker([]string{"--target", s.ws, "--prefix", "p", "--first", fmt.Sprint(i * (*n / *workers)),
				"--sources", *sources, "--ping-each", ping.String(), "--ping-split", split.String()})
			if err != nil {
				d.stop()
				return err
			}
			wk = append(wk, w)
		}
		opened, failed, lastErr, err := openAll(wk, *n, *rate)
		progress("%s: opened %d, failed %d %s", s.name, opened, failed, lastErr)
		var peak sample.Proc
		if err == nil {
			end := time.Now().Add(*hold)
			for time.Now().Before(end) {
				time.Sleep(time.Second)
				p, _ := sample.Read(d.pid(), "", "")
				if p.Threads > peak.Threads {
					peak.Threads = p.Threads
				}
				if p.FDs > peak.FDs {
					peak.FDs = p.FDs
				}
			}
		}
		for _, w := range wk {
			w.stop()
		}
		d.stop()
		if err != nil {
			return err
		}
		per := float64(peak.FDs-base.FDs) / float64(max(opened, 1))
		r.Add(s.name+": descriptors per connection", per, "fd", "", 0, fmt.Sprintf("%d open at peak for %d clients", peak.FDs, opened))
		r.Add(s.name+": OS threads (peak)", float64(peak.Threads), "", "", 0, fmt.Sprintf("%d clients failed to connect", failed))
	}
	r.Print(os.Stdout)
	path, err := r.Save(*out)
	if err == nil {
		progress("results in %s", path)
	}
	return err
}
