package pushctl_test

import (
	"fmt"
	"os"
	"path/filepath"
	"regexp"
	"strings"
	"testing"
	"time"

	"github.com/pushcluster/push/internal/proctest"
	"github.com/pushcluster/push/pkg/pushctl"
)

func TestMain(m *testing.M) {
	code := m.Run()
	proctest.Cleanup()
	os.Exit(code)
}

// TestOperatorMessages runs the real pushctl binary (so that whatever a
// library prints to the process's stderr is seen too) and checks each
// message an operator stumbled on: one clear line and the documented
// exit code.
func TestOperatorMessages(t *testing.T) {
	bin := proctest.Build(t, "pushctl") + "/pushctl"
	path := ringFile(t, nil)
	dir := t.TempDir()
	invalid := filepath.Join(dir, "invalid.json")
	if err := os.WriteFile(invalid, []byte(`{"version":1,"algorithm":"bounded","members":[]}`), 0o644); err != nil {
		t.Fatal(err)
	}
	deadEtcd := fmt.Sprintf("etcd://127.0.0.1:%d/push", proctest.FreePort(t))
	deadMetrics := fmt.Sprintf("http://127.0.0.1:%d/metrics", proctest.FreePort(t))
	for _, tc := range []struct {
		name   string
		args   []string
		code   int
		stderr string // the whole of stderr, one line
		stdout string // a regexp stdout must match, when set
	}{
		{"an invalid document has one prefix", []string{"ring", "show", "--ring", invalid}, pushctl.ExitFailure,
			"pushctl ring show: load " + invalid + ": invalid ring document: no active members: the document has no members", ""},
		{"a refused change has one prefix", []string{"ring", "add", "--force", "--ring", path, "--id", "1", "--name", "e9", "--ws", "h:1", "--grpc", "h:2"}, pushctl.ExitUsage,
			`pushctl ring add: invalid ring document: members[3] "e9" (id 1): duplicate id 1, also used by members[0] "e1"`, ""},
		{"a negative weight", []string{"ring", "weight", "--ring", path, "1", "-3"}, pushctl.ExitUsage,
			"pushctl ring weight: weight -3 is negative: want 1..256 (drain a member to give it no users)", ""},
		{"a weight that is not a number", []string{"ring", "weight", "--ring", path, "1", "x"}, pushctl.ExitUsage,
			`pushctl ring weight: weight "x" is not a whole number: want 1..256`, ""},
		{"a weight out of range", []string{"ring", "weight", "--ring", path, "1", "300"}, pushctl.ExitUsage,
			"pushctl ring weight: weight 300 out of range: want 1..256", ""},
		{"an unreachable etcd", []string{"ring", "show", "--ring", deadEtcd, "--timeout", "1s"}, pushctl.ExitFailure,
			"pushctl ring show: the ring store " + deadEtcd + " did not answer within 1s (is it running and reachable?): etcd get /push/ring: context deadline exceeded", ""},
		{"an unreachable etcd, a change", []string{"ring", "weight", "--ring", deadEtcd, "--timeout", "1s", "1", "2"}, pushctl.ExitFailure,
			"pushctl ring weight: the ring store " + deadEtcd + " did not answer within 1s (is it running and reachable?): etcd get /push/ring: context deadline exceeded", ""},
		{"a missing ring file", []string{"ring", "show", "--ring", "file:" + filepath.Join(dir, "missing.json")}, pushctl.ExitFailure,
			"pushctl ring show: no ring document in file:" + filepath.Join(dir, "missing.json"), ""},
		{"a missing directory", []string{"ring", "show", "--ring", "file:" + filepath.Join(dir, "nodir", "ring.json")}, pushctl.ExitFailure,
			"pushctl ring show: no ring document in file:" + filepath.Join(dir, "nodir", "ring.json") + ": its directory does not exist", ""},
		{"--metrics names a removed member", []string{"ring", "show", "--ring", path, "--live-timeout", "0", "--metrics", "9=" + deadMetrics}, pushctl.ExitOK,
			"", `(?m)^9\s+-\s+removed\s+-\s+-\s+-\s+-\s+-\s+-\s+unreachable$`},
	} {
		t.Run(tc.name, func(t *testing.T) {
			p := proctest.Start(t, dir, nil, bin, tc.args...)
			code := p.Wait(t, 60*time.Second)
			if code != tc.code {
				t.Errorf("exit %d, want %d", code, tc.code)
			}
			want := tc.stderr
			if want != "" {
				want += "\n"
			}
			if p.Stderr() != want {
				t.Errorf("stderr:\n%q\nwant:\n%q", p.Stderr(), want)
			}
			if tc.stdout != "" && !regexp.MustCompile(tc.stdout).MatchString(p.Stdout()) {
				t.Errorf("stdout does not match %s:\n%s", tc.stdout, p.Stdout())
			}
			if strings.Contains(p.Stderr()+p.Stdout(), "ring: ring:") {
				t.Error("doubled prefix")
			}
		})
	}
}
