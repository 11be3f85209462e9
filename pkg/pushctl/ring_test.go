package pushctl_test

import (
	"bytes"
	"context"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/pushcluster/push/pkg/owner"
	"github.com/pushcluster/push/pkg/pushctl"
	"github.com/pushcluster/push/pkg/ring"
	"github.com/pushcluster/push/pkg/store"
)

// ringFile writes a ring document of members e1..eN (weight 1, active)
// through the store and returns its path.
func ringFile(t *testing.T, mod func(*ring.Document)) string {
	t.Helper()
	d := &ring.Document{Version: 4}
	for i := 1; i <= 3; i++ {
		d.Members = append(d.Members, ring.Member{ID: uint32(i), Name: fmt.Sprintf("e%d", i),
			WS: fmt.Sprintf("10.0.0.%d:8080", i), GRPC: fmt.Sprintf("10.0.0.%d:9090", i), Weight: 1})
	}
	if mod != nil {
		mod(d)
	}
	path := filepath.Join(t.TempDir(), "ring.json")
	st, err := store.OpenFile(path, nil)
	if err != nil {
		t.Fatal(err)
	}
	defer st.Close()
	if err := st.CompareAndSwap(context.Background(), 0, d, false); err != nil {
		t.Fatal(err)
	}
	return path
}

func runIn(env map[string]string, stdin io.Reader, args ...string) (int, string, string) {
	var out, errb bytes.Buffer
	app := &pushctl.App{Stdout: &out, Stderr: &errb, Stdin: stdin, Env: func(k string) (string, bool) {
		v, ok := env[k]
		return v, ok
	}}
	code := app.Main(args)
	return code, out.String(), errb.String()
}

func loadRing(t *testing.T, path string) *ring.Ring {
	t.Helper()
	b, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	d, err := ring.Parse(b)
	if err != nil {
		t.Fatal(err)
	}
	r, err := ring.New(d)
	if err != nil {
		t.Fatal(err)
	}
	return r
}

func TestRingLookup(t *testing.T) {
	path := ringFile(t, nil)
	r := loadRing(t, path)
	want := func(uids ...string) string {
		var b strings.Builder
		for _, u := range uids {
			fmt.Fprintf(&b, "%s\t%d\n", u, r.LookupString(u))
		}
		return b.String()
	}

	code, out, errOut := runIn(nil, nil, "ring", "lookup", "--ring", "file:"+path, "alice", "bob", "carol")
	if code != 0 || out != want("alice", "bob", "carol") {
		t.Fatalf("lookup args: exit %d, %q (stderr %q), want %q", code, out, errOut, want("alice", "bob", "carol"))
	}
	// From stdin, with the store named by PUSH_RING: blank lines skipped,
	// surrounding spaces and CRs trimmed.
	stdin := strings.NewReader("dave\n\n  erin \r\nfrank")
	code, out, errOut = runIn(map[string]string{"PUSH_RING": path}, stdin, "ring", "lookup")
	if code != 0 || out != want("dave", "erin", "frank") {
		t.Fatalf("lookup stdin: exit %d, %q (stderr %q)", code, out, errOut)
	}
	// Every owner is a member id the ring names.
	for _, line := range strings.Split(strings.TrimSpace(out), "\n") {
		_, id, _ := strings.Cut(line, "\t")
		n, _ := strconv.Atoi(id)
		if _, ok := r.Member(uint32(n)); !ok {
			t.Fatalf("line %q names no member", line)
		}
	}
}

func TestRingShow(t *testing.T) {
	path := ringFile(t, func(d *ring.Document) {
		d.Members[1].Weight = 2
		d.Members[2].State = ring.StateDraining
	})
	// --live-timeout 0: no health checks (10.0.0.x is nobody here).
	code, out, errOut := runIn(nil, nil, "ring", "show", "--ring", path, "--live-timeout", "0")
	if code != 0 {
		t.Fatalf("exit %d: %s", code, errOut)
	}
	shares := loadRing(t, path).Shares()
	for _, want := range []string{
		"version    4\n",
		"algorithm  bounded\n",
		"params     partitions=65521 replication=1000 load=1.02\n",
		"members    3 (2 active, 1 draining)\n",
		"ID  NAME  STATE     WEIGHT  WS             GRPC           SHARE   LEASE  LIVE  USERS\n",
		fmt.Sprintf("1   e1    active    1       10.0.0.1:8080  10.0.0.1:9090  %.2f%%  -      -     -\n", 100*shares[1]),
		fmt.Sprintf("2   e2    active    2       10.0.0.2:8080  10.0.0.2:9090  %.2f%%  -      -     -\n", 100*shares[2]),
		"3   e3    draining  1       10.0.0.3:8080  10.0.0.3:9090  0.00%   -      -     -\n",
	} {
		if !strings.Contains(out, want) {
			t.Errorf("show lacks %q:\n%s", want, out)
		}
	}
	// Shares follow the weights: about a third and two thirds.
	if s := shares[2]; s < 0.6 || s > 0.7 {
		t.Errorf("share of the weight-2 member %.4f", s)
	}

	hap := ringFile(t, func(d *ring.Document) { d.Algorithm = ring.AlgorithmHAProxy })
	if code, out, _ := runIn(nil, nil, "ring", "show", "--ring", hap, "--live-timeout", "0"); code != 0 ||
		!strings.Contains(out, "algorithm  haproxy\nparams     hash=sdbm avalanche=true\n") {
		t.Fatalf("show haproxy: %d\n%s", code, out)
	}
}

