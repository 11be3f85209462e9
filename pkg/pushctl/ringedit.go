package pushctl

import (
	"bytes"
	"context"
	"errors"
	"flag"
	"fmt"
	"io/fs"
	"log/slog"
	"os"
	"slices"
	"strconv"
	"strings"
	"time"

	"github.com/pushcluster/push/pkg/flagenv"
	"github.com/pushcluster/push/pkg/ring"
	"github.com/pushcluster/push/pkg/store"
)

// conflictError marks errors that exit with ExitConflict: another change
// got into the store between this command's read and its write.
type conflictError struct{ error }

// parseLocal is parse for commands with positional arguments and with
// flags that must come from the command line only. Flags and positional
// arguments may be mixed ("remove 3 --force"); "--" ends the flags. The
// flags named in local are never read from the environment: they describe
// one member or one decision (--grpc would otherwise pick up the PUSH_GRPC
// that publish uses, and a stray PUSH_FORCE would remove edges that still
// hold users), and their help says so.
func (a *App) parseLocal(fs *flag.FlagSet, args []string, local ...string) ([]string, error) {
	if usage := fs.Usage; len(local) > 0 {
		fs.Usage = func() {
			var b bytes.Buffer
			out := fs.Output()
			fs.SetOutput(&b)
			usage()
			fs.SetOutput(out)
			text := b.String()
			for _, name := range local {
				env := flagenv.EnvName("PUSH", name)
				text = strings.Replace(text, "env: "+env+"\n", "env: none (command line only)\n", 1)
			}
			fmt.Fprint(out, text)
		}
	}
	var positional []string
	for {
		// A negative number ("ring weight 1 -3") is an argument, not an
		// unknown flag: it gets the command's own range error.
		if len(args) > 0 && isNegativeNumber(args[0]) {
			positional = append(positional, args[0])
			args = args[1:]
			continue
		}
		if err := fs.Parse(args); err != nil {
			if errors.Is(err, flag.ErrHelp) {
				return nil, err
			}
			return nil, usageError{err}
		}
		consumed := args[:len(args)-fs.NArg()]
		args = fs.Args()
		if len(consumed) > 0 && consumed[len(consumed)-1] == "--" {
			positional = append(positional, args...)
			break
		}
		if len(args) == 0 {
			break
		}
		positional = append(positional, args[0])
		args = args[1:]
	}
	lookup := a.Env
	if lookup == nil {
		lookup = os.LookupEnv
	}
	filtered := func(k string) (string, bool) {
		for _, name := range local {
			if k == flagenv.EnvName("PUSH", name) {
				return "", false
			}
		}
		return lookup(k)
	}
	if _, err := flagenv.Parse(fs, "PUSH", nil, filtered); err != nil {
		return nil, usageError{err}
	}
	return positional, nil
}

func isNegativeNumber(s string) bool {
	_, err := strconv.ParseFloat(s, 64)
	return err == nil && strings.HasPrefix(s, "-")
}

// openStore opens the store url names; a bad URL is a usage error. A file
// store whose directory does not exist holds no document, like one whose
// file does not exist: both are failures (exit 1), with one message.
func (a *App) openStore(url string) (store.Store, error) {
	if url == "" {
		return nil, usageError{errors.New("--ring (or PUSH_RING) is required, e.g. --ring file:./ring.json")}
	}
	log := slog.New(slog.NewTextHandler(a.Stderr, &slog.HandlerOptions{Level: slog.LevelWarn}))
	st, err := store.Open(url, log, store.WithEtcdSecurity(a.etcd))
	if errors.Is(err, fs.ErrNotExist) {
		return nil, fmt.Errorf("no ring document in %s: its directory does not exist", url)
	}
	if err != nil {
		return nil, usageError{fmt.Errorf("--ring: %w", err)}
	}
	return st, nil
}

// editFlags builds the flag set of a ring change: the store flags and
// --keys for the movement figure printed after the change.
func (a *App) editFlags(name, usage, description string) (*flag.FlagSet, *string, *time.Duration, *int) {
	fs, url, timeout := a.ringFlags(name, usage, description+
		" Then prints the new version, the change, and the fraction of users it moved, counted over --keys user ids "+
		"uid-0, uid-1, … as in 'pushctl ring simulate'. The change is a compare-and-swap on the version read: "+
		"if the ring changed in between, nothing is written and the exit code is 3; re-run the command.")
	keys := fs.Int("keys", 1000000, "how many user ids (uid-0 … uid-N-1) to count moves over (0: skip the figure)")
	return fs, url, timeout, keys
}

