package faults

import (
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"os"
	"path/filepath"
	"sort"
	"strings"
	"syscall"
	"time"

	"github.com/pushcluster/push/pkg/ring"
)

// Params sizes a run.
type Params struct {
	Users    int           // clients, one WebSocket each
	Rate     float64       // publishes per second, both publishers together
	Duration time.Duration // publishing time of a scenario, at least
	LeaseTTL time.Duration // edges' --lease-ttl
	Ping     time.Duration // edges' --ping-interval (idle timeout 4x, client read deadline 3x)
	Warmup   time.Duration // publishing before the fault
	Post     time.Duration // publishing after the fault ended, at least
	Restart  time.Duration // scenario c: how long the killed edge stays dead
	AddWait  time.Duration // scenario i: between ring add and the edge's start
	Quiet    time.Duration // delivery has quiesced after this long without a message
	Recover  time.Duration // longest wait for users to settle after a fault
}

// FullParams is `make faults`: 1,000 users, 800 msg/s.
func FullParams() Params {
	return Params{Users: 1000, Rate: 800, Duration: 30 * time.Second, LeaseTTL: 3 * time.Second, Ping: time.Second,
		Warmup: 3 * time.Second, Post: 5 * time.Second, Restart: 15 * time.Second, AddWait: 10 * time.Second, Quiet: 3 * time.Second, Recover: 60 * time.Second}
}

// ShortParams is the go test version: 200 users, 300 msg/s.
func ShortParams() Params {
	return Params{Users: 200, Rate: 300, Duration: 10 * time.Second, LeaseTTL: 3 * time.Second, Ping: time.Second,
		Warmup: 2 * time.Second, Post: 3 * time.Second, Restart: 5 * time.Second, AddWait: 5 * time.Second, Quiet: 2 * time.Second, Recover: 20 * time.Second}
}

// Scenario is one fault and what it allows.
type Scenario struct {
	Name    string // a-file, a-etcd, b, c, ...
	Store   string // file or etcd
	Desc    string
	Routers int
	Expect  Expect
	netns   bool
	fault   func(r *run) error
}

// faulty is the edge every single-edge fault hits.
const faulty = 2

// Scenarios lists every scenario in table order.
func Scenarios() []Scenario {
	return []Scenario{
		{Name: "a-file", Store: "file", Desc: "planned: pushctl ring add, weight, drain, remove", fault: planned},
		{Name: "a-etcd", Store: "etcd", Desc: "planned: pushctl ring add, weight, drain, remove", fault: planned},
		{Name: "b", Store: "file", Desc: "SIGKILL edge 2, never restarted", Expect: Expect{GapLoss: true}, fault: killEdge(false)},
		{Name: "c", Store: "file", Desc: "SIGKILL edge 2, restarted later", Expect: Expect{GapLoss: true}, fault: killEdge(true)},
		{Name: "d", Store: "etcd", Desc: "SIGKILL edge 2", Expect: Expect{GapLoss: true}, fault: killEdge(false)},
		{Name: "e", Store: "etcd", Desc: "SIGSTOP edge 2 for 3x lease TTL, then SIGCONT", fault: pauseEdge},
		{Name: "f", Store: "etcd", Desc: "SIGSTOP etcd for 4x lease TTL, then SIGCONT", Expect: Expect{NoMoves: true}, fault: pauseEtcd},
		{Name: "g", Store: "file", Desc: "two routers, SIGKILL one", Routers: 2, fault: killRouter},
		{Name: "h", Store: "etcd", Desc: "edge 2 partitioned from etcd (netns + nftables) for 3x lease TTL, clients stay", netns: true, fault: partition},
		{Name: "i", Store: "file", Desc: "pushctl ring add before the edge starts; edge started later", fault: addBeforeStart},
	}
}

