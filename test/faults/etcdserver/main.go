// Command etcdserver runs a single-member embedded etcd
// (go.etcd.io/etcd/server/v3/embed) as a process of its own, so that the
// fault suite (package faults) can SIGSTOP, SIGCONT and SIGKILL the ring
// store like any other member of the cluster. It is a test tool, not a way
// to run etcd in production.
//
//	etcdserver --data-dir DIR --client-url http://127.0.0.1:2379 --peer-url http://127.0.0.1:2380
//
// It prints "ready" on stdout once etcd serves, and stops on SIGTERM or
// SIGINT. etcd's own logs go to DIR/etcd.log.
package main

import (
	"flag"
	"fmt"
	"net/url"
	"os"
	"os/signal"
	"path/filepath"
	"strings"
	"syscall"
	"time"

	"go.etcd.io/etcd/server/v3/embed"
)

func main() {
	if err := run(os.Args[1:]); err != nil {
		fmt.Fprintln(os.Stderr, "etcdserver:", err)
		os.Exit(1)
	}
}

func parseURLs(flagName, s string) ([]url.URL, error) {
	var out []url.URL
	for _, p := range strings.Split(s, ",") {
		if p = strings.TrimSpace(p); p == "" {
			continue
		}
		u, err := url.Parse(p)
		if err != nil || u.Host == "" {
			return nil, fmt.Errorf("--%s %q: want http://host:port", flagName, p)
		}
		out = append(out, *u)
	}
	if len(out) == 0 {
		return nil, fmt.Errorf("--%s is required", flagName)
	}
	return out, nil
}

func run(args []string) error {
	fs := flag.NewFlagSet("etcdserver", flag.ContinueOnError)
	dir := fs.String("data-dir", "", "etcd data directory (created if missing); etcd.log is written here")
	clientURLs := fs.String("client-url", "http://127.0.0.1:2379", "comma-separated client URLs to listen on; the first is advertised")
	peerURL := fs.String("peer-url", "http://127.0.0.1:2380", "peer URL (listened on and advertised)")
	name := fs.String("name", "faults", "member name")
	logLevel := fs.String("log-level", "warn", "etcd log level: debug, info, warn, error")
	readyWait := fs.Duration("ready-timeout", 30*time.Second, "give up if etcd is not serving within this long")
	fs.Usage = func() {
		fmt.Fprintln(fs.Output(), "usage: etcdserver --data-dir DIR --client-url URL[,URL] --peer-url URL\n\nRuns a single-member embedded etcd in its own process (for the fault suite). Flags:")
		fs.PrintDefaults()
	}
	if err := fs.Parse(args); err != nil {
		if err == flag.ErrHelp {
			return nil
		}
		return err
	}
	if *dir == "" {
		return fmt.Errorf("--data-dir is required")
	}
	clients, err := parseURLs("client-url", *clientURLs)
	if err != nil {
		return err
	}
	peers, err := parseURLs("peer-url", *peerURL)
	if err != nil {
		return err
	}
	if err := os.MkdirAll(*dir, 0o700); err != nil {
		return err
	}
	cfg := embed.NewConfig()
	cfg.Name = *name
	cfg.Dir = *dir
	cfg.LogLevel = *logLevel
	cfg.LogOutputs = []string{filepath.Join(*dir, "etcd.log")}
	cfg.ListenClientUrls, cfg.AdvertiseClientUrls = clients, clients[:1]
	cfg.ListenPeerUrls, cfg.AdvertisePeerUrls = peers[:1], peers[:1]
	cfg.InitialCluster = fmt.Sprintf("%s=%s", cfg.Name, peers[0].String())
	e, err := embed.StartEtcd(cfg)
	if err != nil {
		return fmt.Errorf("start etcd: %w", err)
	}
	defer e.Close()
	select {
	case <-e.Server.ReadyNotify():
	case <-time.After(*readyWait):
		return fmt.Errorf("etcd not ready within %v", *readyWait)
	}
	fmt.Println("ready")

	sig := make(chan os.Signal, 1)
	signal.Notify(sig, syscall.SIGTERM, syscall.SIGINT)
	select {
	case <-sig:
	case err := <-e.Err():
		return fmt.Errorf("etcd: %w", err)
	}
	return nil
}