// edit is one ring change. It gets the loaded document and a copy of it
// one version up to modify, and returns a one-line summary of what it did,
// or "" when there is nothing to change (nothing is written then). Its
// errors are returned as they are: usageError for refusals.
type edit func(prev, next *ring.Document) (summary string, err error)

// editRing loads the document from url, applies change to a copy with the
// version one up, validates it and writes it with a compare-and-swap on the
// version read, so that a change made meanwhile by anybody else is never
// overwritten: it is a conflictError instead. On success it prints the new
// version, the summary and the movement figure over keys user ids.
func (a *App) editRing(url string, timeout time.Duration, keys int, change edit) error {
	if keys < 0 {
		return usageError{fmt.Errorf("--keys %d must not be negative", keys)}
	}
	st, err := a.openStore(url)
	if err != nil {
		return err
	}
	defer st.Close()
	ctx, cancel := context.WithTimeout(context.Background(), timeout)
	defer cancel()
	prev, err := st.Load(ctx)
	if errors.Is(err, store.ErrNotFound) {
		return fmt.Errorf("no ring document in %s (create one with 'pushctl ring init')", url)
	}
	if err != nil {
		return unreachable(url, timeout, err)
	}
	next := *prev
	next.Version++
	next.Members = slices.Clone(prev.Members)
	summary, err := change(prev, &next)
	if err != nil {
		return err
	}
	if summary == "" {
		return nil
	}
	if err := next.Validate(); err != nil {
		return usageError{err}
	}
	// A deadline of its own for the write: change may have taken time
	// (add asks the new member's edge first).
	wctx, wcancel := context.WithTimeout(context.Background(), timeout)
	defer wcancel()
	if err := st.CompareAndSwap(wctx, prev.Version, &next, false); err != nil {
		if errors.Is(err, store.ErrVersionConflict) {
			return conflict(wctx, st)
		}
		if errors.Is(err, ring.ErrInvalid) {
			return usageError{err}
		}
		return err
	}
	fmt.Fprintf(a.Stdout, "version    %d -> %d (written)\nchanged    %s\n", prev.Version, next.Version, summary)
	if keys > 0 {
		before, err := ring.New(prev)
		if err != nil {
			return err
		}
		after, err := ring.New(&next)
		if err != nil {
			return err
		}
		printMoves(a.Stdout, before, after, keys)
	}
	return nil
}

// conflict builds the error for a compare-and-swap that found another
// version than the one read, naming the version now stored.
func conflict(ctx context.Context, st store.Store) error {
	now := "unknown"
	if d, err := st.Load(ctx); err == nil {
		now = strconv.FormatUint(d.Version, 10)
	}
	return conflictError{fmt.Errorf("version conflict: the ring changed (now version %s); re-run", now)}
}

// memberFlags adds the flags that describe a new member.
type memberFlags struct {
	id             *uint
	name, ws, grpc *string
	weight         *int
	local          []string // flag names, never read from the environment
}

func newMemberFlags(fs *flag.FlagSet) *memberFlags {
	return &memberFlags{
		id:     fs.Uint("id", 0, fmt.Sprintf("member id, 1..%d, unique (HAProxy's server id; the haproxy algorithm hashes it)", ring.MaxID)),
		name:   fs.String("name", "", "member name, unique, no spaces or '#' (the bounded algorithm hashes it)"),
		ws:     fs.String("ws", "", "host:port of the edge's WebSocket listener (routers dial it)"),
		grpc:   fs.String("grpc", "", "host:port of the edge's gRPC listener (SDKs and edges dial it)"),
		weight: fs.Int("weight", 1, fmt.Sprintf("weight, 1..%d: the member's share of users follows it", ring.MaxWeight)),
		local:  []string{"id", "name", "ws", "grpc", "weight"},
	}
}