// Select picks scenarios by comma-separated names: "all", a letter ("a"
// means both a rows) or a full name ("a-etcd").
func Select(spec string) ([]Scenario, error) {
	all := Scenarios()
	if spec == "" || spec == "all" {
		return all, nil
	}
	var out []Scenario
	for _, s := range strings.Split(spec, ",") {
		s = strings.TrimSpace(strings.ToLower(s))
		n := len(out)
		for _, sc := range all {
			if sc.Name == s || strings.HasPrefix(sc.Name, s+"-") {
				out = append(out, sc)
			}
		}
		if len(out) == n {
			return nil, fmt.Errorf("unknown scenario %q", s)
		}
	}
	return out, nil
}

// run is the state of one scenario run.
type run struct {
	sc      Scenario
	p       Params
	c       *Cluster
	cl      *Clients
	pub     *Publishers
	uids    []string
	changes []int
	healthy []bool
	start   time.Time // publishing began
	fStart  time.Time
	fEnd    time.Time
	notes   []string
	logf    func(string, ...any)
	ns      *netns
}

func (r *run) note(format string, args ...any) {
	s := fmt.Sprintf(format, args...)
	r.notes = append(r.notes, s)
	r.logf("note: %s", s)
}

// setupError is a failure to bring the cluster up, before any fault: a
// port taken between pick and bind, typically. Run tries again once.
type setupError struct{ err error }

func (e setupError) Error() string { return "setup: " + e.err.Error() }
func (e setupError) Unwrap() error { return e.err }

// Run runs one scenario in a fresh directory under baseDir with the
// binaries bins and returns its row. Every process it started is gone when
// it returns. An error means the harness could not run the scenario. A
// cluster that does not come up is tried once more.
func Run(sc Scenario, bins Bins, p Params, baseDir string, logf func(string, ...any)) (Row, error) {
	row, err := runOnce(sc, bins, p, baseDir, logf)
	var se setupError
	if errors.As(err, &se) {
		if logf != nil {
			logf("scenario %s: %v; trying once more", sc.Name, err)
		}
		row, err = runOnce(sc, bins, p, baseDir, logf)
	}
	return row, err
}

func runOnce(sc Scenario, bins Bins, p Params, baseDir string, logf func(string, ...any)) (row Row, err error) {
	began := time.Now()
	row = Row{Scenario: sc.Name, Store: sc.Store}
	if logf == nil {
		logf = func(string, ...any) {}
	}
	logf("scenario %s (%s store): %s", sc.Name, sc.Store, sc.Desc)
	dir, err := os.MkdirTemp(baseDir, "faults-"+sc.Name+"-")
	if err != nil {
		return row, err
	}
	r := &run{sc: sc, p: p, logf: logf}
	host := ""
	if sc.netns {
		ns, reason := newNetns(logf)
		if reason != "" {
			row.Skipped = reason
			logf("scenario %s skipped: %s", sc.Name, reason)
			return row, nil
		}
		r.ns = ns
		defer ns.Close()
		host = ns.rootAddr
	}
	c, err := NewCluster(dir, bins, p, sc.Store, host, logf)
	if err != nil {
		return row, setupError{err}
	}
	r.c = c
	defer c.Close()
	logf("logs in %s", dir)
	if err := r.setup(); err != nil {
		return row, setupError{err}
	}

	// Users, all connected before anything else happens.
	r.cl, err = StartClients(p.Users, "u", c.RouterAddrs(), c.Secret, 3*p.Ping)
	if err != nil {
		return row, err
	}
	defer r.cl.Stop()
	for _, u := range r.cl.Users {
		r.uids = append(r.uids, u.UID)
	}
	r.changes = make([]int, p.Users)
	r.healthy = make([]bool, p.Users)
	for i := range r.healthy {
		r.healthy[i] = true
	}
	if !r.settle(60*time.Second, 0) {
		return row, fmt.Errorf("only %d of %d users connected within 60s", r.cl.Connected(), p.Users)
	}
	logf("%d users connected", p.Users)

	// Publishers, then the fault.
	r.pub, err = NewPublishers(r.uids, c.RouterGRPCs(), c.StoreURL, p.Rate)
	if err != nil {
		return row, err
	}
	defer r.pub.Close()
	r.start = time.Now()
	r.pub.Start()
	time.Sleep(p.Warmup)
	if err := sc.fault(r); err != nil {
		return row, fmt.Errorf("scenario %s: %w", sc.Name, err)
	}
	if r.fStart.IsZero() {
		r.fStart = time.Now()
	}
	if r.fEnd.IsZero() {
		r.fEnd = time.Now()
	}
	rest := max(p.Post+time.Until(r.fEnd), time.Until(r.start.Add(p.Duration)))
	logf("fault window %.1fs; publishing %.1fs more", r.fEnd.Sub(r.fStart).Seconds(), rest.Seconds())
	time.Sleep(rest)
	r.pub.Stop()
	stopped := time.Now()
	logf("publishing stopped; waiting for delivery to quiesce")
	r.quiesce(stopped, 30*time.Second)

	users := make([]UserStats, len(r.cl.Users))
	for i, u := range r.cl.Users {
		users[i] = u.Snapshot()
	}
	row = Check(Input{Users: users, Publishes: r.pub.Records(), Changes: r.changes, Healthy: r.healthy,
		FaultStart: r.fStart, FaultEnd: r.fEnd, Expect: sc.Expect})
	row.Scenario, row.Store, row.LogDir = sc.Name, sc.Store, dir
	row.Notes = append(row.Notes, r.notes...)
	r.writeDetails(dir, &row, users)
	row.Seconds = time.Since(began).Seconds()
	return row, nil
}