var percentRe = regexp.MustCompile(`(?m)^(moved|ideal) +([0-9.]+)%`)

// fractions returns the moved and ideal percentages simulate printed.
func fractions(t *testing.T, out string) (moved, ideal float64) {
	t.Helper()
	m := percentRe.FindAllStringSubmatch(out, -1)
	if len(m) != 2 {
		t.Fatalf("no moved/ideal lines in:\n%s", out)
	}
	moved, _ = strconv.ParseFloat(m[0][2], 64)
	ideal, _ = strconv.ParseFloat(m[1][2], 64)
	return moved, ideal
}

func TestRingSimulate(t *testing.T) {
	path := ringFile(t, nil)
	before, _ := os.ReadFile(path)
	tests := []struct {
		name         string
		args         []string
		ideal        float64
		rows         []string // fragments of member rows, single-spaced
		minMoved     float64
		maxMoved     float64
		wantInOutput string
	}{
		{"add", []string{"--add", "id=5,name=e5,ws=10.0.0.5:8080,grpc=10.0.0.5:9090"}, 25.00,
			[]string{"5 e5 active 1 0.00%", "added"}, 20, 30, "version    4 -> 5 (simulated, nothing written)"},
		{"add weight 2", []string{"--add", "id=5,name=e5,ws=10.0.0.5:8080,grpc=10.0.0.5:9090,weight=2"}, 40.00,
			[]string{"5 e5 active 2 0.00%"}, 35, 45, ""},
		{"remove", []string{"--remove", "2"}, 33.33,
			[]string{"2 e2 removed 1 33."}, 30, 37, ""},
		{"weight", []string{"--weight", "1=3"}, 26.67,
			[]string{"1 e1 active 3", "weight 1 -> 3"}, 22, 32, ""},
		{"drain", []string{"--drain", "3"}, 33.33,
			[]string{"3 e3 draining 1 33.", "0.00% drained"}, 30, 37, ""},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			args := append([]string{"ring", "simulate", "--ring", path, "--keys", "200000"}, tc.args...)
			code, out, errOut := runIn(nil, nil, args...)
			if code != 0 {
				t.Fatalf("exit %d: %s", code, errOut)
			}
			moved, ideal := fractions(t, out)
			if ideal != tc.ideal {
				t.Errorf("ideal %.2f%%, want %.2f%%\n%s", ideal, tc.ideal, out)
			}
			// Consistent hashing moves about the ideal, never far more.
			if moved < tc.minMoved || moved > tc.maxMoved {
				t.Errorf("moved %.2f%%, want %v..%v\n%s", moved, tc.minMoved, tc.maxMoved, out)
			}
			if !strings.Contains(out, "of 200000 keys uid-0..uid-199999") {
				t.Errorf("key count missing:\n%s", out)
			}
			flat := singleSpaced(out)
			for _, r := range append(tc.rows, tc.wantInOutput) {
				if !strings.Contains(flat, singleSpaced(r)) {
					t.Errorf("output lacks %q:\n%s", r, out)
				}
			}
		})
	}
	if after, _ := os.ReadFile(path); !bytes.Equal(before, after) {
		t.Fatal("simulate changed the stored document")
	}
}

// singleSpaced collapses each line's runs of spaces, so that assertions do
// not depend on column widths.
func singleSpaced(s string) string {
	lines := strings.Split(s, "\n")
	for i, l := range lines {
		lines[i] = strings.Join(strings.Fields(l), " ")
	}
	return strings.Join(lines, "\n")
}

// TestRingSimulateCountsMovesExactly checks the moved count against the
// rings themselves on a small key set.
func TestRingSimulateCountsMovesExactly(t *testing.T) {
	path := ringFile(t, nil)
	code, out, errOut := runIn(nil, nil, "ring", "simulate", "--ring", path, "--keys", "1000", "--remove", "1")
	if code != 0 {
		t.Fatal(errOut)
	}
	r := loadRing(t, path)
	d := r.Document()
	d.Version++
	d.Members = d.Members[1:]
	after, err := ring.New(d)
	if err != nil {
		t.Fatal(err)
	}
	moved := 0
	for i := range 1000 {
		if k := "uid-" + strconv.Itoa(i); r.LookupString(k) != after.LookupString(k) {
			moved++
		}
	}
	if want := fmt.Sprintf("(%d of 1000 keys", moved); !strings.Contains(out, want) {
		t.Fatalf("want %q in:\n%s", want, out)
	}
}

