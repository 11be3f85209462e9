// Command pushbench runs the benchmark scenarios of bench/README.md and
// writes their figures to bench/results. `pushbench --help` lists them.
package main

import (
	"errors"
	"flag"
	"fmt"
	"os"
	"runtime/debug"
	"time"

	"github.com/pushcluster/push/bench/loadgen"
	"github.com/pushcluster/push/bench/report"
	"github.com/pushcluster/push/pkg/auth"
	"github.com/pushcluster/push/pkg/flagenv"
)

var scenarios = []struct {
	name, help string
	run        func(args []string) error
}{
	{"backpressure", "clients that never read, directly and through the router: bytes counted as delivered before the edge's 1008, bytes the router holds per client (kernel buffers included)", runBackpressure},
	{"batch", "one edge with N idle clients, publishes batched by the SDK: edge CPU (total, user) per unicast message, p99, user CPU per PublishMulti recipient, CPU profile", runBatch},
	{"baseline", "the edge against gorilla/websocket with a goroutine per connection (bench/baseline), same load: bytes per connection, fan-out CPU, p99 as ratios", runBaseline},
	{"compress", "permessage-deflate on one edge: wire bytes of a 1 KB JSON message with and without, idle bytes per connection that negotiated it, CPU per compressed broadcast delivery", runCompress},
	{"conns", "N idle connections through SO_REUSEPORT routers to edges over many processes: upgrades/s, bytes per connection (slopes), kernel memory, CPU at rest", runConns},
	{"edge", "one edge: bytes and fds per idle connection, CPU per upgrade, broadcast and unicast latency", runEdge},
	{"storm", "N clients of one edge reconnect at once after the edge restarts: time until all are back, failed handshakes, peak CPU", runStorm},
	{"unicast", "one edge with N idle clients: publish→receive latency percentiles at R msg/s to random users, delivered/sent", runUnicast},
	{"fanout", "one edge with N idle clients: Broadcast to all, time to the last delivery, deliveries/s, CPU per delivery", runFanout},
	{"migrate", "ring propagation delay to routers and edges, and time to move N users off a draining edge", runMigrate},
	{"peers", "the same load against the edge, Centrifugo (bin/centrifugo, scripts/centrifugo.sh) and the gorilla baseline: bytes per idle connection, CPU per upgrade, per unicast message and per broadcast delivery, p50/p99 at fixed rates, broadcast time, maximum sustained unicast rate; edge/Centrifugo ratios", runPeers},
	{"sweep", "edge and Centrifugo side by side as load grows: unicast rate sweep up to saturation, broadcast to growing audiences; CPU per message and latency against load", runSweep},
	{"netpoll", "fds per connection and OS threads under pinging clients: easygo netpoll vs the project's poller", runNetpoll},
	{"proxy", "router vs HAProxy in front of the same edges: bytes and fds per idle connection, CPU per upgrade and message, added latency", runProxy},
	{"resize", "the zero-loss resize test at bench scale: users moved vs predicted, lost, duplicated, migration time", runResize},
	{"tls", "TLS termination, router vs HAProxy in front of the same edge: bytes per idle TLS connection (Go heap and RSS), CPU per new connection and per message", runTLS},
	{"ring", "ring placement in-process, bounded vs haproxy: balance, users moved per change, lookup ns/op, build time", runRing},
}

func main() {
	if os.Getenv("GOGC") == "" {
		// The load generator and publishers allocate per message; fewer
		// collections keep their own pauses out of the latencies measured.
		debug.SetGCPercent(400)
	}
	if err := run(os.Args[1:]); err != nil {
		if errors.Is(err, flag.ErrHelp) {
			return
		}
		fmt.Fprintln(os.Stderr, "pushbench:", err)
		os.Exit(1)
	}
}

func usage() {
	fmt.Fprintln(os.Stderr, "usage: pushbench <scenario> [flags]\n\nscenarios:")
	for _, s := range scenarios {
		fmt.Fprintf(os.Stderr, "  %-8s %s\n", s.name, s.help)
	}
	fmt.Fprintln(os.Stderr, "\n'pushbench <scenario> --help' lists its flags; 'pushbench charts RESULT.json...' renders saved charts again.")
}

func run(args []string) error {
	if len(args) == 0 || args[0] == "-h" || args[0] == "--help" {
		usage()
		return flag.ErrHelp
	}
	switch args[0] {
	case "worker":
		return runWorker(args[1:])
	case "baseline-server":
		return runBaselineServer(args[1:])
	case "charts":
		// pushbench charts RESULT.json...: render the saved charts again.
		for _, p := range args[1:] {
			if err := report.Rerender(p); err != nil {
				return err
			}
		}
		return nil
	}
	for _, s := range scenarios {
		if s.name == args[0] {
			return s.run(args[1:])
		}
	}
	usage()
	return fmt.Errorf("unknown scenario %q", args[0])
}

// runWorker is the child process that holds clients (see loadgen.RunWorker).
func runWorker(args []string) error {
	fs := flag.NewFlagSet("worker", flag.ContinueOnError)
	target := fs.String("target", "", "host:port")
	path := fs.String("path", "/ws", "request path")
	prefix := fs.String("prefix", "u", "uid prefix")
	first := fs.Int("first", 0, "first uid index")
	sources := fs.String("sources", "", "source addresses, e.g. 127.0.0.2-127.0.0.40")
	ping := fs.Duration("ping-each", 0, "each client pings this often")
	split := fs.Duration("ping-split", 0, "send each ping frame in two segments this far apart")
	reconnect := fs.String("reconnect", "", "host:port a client closed with 4003 or 1001 reconnects to, resuming with last_seq")
	retry := fs.Duration("retry-jitter", 0, "with --reconnect: a client whose connection ends for any reason (EOF, reset, refused) reconnects after a random delay below this")
	deflate := fs.Bool("deflate", false, "offer permessage-deflate, as browsers do, and inflate compressed messages")
	pollEvery := fs.Duration("poll-every", 200*time.Microsecond, "client loops poll this often instead of sleeping in epoll_wait (0: sleep in epoll_wait)")
	centrifugo := fs.Bool("centrifugo", false, "speak to Centrifugo's uni_websocket instead: connect request with a connection JWT in the cf_connect query parameter (see centrifugo.go)")
	if _, err := flagenv.Parse(fs, "PUSHBENCH", args, nil); err != nil {
		return err
	}
	secret, err := auth.LoadSecret("")
	if err != nil {
		return err
	}
	src, err := loadgen.Sources(*sources)
	if err != nil {
		return err
	}
	now := time.Now()
	cfg := loadgen.Config{Target: *target, Path: *path, Sources: src, PingEach: *ping, PingSplit: *split, PollEvery: *pollEvery, Reconnect: *reconnect, RetryJitter: *retry, Deflate: *deflate,
		Token: func(uid string) string { t, _ := auth.Mint(secret, uid, 24*time.Hour, now); return t }}
	if *centrifugo {
		cfg.Path, cfg.Query = centrifugoPath, func(uid string) string { return centrifugoQuery(secret, uid, now) }
	}
	return loadgen.RunWorker(cfg, *prefix, *first, os.Stdin, os.Stdout)
}