// setup starts three edges (edge 2 in the namespace for h) on a ring of
// them, then the routers.
func (r *run) setup() error {
	c := r.c
	var edges []*Edge
	for id := uint32(1); id <= 3; id++ {
		nsName, nsHost := "", ""
		if r.ns != nil && id == faulty {
			nsName, nsHost = r.ns.name, r.ns.nsAddr
		}
		e, err := c.NewEdge(id, nsName, nsHost)
		if err != nil {
			return err
		}
		edges = append(edges, e)
	}
	if err := c.InitRing(edges...); err != nil {
		return err
	}
	for _, e := range edges {
		if err := c.StartEdge(e, false); err != nil {
			return err
		}
	}
	for _, e := range edges {
		if err := waitHTTP(e.Proc, "http://"+e.Admin+"/readyz", 30*time.Second); err != nil {
			return err
		}
	}
	for i := 0; i < max(1, r.sc.Routers); i++ {
		if _, err := c.StartRouter(); err != nil {
			return err
		}
	}
	return nil
}

// writeDetails writes anomalies.txt (the checker's details, then a line
// per user that moved, timed out or failed to dial) into dir.
func (r *run) writeDetails(dir string, row *Row, users []UserStats) {
	var b strings.Builder
	fmt.Fprintf(&b, "scenario %s (%s): times are relative to the fault's start\n", row.Scenario, row.Store)
	for _, d := range row.Details {
		b.WriteString(d + "\n")
	}
	// The full story of the first users with an anomaly.
	traced := 0
	for _, uid := range row.anomalous {
		if traced == 10 {
			break
		}
		traced++
		for _, u := range users {
			if u.UID == uid {
				r.trace(&b, u)
			}
		}
	}
	for i, u := range users {
		if u.Moves == 0 && u.Timeouts == 0 && u.DialFails == 0 && len(u.Gaps) == 0 {
			continue
		}
		fmt.Fprintf(&b, "user %s: owner changes %d, healthy %v, moves %d, closes %v, read timeouts %d, dial failures %d, gap notices %d, connections %d\n",
			u.UID, r.changes[i], r.healthy[i], u.Moves, u.Closes, u.Timeouts, u.DialFails, len(u.Gaps), u.Conns)
	}
	os.WriteFile(filepath.Join(dir, "anomalies.txt"), []byte(b.String()), 0o644)
}

