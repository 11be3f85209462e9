package main_test

import (
	"os"
	"strings"
	"testing"
	"time"

	"github.com/pushcluster/push/internal/proctest"
	"github.com/pushcluster/push/pkg/daemon"
)

func TestMain(m *testing.M) {
	code := m.Run()
	proctest.Cleanup()
	os.Exit(code)
}

func TestFlags(t *testing.T) {
	bin := proctest.Build(t, "router") + "/router"
	for _, tc := range []struct {
		name string
		args []string
		code int
		want string
	}{
		{"a stray word before the flags", []string{"stray", "--listen", "127.0.0.1:1"}, daemon.ExitUsage,
			`router: unexpected argument "stray": router takes flags only (see router --help); nothing after it was read ("--listen 127.0.0.1:1")`},
		{"a bad value", []string{"--check", "icmp", "--ring", "file:" + t.TempDir() + "/ring.json"}, daemon.ExitUsage, `router: invalid router config: check "icmp": want grpc, tcp or none`},
		{"tls flags apart", []string{"--tls-cert", "x.pem"}, daemon.ExitUsage, "router: --tls-listen, --tls-cert and --tls-key go together"},
		{"--help", []string{"--help"}, daemon.ExitOK, "Exit codes: 0 drained"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			p := proctest.Start(t, t.TempDir(), nil, bin, tc.args...)
			if code := p.Wait(t, 30*time.Second); code != tc.code {
				t.Fatalf("exit %d, want %d\n%s", code, tc.code, p.Stderr())
			}
			if !strings.Contains(p.Stderr(), tc.want) {
				t.Fatalf("stderr does not say %q:\n%s", tc.want, p.Stderr())
			}
		})
	}
}
