package pushctl

import (
	"bufio"
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"slices"
	"strconv"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/pushcluster/push/pkg/flagenv"
	"github.com/pushcluster/push/pkg/owner"
	"github.com/pushcluster/push/pkg/ring"
	"github.com/pushcluster/push/pkg/store"
)

// ringSubcommands are the ring commands. lookup, show and simulate only
// read; init, add, drain, weight and remove change the document with the
// store's compare-and-swap (see editRing).
var ringSubcommands = []struct{ name, args, help string }{
	{"lookup", "[--ring URL] [uid...]", "print each user's owner (uid<TAB>member id); reads uids from stdin when none are given"},
	{"show", "[--ring URL] [--live-timeout 1s] [--metrics ID=URL,...]", "print the document and each member's share of the key space, lease, liveness (gRPC health) and connected users (reported with its lease, or its /metrics; a member named in --metrics but removed from the ring is shown as removed)"},
	{"simulate", "[--ring URL] --add SPEC | --remove ID | --weight ID=W | --drain ID [--keys N]", "print how many users a change would move (nothing is written)"},
	{"init", "[--ring URL] [--algorithm bounded|haproxy] --id ID --name N --ws HOST:PORT --grpc HOST:PORT [--weight W]", "create the first document (version 1) with its first member; refused when one exists"},
	{"add", "[--ring URL] [--force] [--probe-timeout 2s] --id ID --name N --ws HOST:PORT --grpc HOST:PORT [--weight W] [--keys N]", "add an active member; refused (exit 2) unless its edge answers the gRPC health check, or --force"},
	{"drain", "[--ring URL] [--keys N] ID", "set a member draining: it owns nobody and its users move to the others"},
	{"weight", "[--ring URL] [--keys N] ID W", "set a member's weight (1..256)"},
	{"remove", "[--ring URL] [--keys N] (--metrics URL | --force) ID", "remove a draining member once its edge holds no users (checked on its admin /metrics, or skipped with --force)"},
}

// ring dispatches "pushctl ring <subcommand>".
func (a *App) ring(args []string) error {
	if len(args) == 0 {
		a.ringUsage(a.Stderr)
		return usageError{errors.New("name a subcommand: " + ringNames())}
	}
	switch args[0] {
	case "-h", "--help", "help":
		a.ringUsage(a.Stdout)
		return flag.ErrHelp
	case "lookup":
		return a.ringLookup(args[1:])
	case "show":
		return a.ringShow(args[1:])
	case "simulate":
		return a.ringSimulate(args[1:])
	case "init":
		return a.ringInit(args[1:])
	case "add":
		return a.ringAdd(args[1:])
	case "drain":
		return a.ringDrain(args[1:])
	case "weight":
		return a.ringWeight(args[1:])
	case "remove":
		return a.ringRemove(args[1:])
	}
	return usageError{fmt.Errorf("unknown subcommand %q: want %s", args[0], ringNames())}
}

// ringNames lists the subcommands: "lookup, show, … or remove".
func ringNames() string {
	var names []string
	for _, s := range ringSubcommands {
		names = append(names, s.name)
	}
	return strings.Join(names[:len(names)-1], ", ") + " or " + names[len(names)-1]
}

func (a *App) ringUsage(w io.Writer) {
	fmt.Fprintln(w, "usage: pushctl ring <subcommand> [flags]\n\nsubcommands:")
	for _, s := range ringSubcommands {
		fmt.Fprintf(w, "  %-9s %s\n            %s\n", s.name, s.args, s.help)
	}
	fmt.Fprintln(w, "\n--ring names the store (file:./ring.json, or a path); default $PUSH_RING.")
	fmt.Fprintln(w, "Changes are a compare-and-swap on the version read: when another change got in first,")
	fmt.Fprintln(w, "nothing is written and pushctl exits 3 (version conflict); re-run the command.")
	fmt.Fprintln(w, "Exit codes: 0 ok, 1 failed, 2 bad arguments or refused, 3 version conflict.")
}

// ringFlags builds a ring subcommand's flag set with the store flags.
func (a *App) ringFlags(name, usage, description string) (*flag.FlagSet, *string, *time.Duration) {
	fs := flag.NewFlagSet("pushctl ring "+name, flag.ContinueOnError)
	fs.SetOutput(a.Stderr)
	url := fs.String("ring", "", "ring store URL: file:./ring.json, file:/abs/ring.json or a bare path")
	timeout := fs.Duration("timeout", 5*time.Second, "deadline for reading and writing the store")
	a.etcd.RegisterFlags(fs)
	a.creds.RegisterFlags(fs) // for the edges' health (ring show, ring add)
	flagenv.SetUsage(fs, "PUSH", "pushctl ring "+name+" "+usage, description)
	return fs, url, timeout
}

