// Command pushfault runs the fault suite (package test/faults) against real
// edge, router, pushctl and etcd processes on loopback and prints one table
// row per scenario. Run `pushfault --help` for its flags.
package main

import (
	"context"
	"flag"
	"fmt"
	"os"
	"os/exec"
	"os/signal"
	"strings"
	"syscall"
	"time"

	"github.com/pushcluster/push/test/faults"
)

func main() { os.Exit(run()) }

func run() int {
	def := faults.FullParams()
	fs := flag.NewFlagSet("pushfault", flag.ContinueOnError)
	scenario := fs.String("scenario", "all", "all, or comma-separated scenarios: a (both stores), a-file, a-etcd, b, c, d, e, f, g, h, i")
	short := fs.Bool("short", false, "the go test sizes (200 users, 300 msg/s, 10 s) unless overridden")
	users := fs.Int("users", 0, fmt.Sprintf("WebSocket clients, one per user (default %d)", def.Users))
	rate := fs.Float64("rate", 0, fmt.Sprintf("publishes per second, two publishers together (default %.0f)", def.Rate))
	duration := fs.Duration("duration", 0, fmt.Sprintf("publishing time per scenario, at least (default %v)", def.Duration))
	lease := fs.Duration("lease-ttl", 0, fmt.Sprintf("edges' --lease-ttl (default %v)", def.LeaseTTL))
	restart := fs.Duration("restart", 0, fmt.Sprintf("scenario c: the killed edge restarts after this long (default %v)", def.Restart))
	bin := fs.String("bin", "", "directory with prebuilt edge, router, pushctl (and etcdserver; missing ones are built); default: build all into the work dir")
	work := fs.String("workdir", "", "where scenario directories and logs go (default: a temporary directory, removed at the end unless --keep or a row fails)")
	keep := fs.Bool("keep", false, "keep the work directory with every process log")
	out := fs.String("out", "", "write <date>-faults.json and .md into this directory (e.g. bench/results)")
	latency := fs.Bool("latency", true, "fail a row whose publish p99 to healthy users is above 50 ms")
	fs.Usage = func() {
		fmt.Fprintf(fs.Output(), `usage: pushfault [flags]

Runs fault scenarios against a real cluster of processes built from this
repository (edges, routers, pushctl, an etcd process) on loopback, with
1,000 WebSocket users and two publishers by default, and prints per
scenario: acknowledged publishes, lost, duplicated, out of order, gap
notices, moves (close 4003), publish latency and failures during the
fault, with PASS/FAIL against the targets.

Scenarios: %s

Flags:
`, describe())
		fs.PrintDefaults()
	}
	for _, a := range os.Args[1:] {
		if a == "-h" || a == "-help" || a == "--help" || a == "--h" {
			fs.SetOutput(os.Stdout) // asked for: the usage is the answer
		}
	}
	if err := fs.Parse(os.Args[1:]); err != nil {
		if err == flag.ErrHelp {
			return 0
		}
		return 2
	}
	p := def
	if *short {
		p = faults.ShortParams()
	}
	if *users > 0 {
		p.Users = *users
	}
	if *rate > 0 {
		p.Rate = *rate
	}
	if *duration > 0 {
		p.Duration = *duration
	}
	if *lease > 0 {
		p.LeaseTTL = *lease
	}
	if *restart > 0 {
		p.Restart = *restart
	}
	scs, err := faults.Select(*scenario)
	if err != nil {
		fmt.Fprintln(os.Stderr, "pushfault:", err)
		return 2
	}
	logf := func(format string, args ...any) {
		fmt.Fprintf(os.Stderr, "%s "+format+"\n", append([]any{time.Now().Format("15:04:05.000")}, args...)...)
	}

	dir := *work
	if dir == "" {
		if dir, err = os.MkdirTemp("", "pushfault-"); err != nil {
			fmt.Fprintln(os.Stderr, "pushfault:", err)
			return 1
		}
	} else if err := os.MkdirAll(dir, 0o755); err != nil {
		fmt.Fprintln(os.Stderr, "pushfault:", err)
		return 1
	}
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Minute)
	var bins faults.Bins
	if *bin != "" {
		bins, err = faults.UseBins(ctx, *bin)
	} else {
		logf("building edge, router, pushctl and etcdserver")
		bins, err = faults.Build(ctx, dir)
	}
	cancel()
	if err != nil {
		fmt.Fprintln(os.Stderr, "pushfault:", err)
		if *work == "" {
			os.RemoveAll(dir)
		}
		return 1
	}

	// Ctrl-C or SIGTERM: kill every process, remove the namespace, exit.
	sig := make(chan os.Signal, 1)
	signal.Notify(sig, os.Interrupt, syscall.SIGTERM)
	go func() {
		s := <-sig
		logf("%v: stopping every process of the running scenario", s)
		faults.CloseAll()
		os.Exit(130)
	}()

	rows := faults.RunAll(scs, bins, p, dir, logf)
	fmt.Println()
	faults.WriteTable(os.Stdout, rows, *latency)
	failed := false
	for i := range rows {
		if rows[i].Verdict(*latency) == "FAIL" {
			failed = true
		}
	}
	if *out != "" {
		meta := []string{"Command: `pushfault " + strings.Join(os.Args[1:], " ") + "`"}
		if tree := gitTree(); tree != "" {
			meta = append(meta, "Tree: "+tree)
		}
		js, md, err := faults.WriteResults(*out, rows, p, *latency, meta)
		if err != nil {
			fmt.Fprintln(os.Stderr, "pushfault:", err)
			return 1
		}
		fmt.Printf("\nresults: %s %s\n", js, md)
	}
	if *keep || failed {
		fmt.Printf("logs: %s\n", dir)
	} else if *work == "" {
		os.RemoveAll(dir)
	}
	if failed {
		return 1
	}
	return 0
}

// gitTree names the commit the binaries were presumably built from
// (best effort: empty outside a git work tree).
func gitTree() string {
	out, err := exec.Command("git", "log", "-1", "--format=%h %s").Output()
	if err != nil {
		return ""
	}
	s := strings.TrimSpace(string(out))
	if st, err := exec.Command("git", "status", "--porcelain", "--untracked-files=no").Output(); err == nil && len(st) > 0 {
		s += " (with uncommitted changes)"
	}
	return s
}

func describe() string {
	s := ""
	for _, sc := range faults.Scenarios() {
		s += fmt.Sprintf("\n  %-7s %-4s  %s", sc.Name, sc.Store, sc.Desc)
	}
	return s
}
