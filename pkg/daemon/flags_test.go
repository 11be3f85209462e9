package daemon

import (
	"errors"
	"flag"
	"io"
	"testing"
)

func TestParseFlags(t *testing.T) {
	for _, tc := range []struct {
		args []string
		code int
		msg  string
	}{
		{[]string{"--listen", "a"}, ExitOK, ""},
		{[]string{"--help"}, ExitOK, ""},
		{[]string{"stray"}, ExitUsage, `unexpected argument "stray": d takes flags only (see d --help)`},
		{[]string{"stray", "--listen", "a"}, ExitUsage, `unexpected argument "stray": d takes flags only (see d --help); nothing after it was read ("--listen a")`},
		{[]string{"--listen", "a", "stray"}, ExitUsage, `unexpected argument "stray": d takes flags only (see d --help)`},
		{[]string{"--nope"}, ExitUsage, "flag provided but not defined: -nope"},
	} {
		fs := flag.NewFlagSet("d", flag.ContinueOnError)
		fs.SetOutput(io.Discard)
		fs.String("listen", "", "")
		err := ParseFlags(fs, tc.args)
		if got := ExitCode(err); got != tc.code {
			t.Errorf("%q: exit code %d, want %d (%v)", tc.args, got, tc.code, err)
		}
		if tc.msg != "" && (err == nil || err.Error() != tc.msg) {
			t.Errorf("%q: %v, want %q", tc.args, err, tc.msg)
		}
	}
	if ExitCode(Refused(errors.New("x"))) != ExitRefused || ExitCode(errors.New("x")) != ExitFailure {
		t.Error("Refused or a plain error map to the wrong code")
	}
	if _, err := (&LogFlags{Level: "loud", Format: "json"}).Logger(); ExitCode(err) != ExitUsage {
		t.Errorf("a bad log level: %v", err)
	}
}