// loadRing reads the document from the store url names and builds its
// ring. A bad URL is a usage error; a store without a (valid) document is
// a failure.
func (a *App) loadRing(url string, timeout time.Duration) (*ring.Ring, error) {
	st, err := a.openStore(url)
	if err != nil {
		return nil, err
	}
	defer st.Close()
	ctx, cancel := context.WithTimeout(context.Background(), timeout)
	defer cancel()
	d, err := st.Load(ctx)
	if errors.Is(err, store.ErrNotFound) {
		return nil, fmt.Errorf("no ring document in %s", url)
	}
	if err != nil {
		return nil, unreachable(url, timeout, err)
	}
	r, err := ring.New(d)
	if err != nil {
		return nil, fmt.Errorf("%s: %w", url, err)
	}
	return r, nil
}

// unreachable words a store read that timed out: the store did not
// answer (an etcd that is down or cut off), which the store's own error
// ("context deadline exceeded") does not say.
func unreachable(url string, timeout time.Duration, err error) error {
	if errors.Is(err, context.DeadlineExceeded) {
		return fmt.Errorf("the ring store %s did not answer within %v (is it running and reachable?): %w", url, timeout, err)
	}
	return err
}

// readLeases reads the members' leases from the store (nil, nil for a
// store that keeps none).
func (a *App) readLeases(url string, timeout time.Duration) (map[uint32]owner.Live, error) {
	st, err := a.openStore(url)
	if err != nil {
		return nil, err
	}
	defer st.Close()
	ls, ok := st.(store.Leaser)
	if !ok {
		return nil, nil
	}
	ctx, cancel := context.WithTimeout(context.Background(), timeout)
	defer cancel()
	return ls.ReadLive(ctx)
}

func (a *App) stdin() io.Reader {
	if a.Stdin == nil {
		return os.Stdin
	}
	return a.Stdin
}

func (a *App) ringLookup(args []string) error {
	fs, url, timeout := a.ringFlags("lookup", "[uid...]",
		"Prints uid<TAB>member id for each user, the owner the ring names (draining members own nobody; health is not considered). "+
			"With no uids on the command line, reads one per line from stdin. Keys are hashed as given.")
	uids, err := a.parse(fs, args)
	if err != nil {
		return err
	}
	r, err := a.loadRing(*url, *timeout)
	if err != nil {
		return err
	}
	out := bufio.NewWriter(a.Stdout)
	defer out.Flush()
	line := func(uid string) {
		out.WriteString(uid)
		out.WriteByte('\t')
		out.WriteString(strconv.FormatUint(uint64(r.LookupString(uid)), 10))
		out.WriteByte('\n')
	}
	if len(uids) > 0 {
		for _, uid := range uids {
			line(uid)
		}
		return nil
	}
	sc := bufio.NewScanner(a.stdin())
	for sc.Scan() {
		if uid := strings.TrimSpace(sc.Text()); uid != "" {
			line(uid)
		}
	}
	if err := sc.Err(); err != nil {
		return fmt.Errorf("read stdin: %w", err)
	}
	return nil
}