// member returns the member the flags describe, active.
func (f *memberFlags) member() (ring.Member, error) {
	var missing []string
	if *f.id == 0 {
		missing = append(missing, "--id")
	}
	for _, s := range []struct{ flag, v string }{{"--name", *f.name}, {"--ws", *f.ws}, {"--grpc", *f.grpc}} {
		if s.v == "" {
			missing = append(missing, s.flag)
		}
	}
	if len(missing) > 0 {
		return ring.Member{}, usageError{fmt.Errorf("%s required (--id ID --name N --ws HOST:PORT --grpc HOST:PORT [--weight W])",
			strings.Join(missing, ", ")+map[bool]string{true: " is", false: " are"}[len(missing) == 1])}
	}
	if *f.id > ring.MaxID {
		return ring.Member{}, usageError{fmt.Errorf("--id %d: want 1..%d", *f.id, ring.MaxID)}
	}
	if *f.weight < 1 || *f.weight > ring.MaxWeight {
		return ring.Member{}, usageError{fmt.Errorf("--weight %d out of range 1..%d", *f.weight, ring.MaxWeight)}
	}
	return ring.Member{ID: uint32(*f.id), Name: *f.name, WS: *f.ws, GRPC: *f.grpc, Weight: *f.weight, State: ring.StateActive}, nil
}

func describe(m ring.Member) string {
	return fmt.Sprintf("member %d (%s)", m.ID, m.Name)
}

func noArgs(rest []string) error {
	if len(rest) > 0 {
		return usageError{fmt.Errorf("unexpected arguments %q", rest)}
	}
	return nil
}

func (a *App) ringInit(args []string) error {
	fs, url, timeout := a.ringFlags("init", "[--algorithm bounded|haproxy] --id ID --name N --ws HOST:PORT --grpc HOST:PORT [--weight W]",
		"Creates the ring document, version 1, with the algorithm's default parameters and its first member (a document "+
			"needs an active member); add the others with 'pushctl ring add'. Refused when the store already has a document.")
	algorithm := fs.String("algorithm", ring.AlgorithmBounded, "placement: bounded (consistent hashing with bounded loads) or haproxy (HAProxy's hash-type consistent)")
	mf := newMemberFlags(fs)
	rest, err := a.parseLocal(fs, args, append(mf.local, "algorithm")...)
	if err != nil {
		return err
	}
	if err := noArgs(rest); err != nil {
		return err
	}
	if *algorithm != ring.AlgorithmBounded && *algorithm != ring.AlgorithmHAProxy {
		return usageError{fmt.Errorf("--algorithm %q: want %s or %s", *algorithm, ring.AlgorithmBounded, ring.AlgorithmHAProxy)}
	}
	m, err := mf.member()
	if err != nil {
		return err
	}
	d := &ring.Document{Version: 1, Algorithm: *algorithm, Members: []ring.Member{m}}
	if err := d.Validate(); err != nil {
		return usageError{err}
	}
	st, err := a.openStore(*url)
	if err != nil {
		return err
	}
	defer st.Close()
	ctx, cancel := context.WithTimeout(context.Background(), *timeout)
	defer cancel()
	exists := func() error {
		cur, err := st.Load(ctx)
		if err != nil && !errors.Is(err, ring.ErrInvalid) {
			return err
		}
		v := "an invalid document"
		if cur != nil {
			v = fmt.Sprintf("version %d", cur.Version)
		}
		return usageError{fmt.Errorf("%s already holds a ring document (%s): change it with 'pushctl ring add|drain|weight|remove'", *url, v)}
	}
	if _, err := st.Load(ctx); errors.Is(err, context.DeadlineExceeded) {
		return unreachable(*url, *timeout, err)
	} else if !errors.Is(err, store.ErrNotFound) {
		return exists()
	}
	if err := st.CompareAndSwap(ctx, 0, d, false); err != nil {
		if errors.Is(err, store.ErrVersionConflict) {
			return exists()
		}
		return err
	}
	fmt.Fprintf(a.Stdout, "version    1 (written)\nchanged    created a %s ring with %s ws=%s grpc=%s weight=%d\n",
		*algorithm, describe(m), m.WS, m.GRPC, m.Weight)
	return nil
}

