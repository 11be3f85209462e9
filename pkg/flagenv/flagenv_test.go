package flagenv

import (
	"bytes"
	"errors"
	"flag"
	"io"
	"runtime"
	"slices"
	"strings"
	"testing"
	"time"
)

func TestEnvName(t *testing.T) {
	tests := []struct{ prefix, name, want string }{
		{"PUSH", "max-conns", "PUSH_MAX_CONNS"},
		{"PUSH", "jwt.secret-file", "PUSH_JWT_SECRET_FILE"},
		{"PUSH", "addr", "PUSH_ADDR"},
		{"PUSH", "http2", "PUSH_HTTP2"},
		{"PUSH", "adminAddr", "PUSH_ADMINADDR"},
		{"PUSH_", "addr", "PUSH_ADDR"},
		{"push", "addr", "PUSH_ADDR"},
		{"", "max-conns", "MAX_CONNS"},
		{"PUSH", "a/b c", "PUSH_A_B_C"},
		{"PUSH", "é", "PUSH___"}, // two UTF-8 bytes, two underscores
	}
	for _, tc := range tests {
		if got := EnvName(tc.prefix, tc.name); got != tc.want {
			t.Errorf("EnvName(%q, %q) = %q, want %q", tc.prefix, tc.name, got, tc.want)
		}
	}
}

type testFlags struct {
	fs       *flag.FlagSet
	out      *bytes.Buffer
	addr     *string
	maxConns *int
	debug    *bool
	timeout  *time.Duration
	secret   *string
}

func newTestFlags() *testFlags {
	fs := flag.NewFlagSet("edge", flag.ContinueOnError)
	out := new(bytes.Buffer)
	fs.SetOutput(out)
	return &testFlags{
		fs:       fs,
		out:      out,
		addr:     fs.String("addr", ":8080", "listen `address` for WebSockets"),
		maxConns: fs.Int("max-conns", 1000, "maximum concurrent connections"),
		debug:    fs.Bool("debug", false, "enable debug logging"),
		timeout:  fs.Duration("write.timeout", 5*time.Second, "per-frame write timeout"),
		secret:   fs.String("jwt.secret-file", "", "path of the HS256 secret\nfile (one line)"),
	}
}

func env(m map[string]string) func(string) (string, bool) {
	return func(k string) (string, bool) {
		v, ok := m[k]
		return v, ok
	}
}

func TestParseEnvFillsUnsetFlags(t *testing.T) {
	f := newTestFlags()
	rest, err := Parse(f.fs, "PUSH", []string{"extra", "args"}, env(map[string]string{
		"PUSH_ADDR":            ":9090",
		"PUSH_MAX_CONNS":       "42",
		"PUSH_DEBUG":           "true",
		"PUSH_WRITE_TIMEOUT":   "250ms",
		"PUSH_JWT_SECRET_FILE": "/run/secrets/jwt",
		"OTHER_ADDR":           ":1",
	}))
	if err != nil {
		t.Fatal(err)
	}
	if *f.addr != ":9090" || *f.maxConns != 42 || !*f.debug || *f.timeout != 250*time.Millisecond || *f.secret != "/run/secrets/jwt" {
		t.Errorf("got addr=%q max-conns=%d debug=%v timeout=%v secret=%q", *f.addr, *f.maxConns, *f.debug, *f.timeout, *f.secret)
	}
	if !slices.Equal(rest, []string{"extra", "args"}) {
		t.Errorf("rest = %q", rest)
	}
	// Env-set flags count as set, so code using fs.Visit sees them.
	var visited []string
	f.fs.Visit(func(fl *flag.Flag) { visited = append(visited, fl.Name) })
	if len(visited) != 5 {
		t.Errorf("Visit saw %v, want all 5 flags", visited)
	}
}

func TestParseCommandLineWins(t *testing.T) {
	f := newTestFlags()
	_, err := Parse(f.fs, "PUSH", []string{"-addr", ":7070", "-max-conns=7", "-debug=false"}, env(map[string]string{
		"PUSH_ADDR":      ":9090",
		"PUSH_MAX_CONNS": "42",
		"PUSH_DEBUG":     "true",
	}))
	if err != nil {
		t.Fatal(err)
	}
	if *f.addr != ":7070" || *f.maxConns != 7 || *f.debug {
		t.Errorf("got addr=%q max-conns=%d debug=%v; command line should win", *f.addr, *f.maxConns, *f.debug)
	}
}

func TestParseUnsetAndEmptyEnvKeepDefaults(t *testing.T) {
	f := newTestFlags()
	if _, err := Parse(f.fs, "PUSH", nil, env(map[string]string{"PUSH_MAX_CONNS": "", "PUSH_DEBUG": ""})); err != nil {
		t.Fatal(err)
	}
	if *f.addr != ":8080" || *f.maxConns != 1000 || *f.debug {
		t.Errorf("defaults changed: addr=%q max-conns=%d debug=%v", *f.addr, *f.maxConns, *f.debug)
	}
}

