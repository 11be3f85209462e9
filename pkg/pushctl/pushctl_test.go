package pushctl_test

import (
	"bytes"
	"regexp"
	"strings"
	"testing"
	"time"

	"github.com/pushcluster/push/pkg/auth"
	"github.com/pushcluster/push/pkg/edge"
	"github.com/pushcluster/push/pkg/edge/edgetest"
	"github.com/pushcluster/push/pkg/pushctl"
)

const secret = "pushctl-test-secret-pushctl-test-secret"

func run(env map[string]string, args ...string) (int, string, string) {
	var out, errb bytes.Buffer
	app := &pushctl.App{Stdout: &out, Stderr: &errb, Env: func(k string) (string, bool) {
		v, ok := env[k]
		return v, ok
	}}
	code := app.Main(args)
	return code, out.String(), errb.String()
}

func TestTokenMintsAVerifiableToken(t *testing.T) {
	code, out, errOut := run(map[string]string{"PUSH_JWT_SECRET": secret}, "token", "--user", "alice", "--ttl", "10m")
	if code != 0 {
		t.Fatalf("exit %d: %s", code, errOut)
	}
	v, _ := auth.NewVerifier(auth.Config{HMACSecret: []byte(secret)})
	if err := v.Verify(strings.TrimSpace(out), "alice"); err != nil {
		t.Fatalf("minted token does not verify: %v", err)
	}
}

func TestUsageErrorsExit2(t *testing.T) {
	for _, args := range [][]string{
		{"token"},
		{"publish", "--user", "a"},
		{"nosuch"},
		{"kick"},
		{"publish", "--bogus"},
	} {
		if code, _, errOut := run(nil, args...); code != pushctl.ExitUsage || errOut == "" {
			t.Errorf("%v: exit %d, stderr %q; want 2 and a message", args, code, errOut)
		}
	}
	if code, out, _ := run(nil, "--help"); code != 0 || !strings.Contains(out, "publish") {
		t.Errorf("--help: %d %q", code, out)
	}
}

func TestPublishPresenceKickAgainstAnEdge(t *testing.T) {
	addr := edgetest.Start(t, []byte(secret), edge.Config{ID: 3, DrainPeriod: time.Millisecond}).GRPCAddr()

	code, out, errOut := run(nil, "publish", "--grpc", addr, "--user", "bob", "--data", `{"hi":1}`)
	if code != 0 || !regexp.MustCompile(`^stored seq=1 epoch=[0-9a-z.]+ connections=0 edge=3`).MatchString(out) {
		t.Fatalf("publish: %d %q %q", code, out, errOut)
	}
	code, out, _ = run(map[string]string{"PUSH_GRPC": addr}, "presence", "bob")
	if code != 0 || !strings.Contains(out, "bob\toffline") {
		t.Fatalf("presence via PUSH_GRPC: %d %q", code, out)
	}
	code, _, errOut = run(nil, "publish", "--grpc", addr, "--user", "bad id", "--data", "x")
	if code != pushctl.ExitFailure || !strings.Contains(errOut, "InvalidArgument") {
		t.Fatalf("invalid user: %d %q", code, errOut)
	}
	code, out, _ = run(nil, "kick", "--grpc", addr, "bob")
	if code != 0 || !strings.Contains(out, "closed=0") {
		t.Fatalf("kick: %d %q", code, out)
	}
}
