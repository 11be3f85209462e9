package pushctl_test

import (
	"os"
	"path/filepath"
	"regexp"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/pushcluster/push/internal/proctest"
	"github.com/pushcluster/push/pkg/pushctl"
)

// TestListenAndPublish runs a real edge pair and router, "pushctl listen"
// as a user and "pushctl publish" with inline, file and stdin payloads;
// the listener follows a move (drain of its edge) without losing a
// message, prints a gap notice, and exits 0 on SIGINT.
func TestListenAndPublish(t *testing.T) {
	c := proctest.StartCluster(t, 2)
	wsURL := "ws://" + c.RouterWS + "/ws"
	listen := func(args ...string) *proctest.Proc {
		p := proctest.Start(t, t.TempDir(), c.Env, c.Bin+"/pushctl", append([]string{"listen", "--ws-url", wsURL}, args...)...)
		p.WaitFor(t, 30*time.Second, "connected", p.Contains("# connected to "+wsURL))
		return p
	}
	publish := func(args ...string) string {
		return c.MustPushctl(t, append([]string{"publish", "--grpc", c.RouterGRPC}, args...)...)
	}
	alice := listen("--user", "alice")

	publish("--user", "alice", "--data", `{"hi":1}`)
	alice.WaitFor(t, 30*time.Second, "seq 1", p(alice, `(?m)^seq=1 epoch=\S+ data=\{"hi":1\}$`))
	epoch := regexp.MustCompile(`(?m)^seq=1 epoch=(\S+) `).FindStringSubmatch(alice.Stdout())[1]

	big := `"` + strings.Repeat("x", 60000) + `"`
	file := filepath.Join(t.TempDir(), "payload.json")
	if err := os.WriteFile(file, []byte(big+"\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	publish("--user", "alice", "--data", "@"+file)
	alice.WaitFor(t, 30*time.Second, "seq 2 from a file", p(alice, `(?m)^seq=2 epoch=`+regexp.QuoteMeta(epoch)+` data=`+regexp.QuoteMeta(big)+`$`))

	sh := proctest.Start(t, t.TempDir(), c.Env, "sh", "-c", `printf '{"from":"stdin"}\n' | "$0" publish --grpc "$1" --user alice --data -`, c.Bin+"/pushctl", c.RouterGRPC)
	if code := sh.Wait(t, 60*time.Second); code != 0 {
		t.Fatalf("publish --data -: exit %d %s", code, sh.Stderr())
	}
	alice.WaitFor(t, 30*time.Second, "seq 3 from stdin", p(alice, `(?m)^seq=3 epoch=`+regexp.QuoteMeta(epoch)+` data=\{"from":"stdin"\}$`))

	// Beyond the edge's limit (64 KiB by default): the edge's answer; beyond
	// any edge's: refused before sending.
	over := filepath.Join(t.TempDir(), "over.json")
	os.WriteFile(over, []byte(`"`+strings.Repeat("y", 70000)+`"`), 0o644)
	if code, _, errOut := c.Pushctl(t, "publish", "--grpc", c.RouterGRPC, "--user", "alice", "--data", "@"+over); code != pushctl.ExitFailure || !strings.Contains(errOut, "InvalidArgument") {
		t.Errorf("publish of 70000 bytes: exit %d %q, want 1 and the edge's InvalidArgument", code, errOut)
	}
	huge := filepath.Join(t.TempDir(), "huge")
	os.WriteFile(huge, make([]byte, pushctl.MaxPayloadBytes+1), 0o644)
	if code, _, errOut := c.Pushctl(t, "publish", "--user", "alice", "--data", "@"+huge); code != pushctl.ExitUsage || !strings.Contains(errOut, "holds more than 16777216 bytes") {
		t.Errorf("publish of 16 MiB + 1: exit %d %q", code, errOut)
	}

	// Drain alice's edge: she moves (4003), resumes on the other edge
	// with last_seq and epoch, and the stream goes on.
	owner := strings.Fields(c.MustPushctl(t, "ring", "lookup", "alice"))[1]
	c.MustPushctl(t, "ring", "drain", owner)
	alice.WaitFor(t, 60*time.Second, "the move", alice.Contains("# moved (close 4003): reconnecting"))
	alice.WaitFor(t, 30*time.Second, "reconnect", func() bool { return strings.Count(alice.Stderr(), "# connected to") >= 2 })
	publish("--user", "alice", "--data", `{"after":"move"}`)
	alice.WaitFor(t, 30*time.Second, "seq 4 after the move", p(alice, `(?m)^seq=4 epoch=`+regexp.QuoteMeta(epoch)+` data=\{"after":"move"\}$`))
	if n := len(regexp.MustCompile(`(?m)^seq=`).FindAllString(alice.Stdout(), -1)); n != 4 {
		t.Errorf("alice printed %d messages, want 4:\n%s", n, alice.Stdout())
	}

	// bob's two messages wait for him; he resumes from a stream the edge
	// does not hold: one open gap notice, then both messages.
	publish("--user", "bob", "--data", `"one"`)
	publish("--user", "bob", "--data", `"two"`)
	bob := listen("--user", "bob", "--last-seq", "7", "--epoch", "gone")
	bob.WaitFor(t, 30*time.Second, "gap and messages", p(bob, `(?s)gap epoch=gone from=8 to=end.*\nseq=1 epoch=\S+ data="one"\nseq=2 epoch=\S+ data="two"\n`))

	// --token: a token for the user is used as given; one for somebody
	// else is refused before the upgrade, and listen says so (exit 1).
	carolTok := strings.TrimSpace(c.MustPushctl(t, "token", "--user", "carol"))
	carol := listen("--user", "carol", "--token", carolTok)
	publish("--user", "carol", "--data", `"hi carol"`)
	carol.WaitFor(t, 30*time.Second, "carol's message", p(carol, `(?m)^seq=1 epoch=\S+ data="hi carol"$`))
	carol.Signal(syscall.SIGINT)
	if code := carol.Wait(t, 30*time.Second); code != 0 {
		t.Errorf("carol's listen after SIGINT: exit %d", code)
	}
	if code, _, errOut := c.Pushctl(t, "listen", "--ws-url", wsURL, "--user", "dave", "--token", carolTok); code != pushctl.ExitFailure ||
		!strings.Contains(errOut, "pushctl listen: "+wsURL+" refused the token for dave (HTTP 401)") {
		t.Errorf("listen with another user's token: exit %d %q", code, errOut)
	}

	// kick ends bob's listener (1); SIGINT ends alice's (0).
	c.MustPushctl(t, "kick", "--grpc", c.RouterGRPC, "bob")
	if code := bob.Wait(t, 30*time.Second); code != 1 || !strings.Contains(bob.Stderr(), "kicked (close 4004") {
		t.Errorf("kicked listener: exit %d\n%s", code, bob.Stderr())
	}
	alice.Signal(syscall.SIGINT)
	if code := alice.Wait(t, 30*time.Second); code != 0 {
		t.Errorf("listen after SIGINT: exit %d\n%s", code, alice.Stderr())
	}
}

func p(proc *proctest.Proc, re string) func() bool {
	r := regexp.MustCompile(re)
	return func() bool { return r.MatchString(proc.Stdout()) }
}

func TestListenUsage(t *testing.T) {
	for _, tc := range []struct {
		args []string
		want string
	}{
		{[]string{"listen"}, "--user is required"},
		{[]string{"listen", "--user", "a", "--epoch", "e"}, "--epoch needs --last-seq"},
		{[]string{"listen", "--user", "a", "--ws-url", "http://x/ws"}, `--ws-url "http://x/ws": want ws://host:port/ws`},
		{[]string{"listen", "--user", "a"}, "no --token, and no secret to mint one"},
		{[]string{"publish", "--user", "a", "--data", "@/no/such/file"}, "--data @/no/such/file: open /no/such/file: no such file or directory"},
		{[]string{"publish", "--user", "a", "--data", "@" + os.TempDir()}, "--data @" + os.TempDir() + ": " + os.TempDir() + " is a directory"},
		{[]string{"publish", "--user", "a", "--data", "@"}, "--data @ names no file"},
		{[]string{"publish", "stray", "--user", "a", "--data", "x"}, `pushctl publish: unexpected argument "stray": pushctl publish takes flags only; nothing after it was read ("--user a --data x")`},
		{[]string{"listen", "--user", "a", "stray"}, `pushctl listen: unexpected argument "stray": pushctl listen takes flags only`},
	} {
		code, _, errOut := runIn(nil, strings.NewReader(""), tc.args...)
		if code != pushctl.ExitUsage || !strings.Contains(errOut, tc.want) {
			t.Errorf("%v: exit %d %q, want 2 and %q", tc.args, code, errOut, tc.want)
		}
	}
	code, _, errOut := runIn(nil, strings.NewReader(""), "publish", "--user", "a", "--data", "-")
	if code != pushctl.ExitUsage || !strings.Contains(errOut, "--data: stdin is empty") {
		t.Errorf("publish --data - with empty stdin: exit %d %q", code, errOut)
	}
}