func (a *App) ringAdd(args []string) error {
	fs, url, timeout, keys := a.editFlags("add", "[--force] [--probe-timeout 2s] --id ID --name N --ws HOST:PORT --grpc HOST:PORT [--weight W]",
		"Adds an active member. Ids, names and addresses must be unique in the ring. "+
			"An active member owns users at once, so its edge must be running: before writing, pushctl asks the edge at --grpc "+
			"with the standard gRPC health check (grpc.health.v1, the whole server) and refuses the change, exit code 2, "+
			"unless it answers SERVING within --probe-timeout (a member whose edge is not running would take users "+
			"that it cannot serve, and they would bounce with close code 4003 until it is removed). "+
			"Start the edge first; --force adds the member without asking (for a ring written before its edges start).")
	probeTimeout := fs.Duration("probe-timeout", 2*time.Second, "how long to wait for the new member's edge to answer the gRPC health check")
	force := fs.Bool("force", false, "add the member without asking its edge (its users bounce with 4003 while the edge is not running)")
	mf := newMemberFlags(fs)
	rest, err := a.parseLocal(fs, args, append(mf.local, "force")...)
	if err != nil {
		return err
	}
	if err := noArgs(rest); err != nil {
		return err
	}
	m, err := mf.member()
	if err != nil {
		return err
	}
	if *probeTimeout <= 0 {
		return usageError{fmt.Errorf("--probe-timeout %v must be positive", *probeTimeout)}
	}
	return a.editRing(*url, *timeout, *keys, func(prev, next *ring.Document) (string, error) {
		next.Members = append(next.Members, m)
		summary := fmt.Sprintf("added %s ws=%s grpc=%s weight=%d", describe(m), m.WS, m.GRPC, m.Weight)
		if *force {
			return summary + " (forced: its edge was not asked)", nil
		}
		// A document that is refused anyway (a duplicate id or address)
		// is the clearer answer, and nobody's edge is asked for it.
		if err := next.Validate(); err != nil {
			return "", usageError{err}
		}
		ctx, cancel := context.WithTimeout(context.Background(), *probeTimeout)
		err := a.checkHealth(ctx, m.GRPC)
		cancel()
		if err != nil {
			if !errors.As(err, new(notServingError)) {
				err = rpcError(err)
			}
			return "", usageError{fmt.Errorf("not added: %s: its edge at %s does not answer the gRPC health check with SERVING (within %v): %v; "+
				"start the edge first, or pass --force to add it anyway", describe(m), m.GRPC, *probeTimeout, err)}
		}
		return summary + " (its edge answers SERVING)", nil
	})
}

// oneMember parses the member id of "ring drain|remove ID" and the like.
func oneMember(rest []string, want int, usage string) (uint32, error) {
	if len(rest) != want {
		return 0, usageError{fmt.Errorf("want %s, got %d argument(s)", usage, len(rest))}
	}
	id, err := parseID(rest[0])
	if err != nil {
		return 0, usageError{err}
	}
	return id, nil
}

// find returns the index of the member id in d, or a usage error.
func find(d *ring.Document, id uint32) (int, error) {
	i := slices.IndexFunc(d.Members, func(m ring.Member) bool { return m.ID == id })
	if i < 0 {
		return 0, usageError{fmt.Errorf("no member with id %d in ring version %d", id, d.Version)}
	}
	return i, nil
}

func activeMembers(d *ring.Document) int {
	n := 0
	for _, m := range d.Members {
		if m.Active() {
			n++
		}
	}
	return n
}

func (a *App) ringDrain(args []string) error {
	fs, url, timeout, keys := a.editFlags("drain", "ID",
		"Sets the member draining: it owns nobody from then on, and its edge moves its users to their new owners "+
			"gradually (close code 4003). Refused for the last active member. A member already draining is left as it is.")
	rest, err := a.parseLocal(fs, args)
	if err != nil {
		return err
	}
	id, err := oneMember(rest, 1, "one member id")
	if err != nil {
		return err
	}
	return a.editRing(*url, *timeout, *keys, func(prev, next *ring.Document) (string, error) {
		i, err := find(prev, id)
		if err != nil {
			return "", err
		}
		m := next.Members[i]
		if !m.Active() {
			fmt.Fprintf(a.Stdout, "%s is already draining in version %d; nothing written\n", describe(m), prev.Version)
			return "", nil
		}
		if activeMembers(prev) == 1 {
			return "", usageError{fmt.Errorf("%s is the last active member: add another before draining it", describe(m))}
		}
		next.Members[i].State = ring.StateDraining
		return describe(m) + " draining", nil
	})
}