func TestParseBadEnvValue(t *testing.T) {
	f := newTestFlags()
	_, err := Parse(f.fs, "PUSH", nil, env(map[string]string{
		"PUSH_MAX_CONNS":     "lots",
		"PUSH_WRITE_TIMEOUT": "5",
	}))
	if err == nil {
		t.Fatal("Parse succeeded, want error")
	}
	msg := err.Error()
	for _, want := range []string{"PUSH_MAX_CONNS", "-max-conns", `"lots"`, "PUSH_WRITE_TIMEOUT", "-write.timeout"} {
		if !strings.Contains(msg, want) {
			t.Errorf("error %q does not mention %s", msg, want)
		}
	}
}

func TestParseDefaultLookupIsOSEnv(t *testing.T) {
	t.Setenv("PUSHTEST_MAX_CONNS", "3")
	f := newTestFlags()
	if _, err := Parse(f.fs, "PUSHTEST", nil, nil); err != nil {
		t.Fatal(err)
	}
	if *f.maxConns != 3 {
		t.Errorf("max-conns = %d, want 3 from the process environment", *f.maxConns)
	}
}

func TestParseCommandLineError(t *testing.T) {
	f := newTestFlags()
	_, err := Parse(f.fs, "PUSH", []string{"-nope"}, env(nil))
	if err == nil || errors.Is(err, flag.ErrHelp) {
		t.Fatalf("got %v, want an unknown-flag error", err)
	}
}

func TestParseHelp(t *testing.T) {
	for _, arg := range []string{"-h", "--help", "-help"} {
		t.Run(arg, func(t *testing.T) {
			f := newTestFlags()
			_, err := Parse(f.fs, "PUSH", []string{arg}, env(nil))
			if !errors.Is(err, flag.ErrHelp) {
				t.Fatalf("got %v, want flag.ErrHelp", err)
			}
			out := f.out.String()
			if !strings.HasPrefix(out, "Usage: edge [flags]\n") {
				t.Errorf("help does not start with the default usage line:\n%s", out)
			}
			checkFlagsListed(t, out)
		})
	}
}

func TestSetUsageSurvivesParse(t *testing.T) {
	f := newTestFlags()
	SetUsage(f.fs, "PUSH", "Usage: edge [flags]  (terminates browser WebSockets)", "The edge accepts browser WebSockets\nand forwards pushes.")
	_, err := Parse(f.fs, "PUSH", []string{"-h"}, env(nil))
	if !errors.Is(err, flag.ErrHelp) {
		t.Fatalf("got %v, want flag.ErrHelp", err)
	}
	out := f.out.String()
	if !strings.HasPrefix(out, "Usage: edge [flags]  (terminates browser WebSockets)\n\nThe edge accepts browser WebSockets\nand forwards pushes.\n\n") {
		t.Errorf("custom usage line and description missing:\n%s", out)
	}
	checkFlagsListed(t, out)

	// Calling fs.Usage directly (as subcommand dispatchers do) prints the
	// same text.
	f.out.Reset()
	f.fs.Usage()
	if !strings.Contains(f.out.String(), "The edge accepts browser WebSockets") {
		t.Errorf("fs.Usage output lacks description:\n%s", f.out.String())
	}
}

// checkFlagsListed verifies every flag appears once, sorted by name, with
// its default and its variable.
func checkFlagsListed(t *testing.T, out string) {
	t.Helper()
	want := []struct{ flag, def, env string }{
		{"-addr address", `default: ":8080"`, "env: PUSH_ADDR"},
		{"-debug", "default: false", "env: PUSH_DEBUG"},
		{"-jwt.secret-file string", `default: ""`, "env: PUSH_JWT_SECRET_FILE"},
		{"-max-conns int", "default: 1000", "env: PUSH_MAX_CONNS"},
		{"-write.timeout duration", "default: 5s", "env: PUSH_WRITE_TIMEOUT"},
	}
	last := -1
	for _, w := range want {
		i := strings.Index(out, "  "+w.flag+"\n")
		if i < 0 {
			t.Errorf("help lacks flag line %q:\n%s", w.flag, out)
			continue
		}
		if i < last {
			t.Errorf("flag %s is out of order", w.flag)
		}
		last = i
		// The flag's block runs until the next flag line.
		block := out[i+len(w.flag)+3:]
		if j := strings.Index(block, "\n  -"); j >= 0 {
			block = block[:j]
		}
		for _, s := range []string{w.def, w.env} {
			if !strings.Contains(block, s) {
				t.Errorf("flag %s: help block lacks %q:\n%s", w.flag, s, block)
			}
		}
	}
	if !strings.Contains(out, "path of the HS256 secret\n    \tfile (one line)") {
		t.Errorf("multi-line usage text not indented:\n%s", out)
	}
}

func TestCustomUsageRegistryReleasesFlagSets(t *testing.T) {
	// Flag sets passed to SetUsage must not be kept alive by the registry.
	for range 100 {
		fs := flag.NewFlagSet("tmp", flag.ContinueOnError)
		fs.SetOutput(io.Discard)
		SetUsage(fs, "PUSH", "", "")
	}
	// Cleanups run asynchronously after collection; poll with GC cycles
	// rather than sleeping.
	for range 1000 {
		runtime.GC()
		custom.Lock()
		n := len(custom.sets)
		custom.Unlock()
		if n < 100 {
			return
		}
		runtime.Gosched()
	}
	t.Error("no flag set was ever released from the usage registry")
}