// trace writes one user's connections, gap notices and messages in time
// order, relative to the fault's start.
func (r *run) trace(b *strings.Builder, u UserStats) {
	at := func(t time.Time) string { return fmt.Sprintf("%+.3fs", t.Sub(r.fStart).Seconds()) }
	type ev struct {
		t time.Time
		s string
	}
	var evs []ev
	for i, h := range u.History {
		evs = append(evs, ev{h.Start, fmt.Sprintf("connection %d via %s opened with last_seq=%d epoch=%q", i+1, h.Router, h.LastSeq, h.Epoch)})
		if !h.End.IsZero() {
			evs = append(evs, ev{h.End, fmt.Sprintf("connection %d closed: code %d timed out %v", i+1, h.Code, h.TimedOut)})
		}
	}
	for _, g := range u.Gaps {
		evs = append(evs, ev{g, "gap notice"})
	}
	for _, g := range u.Got {
		evs = append(evs, ev{g.At, fmt.Sprintf("message p=%d n=%d seq %d epoch %q on connection %d", g.P, g.N, g.Seq, g.Epoch, g.Conn)})
	}
	for _, p := range r.pub.Records() {
		if p.User >= 0 && p.User < len(r.uids) && r.uids[p.User] == u.UID {
			evs = append(evs, ev{p.Sent, fmt.Sprintf("publish p=%d n=%d sent; answered %s at %s %s", p.P, p.N, p.Outcome, at(p.Done), p.Err)})
		}
	}
	sort.SliceStable(evs, func(i, j int) bool { return evs[i].t.Before(evs[j].t) })
	fmt.Fprintf(b, "--- trace of %s\n", u.UID)
	for _, e := range evs {
		fmt.Fprintf(b, "  %s %s\n", at(e.t), e.s)
	}
}

// settle waits until every user is connected and no 4003 happened for a
// while (at least minQuiet), bounded by timeout. It reports whether that
// happened.
func (r *run) settle(timeout, minQuiet time.Duration) bool {
	deadline := time.Now().Add(timeout)
	quiet := max(minQuiet, time.Second)
	lastMoves, lastChange := r.cl.Moves(), time.Now()
	for time.Now().Before(deadline) {
		m := r.cl.Moves()
		if m != lastMoves {
			lastMoves, lastChange = m, time.Now()
		}
		if r.cl.Connected() == len(r.cl.Users) && time.Since(lastChange) >= quiet {
			// Stable for a moment too: connected now and 300 ms later.
			time.Sleep(300 * time.Millisecond)
			if r.cl.Connected() == len(r.cl.Users) && r.cl.Moves() == m {
				return true
			}
		}
		time.Sleep(100 * time.Millisecond)
	}
	return false
}

// recovered waits (bounded) until the cluster is settled after the last
// action of a fault (a kill, a restart, SIGCONT, a heal) and marks the end
// of the fault window: once settled, and not before 2 lease TTLs after
// that action, since liveness and fencing act on that time scale.
func (r *run) recovered(timeout time.Duration) {
	last := time.Now()
	if !r.settle(timeout, time.Second) {
		r.note("not settled %v after the fault: %d/%d users connected", timeout, r.cl.Connected(), len(r.cl.Users))
	}
	r.fEnd = time.Now()
	if min := last.Add(2 * r.p.LeaseTTL); r.fEnd.Before(min) {
		r.fEnd = min
	}
}

// quiesce waits until every user is connected and nothing was delivered
// for p.Quiet, bounded by timeout.
func (r *run) quiesce(since time.Time, timeout time.Duration) {
	deadline := time.Now().Add(timeout)
	for time.Now().Before(deadline) {
		last := r.cl.LastData()
		if last.Before(since) {
			last = since
		}
		if r.cl.Connected() == len(r.cl.Users) && time.Since(last) >= r.p.Quiet {
			return
		}
		time.Sleep(100 * time.Millisecond)
	}
	r.note("delivery did not quiesce within %v (%d/%d users connected)", timeout, r.cl.Connected(), len(r.cl.Users))
}

// markOwnedBy marks the users the desired ring gives to id as affected
// (one owner change) and not healthy.
func (r *run) markOwnedBy(id uint32) error {
	rg, err := r.c.DesiredRing()
	if err != nil {
		return err
	}
	n := 0
	for i, uid := range r.uids {
		if rg.LookupString(uid) == id {
			r.changes[i]++
			r.healthy[i] = false
			n++
		}
	}
	r.logf("%d users owned by edge %d", n, id)
	return nil
}