func (a *App) ringWeight(args []string) error {
	fs, url, timeout, keys := a.editFlags("weight", "ID W",
		fmt.Sprintf("Sets the member's weight, 1..%d; its share of users follows its weight among the active members.", ring.MaxWeight))
	rest, err := a.parseLocal(fs, args)
	if err != nil {
		return err
	}
	id, err := oneMember(rest, 2, "a member id and a weight (ID W)")
	if err != nil {
		return err
	}
	w, err := strconv.Atoi(rest[1])
	switch {
	case err != nil:
		return usageError{fmt.Errorf("weight %q is not a whole number: want 1..%d", rest[1], ring.MaxWeight)}
	case w < 0:
		return usageError{fmt.Errorf("weight %d is negative: want 1..%d (drain a member to give it no users)", w, ring.MaxWeight)}
	case w < 1 || w > ring.MaxWeight:
		return usageError{fmt.Errorf("weight %d out of range: want 1..%d", w, ring.MaxWeight)}
	}
	return a.editRing(*url, *timeout, *keys, func(prev, next *ring.Document) (string, error) {
		i, err := find(prev, id)
		if err != nil {
			return "", err
		}
		m := next.Members[i]
		if m.Weight == w {
			fmt.Fprintf(a.Stdout, "%s already has weight %d in version %d; nothing written\n", describe(m), w, prev.Version)
			return "", nil
		}
		next.Members[i].Weight = w
		return fmt.Sprintf("%s weight %d -> %d", describe(m), m.Weight, w), nil
	})
}

func (a *App) ringRemove(args []string) error {
	fs, url, timeout, keys := a.editFlags("remove", "(--metrics URL | --force) ID",
		"Removes a member from the document. Only a draining member can be removed (drain it first with 'pushctl ring drain ID'), "+
			"so the last active member never is. Removing a member whose edge still holds users would cut them off without "+
			"the gradual move a drain does, so pushctl checks: --metrics names the edge's admin /metrics "+
			"(e.g. http://10.0.0.3:9100/metrics) and the member is removed only when its push_edge_connections gauge is 0. "+
			"The ring document has no admin addresses, so without --metrics pushctl cannot tell and refuses unless --force is given. "+
			"--force removes the member whatever it holds.")
	metricsURL := fs.String("metrics", "", "the member's edge admin /metrics URL: refuse while its push_edge_connections is above 0")
	force := fs.Bool("force", false, "remove the member even if its edge still holds users, or without checking")
	rest, err := a.parseLocal(fs, args, "metrics", "force")
	if err != nil {
		return err
	}
	id, err := oneMember(rest, 1, "one member id")
	if err != nil {
		return err
	}
	if *metricsURL == "" && !*force {
		return usageError{fmt.Errorf("not removed: pushctl cannot tell whether member %d still holds users. "+
			"Pass --metrics http://ADMIN/metrics (its edge's admin port) to check that its push_edge_connections is 0, "+
			"or --force to remove it regardless", id)}
	}
	return a.editRing(*url, *timeout, *keys, func(prev, next *ring.Document) (string, error) {
		i, err := find(prev, id)
		if err != nil {
			return "", err
		}
		m := next.Members[i]
		if m.Active() && activeMembers(prev) == 1 {
			return "", usageError{fmt.Errorf("%s is the last active member: add another, drain this one (pushctl ring drain %d), then remove it", describe(m), id)}
		}
		if m.Active() {
			return "", usageError{fmt.Errorf("%s is active: drain it first: pushctl ring drain %d", describe(m), id)}
		}
		note := ""
		if *metricsURL != "" {
			ctx, cancel := context.WithTimeout(context.Background(), *timeout)
			n, err := edgeConnections(ctx, *metricsURL)
			cancel()
			switch {
			case err != nil && *force:
				note = fmt.Sprintf(" (connections not checked: %v)", err)
			case err != nil:
				return "", fmt.Errorf("%s: %w (pass --force to remove it without checking)", describe(m), err)
			case n > 0 && !*force:
				return "", usageError{fmt.Errorf("%s still holds %d connection(s) (push_edge_connections at %s): "+
					"wait until its drain has moved them, or pass --force", describe(m), n, *metricsURL)}
			case n > 0:
				note = fmt.Sprintf(" (forced: it still held %d connection(s))", n)
			default:
				note = " (its edge holds no connections)"
			}
		} else {
			note = " (forced: connections not checked)"
		}
		next.Members = slices.Delete(next.Members, i, i+1)
		return "removed " + describe(m) + note, nil
	})
}
