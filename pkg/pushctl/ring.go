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
	{"show", "[--ring URL] [--live-timeout 1s] [--metrics ID=URL,...]", "print the document and each member's share of the key space, lease, liveness (gRPC health) and connected users (reported with its lease, or its /metrics)"},
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
		return nil, err
	}
	r, err := ring.New(d)
	if err != nil {
		return nil, fmt.Errorf("%s: %w", url, err)
	}
	return r, nil
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
	for id := range metrics {
		if _, ok := r.Member(id); !ok {
			return usageError{fmt.Errorf("--metrics %d: no member with id %d in ring version %d", id, id, d.Version)}
		}
	}
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

// ringChange is one --add, --remove, --weight or --drain, applied in
// command-line order.
type ringChange struct {
	flag   string
	id     uint32
	weight int
	add    ring.Member
}

// changeFlag is a repeatable flag that appends to a shared change list.
type changeFlag struct {
	name    string
	changes *[]ringChange
	parse   func(string) (ringChange, error)
}

func (f changeFlag) String() string { return "" }

func (f changeFlag) Set(v string) error {
	c, err := f.parse(v)
	if err != nil {
		return err
	}
	c.flag = f.name
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
func parseAdd(spec string) (ringChange, error) {
	m := ring.Member{Weight: 1, State: ring.StateActive}
	seen := make(map[string]bool)
	for _, kv := range strings.Split(spec, ",") {
		k, v, ok := strings.Cut(kv, "=")
		if !ok || v == "" {
			return ringChange{}, fmt.Errorf("%q is not key=value (keys: id, name, ws, grpc, weight, state)", kv)
		}
		if seen[k] {
			return ringChange{}, fmt.Errorf("%s given twice", k)
		}
		seen[k] = true
		switch k {
		case "id":
			id, err := parseID(v)
			if err != nil {
				return ringChange{}, err
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
				return ringChange{}, fmt.Errorf("weight %q is not a number", v)
			}
			m.Weight = w
		case "state":
			m.State = ring.State(v)
		default:
			return ringChange{}, fmt.Errorf("unknown key %q (keys: id, name, ws, grpc, weight, state)", k)
		}
	}
	for _, k := range []string{"id", "name", "ws", "grpc"} {
		if !seen[k] {
			return ringChange{}, fmt.Errorf("%s is required (id=5,name=e5,ws=host:port,grpc=host:port[,weight=W])", k)
		}
	}
	return ringChange{add: m}, nil
}

func (a *App) ringSimulate(args []string) error {
	fs, url, timeout := a.ringFlags("simulate", "--add SPEC | --remove ID | --weight ID=W | --drain ID [--keys N]",
		"Applies the changes (repeatable, in order) to the stored document in memory, nothing is written, and prints "+
			"the fraction of users that would change owner, counted over --keys user ids uid-0, uid-1, …, "+
			"the ideal fraction (the least any placement with these weights must move), and each member's share before and after.")
	var changes []ringChange
	fs.Var(changeFlag{"add", &changes, parseAdd}, "add", "add a member: id=5,name=e5,ws=host:port,grpc=host:port[,weight=W][,state=draining]")
	fs.Var(changeFlag{"remove", &changes, func(s string) (ringChange, error) {
		id, err := parseID(s)
		return ringChange{id: id}, err
	}}, "remove", "remove the member with this id")
	fs.Var(changeFlag{"drain", &changes, func(s string) (ringChange, error) {
		id, err := parseID(s)
		return ringChange{id: id}, err
	}}, "drain", "set the member with this id draining")
	fs.Var(changeFlag{"weight", &changes, func(s string) (ringChange, error) {
		ids, ws, ok := strings.Cut(s, "=")
		if !ok {
			return ringChange{}, fmt.Errorf("%q: want ID=WEIGHT", s)
		}
		id, err := parseID(ids)
		if err != nil {
			return ringChange{}, err
		}
		w, err := strconv.Atoi(ws)
		if err != nil {
			return ringChange{}, fmt.Errorf("weight %q is not a number", ws)
		}
		return ringChange{id: id, weight: w}, nil
	}}, "weight", "set the weight of the member with this id: ID=W")
	keys := fs.Int("keys", 1000000, "how many user ids (uid-0 … uid-N-1) to count moves over")
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
	prev := before.Document()
	next, notes, err := applyChanges(prev, changes)
	if err != nil {
		return usageError{err}
	}
	if err := ring.CheckTransition(prev, next, false); err != nil {
		return usageError{fmt.Errorf("the changed document is refused: %w", err)}
	}
	after, err := ring.New(next)
	if err != nil {
		return usageError{err}
	}

	fmt.Fprintf(a.Stdout, "version    %d -> %d (simulated, nothing written)\n", prev.Version, next.Version)
	printMoves(a.Stdout, before, after, *keys)
	fmt.Fprintln(a.Stdout)

	sb, sa := before.Shares(), after.Shares()
	rows := []string{"ID\tNAME\tSTATE\tWEIGHT\tBEFORE\tAFTER\tCHANGE"}
	row := func(m ring.Member, state string) {
		rows = append(rows, fmt.Sprintf("%d\t%s\t%s\t%d\t%s\t%s\t%s", m.ID, m.Name, state, m.Weight, percent(sb[m.ID]), percent(sa[m.ID]), notes[m.ID]))
	}
	for _, m := range next.Members {
		row(m, string(m.State))
	}
	for _, m := range prev.Members {
		if _, ok := after.Member(m.ID); !ok {
			row(m, "removed")
		}
	}
	return writeTable(a.Stdout, rows)
}

// applyChanges returns a copy of prev, one version up, with the changes
// applied in order, and a note per changed member id. Unknown ids are
// errors.
func applyChanges(prev *ring.Document, changes []ringChange) (*ring.Document, map[uint32]string, error) {
	next := *prev
	next.Version++
	next.Members = slices.Clone(prev.Members)
	notes := make(map[uint32]string)
	note := func(id uint32, s string) {
		if notes[id] != "" {
			s = notes[id] + ", " + s
		}
		notes[id] = s
	}
	find := func(c ringChange) (int, error) {
		i := slices.IndexFunc(next.Members, func(m ring.Member) bool { return m.ID == c.id })
		if i < 0 {
			return 0, fmt.Errorf("--%s %d: no member with id %d in ring version %d", c.flag, c.id, c.id, prev.Version)
		}
		return i, nil
	}
	for _, c := range changes {
		switch c.flag {
		case "add":
			next.Members = append(next.Members, c.add)
			note(c.add.ID, "added")
		case "remove":
			i, err := find(c)
			if err != nil {
				return nil, nil, err
			}
			next.Members = slices.Delete(next.Members, i, i+1)
			note(c.id, "removed")
		case "drain":
			i, err := find(c)
			if err != nil {
				return nil, nil, err
			}
			next.Members[i].State = ring.StateDraining
			note(c.id, "drained")
		case "weight":
			i, err := find(c)
			if err != nil {
				return nil, nil, err
			}
			note(c.id, fmt.Sprintf("weight %d -> %d", next.Members[i].Weight, c.weight))
			next.Members[i].Weight = c.weight
		}
	}
	return &next, notes, nil
}

// printMoves prints the "moved" and "ideal" lines of a change from before
// to after: the fraction of the keys uid-0 … uid-(keys-1) whose owner
// changes, and the least fraction any placement would have to move.
func printMoves(w io.Writer, before, after *ring.Ring, keys int) {
	moved := 0
	buf := make([]byte, 0, 32)
	for i := 0; i < keys; i++ {
		buf = strconv.AppendInt(append(buf[:0], "uid-"...), int64(i), 10)
		if before.Lookup(buf) != after.Lookup(buf) {
			moved++
		}
	}
	fmt.Fprintf(w, "moved      %s (%d of %d keys uid-0..uid-%d)\n", percent(float64(moved)/float64(keys)), moved, keys, keys-1)
	fmt.Fprintf(w, "ideal      %s\n", percent(idealMove(before.Document(), after.Document())))
}

// idealMove is the least fraction of users any placement must move from
// prev to next: the total variation distance between the active members'
// weight shares before and after.
func idealMove(prev, next *ring.Document) float64 {
	share := func(d *ring.Document) map[uint32]float64 {
		s, total := make(map[uint32]float64), 0
		for _, m := range d.Members {
			if m.Active() {
				total += m.Weight
			}
		}
		for _, m := range d.Members {
			if m.Active() {
				s[m.ID] = float64(m.Weight) / float64(total)
			}
		}
		return s
	}
	b, a := share(prev), share(next)
	moved := 0.0
	for id, x := range b {
		if x > a[id] {
			moved += x - a[id]
		}
	}
	return moved
}