// ringStep runs one pushctl ring change and counts, per user, whether the
// desired owner changed.
func (r *run) ringStep(args ...string) (int, error) {
	before, err := r.c.DesiredRing()
	if err != nil {
		return 0, err
	}
	if err := r.c.mustPushctl(args...); err != nil {
		return 0, err
	}
	after, err := r.c.DesiredRing()
	if err != nil {
		return 0, err
	}
	return r.countChanges(before, after), nil
}

func (r *run) countChanges(before, after *ring.Ring) int {
	n := 0
	for i, uid := range r.uids {
		if before.LookupString(uid) != after.LookupString(uid) {
			r.changes[i]++
			n++
		}
	}
	return n
}

// planned (a): add edge 4, weight edge 1 to 2, drain edge 2, remove it,
// stop it; each step settles before the next.
func planned(r *run) error {
	r.fStart = time.Now()
	e4, err := r.c.NewEdge(4, "", "")
	if err != nil {
		return err
	}
	if err := r.c.StartEdge(e4, true); err != nil {
		return err
	}
	steps := [][]string{
		append([]string{"ring", "add", "--keys", "0"}, e4.memberFlags()...),
		{"ring", "weight", "--keys", "0", "1", "2"},
		{"ring", "drain", "--keys", "0", fmt.Sprint(faulty)},
	}
	for _, s := range steps {
		n, err := r.ringStep(s...)
		if err != nil {
			return err
		}
		r.logf("%s: %d users change owner", strings.Join(s[:2], " "), n)
		if !r.settle(r.p.Recover, 2*time.Second) {
			r.note("not settled %v after %s", r.p.Recover, strings.Join(s, " "))
		}
	}
	// Remove the drained member once its edge reports no users.
	e2 := r.c.Edges[faulty]
	removed := false
	for try := 0; try < 10 && !removed; try++ {
		out, code, err := r.c.Pushctl("ring", "remove", "--keys", "0", "--metrics", "http://"+e2.Admin+"/metrics", fmt.Sprint(faulty))
		if err != nil {
			return err
		}
		if code == 0 {
			removed = true
			break
		}
		r.logf("ring remove refused (exit %d): %s", code, strings.TrimSpace(out))
		time.Sleep(time.Second)
	}
	if !removed {
		r.note("ring remove --metrics refused 10 times; removed with --force")
		if _, err := r.ringStep("ring", "remove", "--keys", "0", "--force", fmt.Sprint(faulty)); err != nil {
			return err
		}
	}
	if !e2.Proc.Term(6 * time.Second) {
		r.note("edge %d, drained and removed, did not exit within 6s of SIGTERM (--drain-period 2s; killed)", faulty)
	}
	r.recovered(r.p.Recover)
	return nil
}

// killEdge (b, c, d): SIGKILL edge 2; with restart, start it again on the
// same addresses after p.Restart.
func killEdge(restart bool) func(r *run) error {
	return func(r *run) error {
		if err := r.markOwnedBy(faulty); err != nil {
			return err
		}
		e := r.c.Edges[faulty]
		r.fStart = time.Now()
		e.Proc.Kill()
		r.logf("edge %d killed", faulty)
		if !restart {
			r.recovered(r.p.Recover)
			return nil
		}
		time.Sleep(r.p.Restart)
		if err := r.c.StartEdge(e, true); err != nil {
			return err
		}
		r.logf("edge %d restarted", faulty)
		r.recovered(r.p.Recover)
		return nil
	}
}

// pauseEdge (e): SIGSTOP edge 2 for 3x the lease TTL, then SIGCONT.
func pauseEdge(r *run) error {
	if err := r.markOwnedBy(faulty); err != nil {
		return err
	}
	e := r.c.Edges[faulty]
	r.fStart = time.Now()
	if err := e.Proc.Signal(syscall.SIGSTOP); err != nil {
		return err
	}
	r.logf("edge %d stopped for %v", faulty, 3*r.p.LeaseTTL)
	time.Sleep(3 * r.p.LeaseTTL)
	if err := e.Proc.Signal(syscall.SIGCONT); err != nil {
		return err
	}
	r.logf("edge %d continued", faulty)
	r.recovered(r.p.Recover)
	return nil
}