func (a *App) ringShow(args []string) error {
	fs, url, timeout := a.ringFlags("show", "[--live-timeout 1s] [--metrics ID=URL,...]",
		"Prints the ring document and, per member, its share of the key space and two probes. "+
			"LIVE asks the member's gRPC health service (at its grpc address, within --live-timeout): yes (SERVING), "+
			"no (answers, but not SERVING: stopping or without the health service) or unreachable; - when --live-timeout is 0. "+
			"LEASE is what the store's lease says, the liveness every router, edge and SDK uses for ownership: active, draining, "+
			"or none (not live: it owns nobody; its users are served by the next live members). "+
			"USERS is the connection count the edge reports with its lease (renewed every third of its TTL), or, for the members "+
			"named in --metrics, the push_edge_connections gauge of the edge's admin /metrics; - when neither is known, ? when the read "+
			"failed (the reason goes to stderr).")
	liveTimeout := fs.Duration("live-timeout", time.Second, "deadline of each member's gRPC health check (0: skip the checks)")
	metrics := metricsFlag{}
	fs.Var(metrics, "metrics", "read USERS from these edges' admin /metrics: ID=URL[,ID=URL...], repeatable; e.g. 1=http://10.0.0.1:9100/metrics")
	rest, err := a.parseLocal(fs, args, "metrics")
	if err != nil {
		return err
	}
	if len(rest) > 0 {
		return usageError{fmt.Errorf("unexpected arguments %q", rest)}
	}
	if *liveTimeout < 0 {
		return usageError{fmt.Errorf("--live-timeout %v must not be negative", *liveTimeout)}
	}
	r, err := a.loadRing(*url, *timeout)
	if err != nil {
		return err
	}
	d := r.Document()
	// A member named in --metrics but no longer in the ring (a list kept
	// in a script across a removal) gets a row of its own: "removed", and
	// what its edge says, or unreachable once it has stopped.
	var removed []uint32
	for id := range metrics {
		if _, ok := r.Member(id); !ok {
			removed = append(removed, id)
		}
	}
	slices.Sort(removed)
	active := 0
	for _, m := range d.Members {
		if m.Active() {
			active++
		}
	}
	leases, leaseErr := a.readLeases(*url, *timeout)
	if leaseErr != nil {
		fmt.Fprintf(a.Stderr, "pushctl ring show: leases: %v\n", leaseErr)
	}
	probes := a.probe(d.Members, *liveTimeout, metrics, *timeout)
	fmt.Fprintf(a.Stdout, "version    %d\nalgorithm  %s\nparams     %s\nmembers    %d (%d active, %d draining)\n\n",
		d.Version, d.Algorithm, params(d), len(d.Members), active, len(d.Members)-active)
	shares := r.Shares()
	rows := []string{"ID\tNAME\tSTATE\tWEIGHT\tWS\tGRPC\tSHARE\tLEASE\tLIVE\tUSERS"}
	for i, m := range d.Members {
		lease, users := "-", probes[i].users
		switch {
		case leaseErr != nil:
			lease = "?"
		case leases != nil:
			lease = "none"
			if l, ok := leases[m.ID]; ok {
				lease = string(l.State)
				if _, viaMetrics := metrics[m.ID]; !viaMetrics {
					users = strconv.FormatInt(l.Users, 10)
				}
			}
		}
		rows = append(rows, fmt.Sprintf("%d\t%s\t%s\t%d\t%s\t%s\t%s\t%s\t%s\t%s", m.ID, m.Name, m.State, m.Weight, m.WS, m.GRPC,
			percent(shares[m.ID]), lease, probes[i].live, users))
	}
	for _, id := range removed {
		lease := "-"
		if l, ok := leases[id]; ok {
			lease = string(l.State)
		} else if leases != nil {
			lease = "none"
		}
		ctx, cancel := context.WithTimeout(context.Background(), *timeout)
		n, err := edgeConnections(ctx, metrics[id])
		cancel()
		users := "unreachable"
		if err == nil {
			users = strconv.FormatInt(n, 10)
		}
		rows = append(rows, fmt.Sprintf("%d\t-\tremoved\t-\t-\t-\t-\t%s\t-\t%s", id, lease, users))
	}
	return writeTable(a.Stdout, rows)
}

// writeTable prints tab-separated rows as aligned columns, without the
// padding an empty last column would leave at line ends.
func writeTable(w io.Writer, rows []string) error {
	var b strings.Builder
	tw := tabwriter.NewWriter(&b, 0, 0, 2, ' ', 0)
	for _, r := range rows {
		fmt.Fprintln(tw, r)
	}
	tw.Flush()
	for line := range strings.Lines(b.String()) {
		if _, err := fmt.Fprintln(w, strings.TrimRight(line, " \n")); err != nil {
			return err
		}
	}
	return nil
}

// params formats the effective parameters of d (filled in by ring.New).
func params(d *ring.Document) string {
	p := d.Params
	if d.Algorithm == ring.AlgorithmHAProxy {
		avalanche := p.Avalanche != nil && *p.Avalanche
		return fmt.Sprintf("hash=%s avalanche=%t", p.Hash, avalanche)
	}
	return fmt.Sprintf("partitions=%d replication=%d load=%s", p.Partitions, p.Replication, strconv.FormatFloat(p.Load, 'g', -1, 64))
}

func percent(f float64) string { return fmt.Sprintf("%.2f%%", 100*f) }

// changeFlag is a repeatable flag that appends to a shared change list.
type changeFlag struct {
	name    string
	changes *[]Change
	parse   func(string) (Change, error)
}

func (f changeFlag) String() string { return "" }