func TestRingUsageErrors(t *testing.T) {
	path := ringFile(t, nil)
	for _, tc := range []struct {
		args []string
		want string
	}{
		{[]string{"ring"}, "name a subcommand"},
		{[]string{"ring", "bogus"}, `unknown subcommand "bogus"`},
		{[]string{"ring", "show"}, "--ring (or PUSH_RING) is required"},
		{[]string{"ring", "lookup", "alice"}, "--ring (or PUSH_RING) is required"},
		{[]string{"ring", "show", "--ring", "ftp://x/ring.json"}, "unknown scheme"},
		{[]string{"ring", "show", "--ring", path, "extra"}, "unexpected arguments"},
		{[]string{"ring", "show", "--bogus"}, "flag provided but not defined: -bogus"},
		{[]string{"ring", "simulate", "--ring", path}, "name a change"},
		{[]string{"ring", "simulate", "--ring", path, "--remove", "9"}, "--remove 9: no member with id 9 in ring version 4"},
		{[]string{"ring", "simulate", "--ring", path, "--weight", "7=2"}, "--weight 7: no member with id 7"},
		{[]string{"ring", "simulate", "--ring", path, "--drain", "8"}, "--drain 8: no member with id 8"},
		{[]string{"ring", "simulate", "--ring", path, "--remove", "x"}, `member id "x": want 1..1048575`},
		{[]string{"ring", "simulate", "--ring", path, "--weight", "1"}, `"1": want ID=WEIGHT`},
		{[]string{"ring", "simulate", "--ring", path, "--weight", "1=0"}, "weight 0 out of range 1..256"},
		{[]string{"ring", "simulate", "--ring", path, "--add", "id=5,name=e5"}, "ws is required"},
		{[]string{"ring", "simulate", "--ring", path, "--add", "id=5,name=e5,ws=h:1,grpc=h:2,color=red"}, `unknown key "color"`},
		{[]string{"ring", "simulate", "--ring", path, "--add", "id=1,name=e9,ws=h:1,grpc=h:2"}, "duplicate id 1"},
		{[]string{"ring", "simulate", "--ring", path, "--add", "id=2,name=e2,ws=h:1,grpc=h:2"}, "duplicate id 2"},
		{[]string{"ring", "simulate", "--ring", path, "--remove", "1", "--remove", "2", "--remove", "3"}, "no active members"},
		{[]string{"ring", "simulate", "--ring", path, "--keys", "0", "--remove", "1"}, "--keys 0 must be at least 1"},
	} {
		code, _, errOut := runIn(nil, nil, tc.args...)
		if code != pushctl.ExitUsage || !strings.Contains(errOut, tc.want) {
			t.Errorf("%v: exit %d, stderr %q; want 2 and %q", tc.args, code, errOut, tc.want)
		}
	}
}

func TestRingFailuresExit1(t *testing.T) {
	dir := t.TempDir()
	missing := filepath.Join(dir, "ring.json")
	if code, _, errOut := runIn(nil, nil, "ring", "show", "--ring", missing); code != pushctl.ExitFailure ||
		!strings.Contains(errOut, "no ring document in "+missing) {
		t.Fatalf("missing document: %d %q", code, errOut)
	}
	bad := filepath.Join(dir, "bad.json")
	os.WriteFile(bad, []byte(`{"version": 1, "members": []}`), 0o644)
	if code, _, errOut := runIn(nil, nil, "ring", "lookup", "--ring", bad, "alice"); code != pushctl.ExitFailure ||
		!strings.Contains(errOut, "no active members") {
		t.Fatalf("invalid document: %d %q", code, errOut)
	}
}

func TestRingHelp(t *testing.T) {
	for _, args := range [][]string{{"ring", "--help"}, {"ring", "help"}, {"ring", "simulate", "--help"}} {
		code, out, errOut := runIn(nil, nil, args...)
		if code != 0 || !strings.Contains(out+errOut, "simulate") {
			t.Errorf("%v: exit %d, %q %q", args, code, out, errOut)
		}
	}
	if code, out, _ := runIn(nil, nil, "--help"); code != 0 || !strings.Contains(out, "lookup, show, simulate (read); init, add, drain, weight, remove (change)") {
		t.Errorf("--help does not list ring: %d %q", code, out)
	}
}

// TestRingShowLeases: LEASE and USERS come from the members' leases (what
// every process uses for ownership), without --metrics.
func TestRingShowLeases(t *testing.T) {
	path := ringFile(t, nil)
	st, err := store.OpenFile(path, nil)
	if err != nil {
		t.Fatal(err)
	}
	defer st.Close()
	l1, err := st.Register(context.Background(), 1, time.Minute, owner.Live{Users: 42})
	if err != nil {
		t.Fatal(err)
	}
	defer l1.Close()
	l2, err := st.Register(context.Background(), 2, time.Minute, owner.Live{State: ring.StateDraining, Users: 3})
	if err != nil {
		t.Fatal(err)
	}
	defer l2.Close()
	code, out, errOut := ringCmd(path, "show", "--live-timeout", "0")
	if code != 0 {
		t.Fatalf("exit %d %s", code, errOut)
	}
	for _, want := range []string{"% active - 42\n", "% draining - 3\n", "% none - -\n"} {
		if !strings.Contains(singleSpaced(out), want) {
			t.Errorf("show lacks %q:\n%s", want, out)
		}
	}
}