// pauseEtcd (f): SIGSTOP etcd for 4x the lease TTL, then SIGCONT. No user
// should move.
func pauseEtcd(r *run) error {
	r.fStart = time.Now()
	if err := r.c.Etcd.Signal(syscall.SIGSTOP); err != nil {
		return err
	}
	r.logf("etcd stopped for %v", 4*r.p.LeaseTTL)
	time.Sleep(4 * r.p.LeaseTTL)
	if err := r.c.Etcd.Signal(syscall.SIGCONT); err != nil {
		return err
	}
	r.logf("etcd continued")
	r.recovered(r.p.Recover)
	return nil
}

// killRouter (g): SIGKILL router 1 of 2; its users reconnect through
// router 0.
func killRouter(r *run) error {
	rt := r.c.Routers[len(r.c.Routers)-1]
	r.fStart = time.Now()
	rt.Proc.Kill()
	r.logf("router %d killed", rt.Index)
	r.recovered(r.p.Recover)
	return nil
}

// partition (h): drop edge 2 <-> etcd traffic inside edge 2's namespace
// for 3x the lease TTL; edge 2's clients stay connected through it.
func partition(r *run) error {
	if err := r.markOwnedBy(faulty); err != nil {
		return err
	}
	_, etcdPort, err := net.SplitHostPort(r.c.EtcdClient)
	if err != nil {
		return err
	}
	r.fStart = time.Now()
	if err := r.ns.cut(etcdPort); err != nil {
		return err
	}
	r.logf("edge %d cut off from etcd for %v", faulty, 3*r.p.LeaseTTL)
	time.Sleep(time.Until(r.fStart.Add(3 * r.p.LeaseTTL))) // the cut's probe took some of it
	if err := r.ns.heal(); err != nil {
		return err
	}
	r.logf("partition healed")
	r.recovered(r.p.Recover)
	return nil
}

// addBeforeStart (i): pushctl ring add of edge 4 while it is not running
// (with --force if pushctl refuses an unreachable member), wait, then
// start it.
func addBeforeStart(r *run) error {
	e4, err := r.c.NewEdge(4, "", "")
	if err != nil {
		return err
	}
	before, err := r.c.DesiredRing()
	if err != nil {
		return err
	}
	r.fStart = time.Now()
	note, err := r.c.RingAdd(e4)
	if err != nil {
		return err
	}
	if note != "" {
		r.note("%s", note)
	}
	after, err := r.c.DesiredRing()
	if err != nil {
		return err
	}
	n := r.countChanges(before, after)
	for i := range r.uids {
		if r.changes[i] > 0 {
			r.healthy[i] = false
		}
	}
	r.logf("edge 4 added to the ring, not started: %d users change owner", n)
	time.Sleep(r.p.AddWait)
	if err := r.c.StartEdge(e4, true); err != nil {
		return err
	}
	r.logf("edge 4 started")
	r.recovered(r.p.Recover)
	return nil
}

func firstLine(s string) string {
	s, _, _ = strings.Cut(strings.TrimSpace(s), "\n")
	return s
}

func quietLogger() *slog.Logger { return slog.New(slog.NewTextHandler(io.Discard, nil)) }

// RunAll runs the scenarios one after the other and returns their rows;
// a scenario the harness could not run becomes a FAIL row with the error
// as its note.
func RunAll(scs []Scenario, bins Bins, p Params, baseDir string, logf func(string, ...any)) []Row {
	var rows []Row
	for _, sc := range scs {
		row, err := Run(sc, bins, p, baseDir, logf)
		if err != nil {
			row.Scenario, row.Store = sc.Name, sc.Store
			row.Failures = append(row.Failures, "harness: "+err.Error())
			logf("scenario %s: %v", sc.Name, err)
		}
		rows = append(rows, row)
	}
	return rows
}