func (f changeFlag) Set(v string) error {
	c, err := f.parse(v)
	if err != nil {
		return err
	}
	c.Op = f.name
	*f.changes = append(*f.changes, c)
	return nil
}

func parseID(s string) (uint32, error) {
	id, err := strconv.ParseUint(s, 10, 32)
	if err != nil || id == 0 || id > ring.MaxID {
		return 0, fmt.Errorf("member id %q: want 1..%d", s, ring.MaxID)
	}
	return uint32(id), nil
}

// parseAdd reads "id=5,name=e5,ws=host:port,grpc=host:port[,weight=2][,state=draining]".
func parseAdd(spec string) (Change, error) {
	m := ring.Member{Weight: 1, State: ring.StateActive}
	seen := make(map[string]bool)
	for _, kv := range strings.Split(spec, ",") {
		k, v, ok := strings.Cut(kv, "=")
		if !ok || v == "" {
			return Change{}, fmt.Errorf("%q is not key=value (keys: id, name, ws, grpc, weight, state)", kv)
		}
		if seen[k] {
			return Change{}, fmt.Errorf("%s given twice", k)
		}
		seen[k] = true
		switch k {
		case "id":
			id, err := parseID(v)
			if err != nil {
				return Change{}, err
			}
			m.ID = id
		case "name":
			m.Name = v
		case "ws":
			m.WS = v
		case "grpc":
			m.GRPC = v
		case "weight":
			w, err := strconv.Atoi(v)
			if err != nil {
				return Change{}, fmt.Errorf("weight %q is not a number", v)
			}
			m.Weight = w
		case "state":
			m.State = ring.State(v)
		default:
			return Change{}, fmt.Errorf("unknown key %q (keys: id, name, ws, grpc, weight, state)", k)
		}
	}
	for _, k := range []string{"id", "name", "ws", "grpc"} {
		if !seen[k] {
			return Change{}, fmt.Errorf("%s is required (id=5,name=e5,ws=host:port,grpc=host:port[,weight=W])", k)
		}
	}
	return Change{Member: &m}, nil
}

func (a *App) ringSimulate(args []string) error {
	fs, url, timeout := a.ringFlags("simulate", "--add SPEC | --remove ID | --weight ID=W | --drain ID [--keys N]",
		"Applies the changes (repeatable, in order) to the stored document in memory, nothing is written, and prints "+
			"the fraction of users that would change owner, counted over --keys user ids uid-0, uid-1, …, "+
			"the ideal fraction (the least any placement with these weights must move), and each member's share before and after.")
	var changes []Change
	fs.Var(changeFlag{"add", &changes, parseAdd}, "add", "add a member: id=5,name=e5,ws=host:port,grpc=host:port[,weight=W][,state=draining]")
	fs.Var(changeFlag{"remove", &changes, func(s string) (Change, error) {
		id, err := parseID(s)
		return Change{ID: id}, err
	}}, "remove", "remove the member with this id")
	fs.Var(changeFlag{"drain", &changes, func(s string) (Change, error) {
		id, err := parseID(s)
		return Change{ID: id}, err
	}}, "drain", "set the member with this id draining")
	fs.Var(changeFlag{"weight", &changes, func(s string) (Change, error) {
		ids, ws, ok := strings.Cut(s, "=")
		if !ok {
			return Change{}, fmt.Errorf("%q: want ID=WEIGHT", s)
		}
		id, err := parseID(ids)
		if err != nil {
			return Change{}, err
		}
		w, err := strconv.Atoi(ws)
		if err != nil {
			return Change{}, fmt.Errorf("weight %q is not a number", ws)
		}
		return Change{ID: id, Weight: w}, nil
	}}, "weight", "set the weight of the member with this id: ID=W")
	keys := fs.Int("keys", DefaultSimulateKeys, "how many user ids (uid-0 … uid-N-1) to count moves over")
	rest, err := a.parse(fs, args)
	if err != nil {
		return err
	}
	if len(rest) > 0 {
		return usageError{fmt.Errorf("unexpected arguments %q", rest)}
	}
	if len(changes) == 0 {
		return usageError{errors.New("name a change: --add, --remove, --weight or --drain")}
	}
	if *keys < 1 {
		return usageError{fmt.Errorf("--keys %d must be at least 1", *keys)}
	}
	before, err := a.loadRing(*url, *timeout)
	if err != nil {
		return err
	}
	sim, err := Simulate(before.Document(), changes, *keys)
	if err != nil {
		return usageError{err}
	}
	return sim.Print(a.Stdout)
}
