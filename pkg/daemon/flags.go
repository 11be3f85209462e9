package daemon

import (
	"errors"
	"flag"
	"fmt"
	"log/slog"
	"strings"

	"github.com/pushcluster/push/pkg/flagenv"
)

// Exit codes of every daemon (edge, router, demo), documented in the
// README.
const (
	ExitOK      = 0 // stopped after a signal (drained), or --help
	ExitFailure = 1 // failed while starting or running: a port in use, the store unreachable, …
	ExitUsage   = 2 // bad flags or arguments: nothing was started
	ExitRefused = 3 // refused to start: it disagrees with the ring store (addresses, an id already live)
)

// ExitError carries the exit code Main exits with.
type ExitError struct {
	Code int
	Err  error
}

func (e *ExitError) Error() string { return e.Err.Error() }
func (e *ExitError) Unwrap() error { return e.Err }

// Usage marks err as a usage error (ExitUsage).
func Usage(err error) error { return &ExitError{Code: ExitUsage, Err: err} }

// Refused marks err as a refusal to start (ExitRefused).
func Refused(err error) error { return &ExitError{Code: ExitRefused, Err: err} }

// ExitCode is the code a daemon exits with for err.
func ExitCode(err error) int {
	var e *ExitError
	switch {
	case err == nil, errors.Is(err, flag.ErrHelp):
		return ExitOK
	case errors.As(err, &e):
		return e.Code
	}
	return ExitFailure
}

// ParseFlags parses a daemon's command line and PUSH_* environment into fs
// (flagenv.Parse). Daemons take no positional arguments: the flag package
// stops at the first word that is not a flag, so a stray word ("edge
// stray --listen :8081") would silently leave every flag after it unset;
// it is a usage error instead.
func ParseFlags(fs *flag.FlagSet, args []string) error {
	rest, err := flagenv.Parse(fs, "PUSH", args, nil)
	switch {
	case errors.Is(err, flag.ErrHelp):
		return err
	case err != nil:
		return Usage(err)
	case len(rest) > 0:
		msg := fmt.Sprintf("unexpected argument %q: %s takes flags only (see %s --help)", rest[0], fs.Name(), fs.Name())
		if len(rest) > 1 {
			msg += fmt.Sprintf("; nothing after it was read (%q)", strings.Join(rest[1:], " "))
		}
		return Usage(errors.New(msg))
	}
	return nil
}

// LogFlags are the logging flags every daemon has.
type LogFlags struct {
	Level, Format string
}

// Bind adds --log-level and --log-format to fs.
func (l *LogFlags) Bind(fs *flag.FlagSet) {
	fs.StringVar(&l.Level, "log-level", "info", "debug, info, warn or error")
	fs.StringVar(&l.Format, "log-format", "json", "json or text")
}

// Logger builds the logger the flags name; a bad value is a usage error.
func (l *LogFlags) Logger() (*slog.Logger, error) {
	log, err := Logger(l.Level, l.Format)
	if err != nil {
		return nil, Usage(err)
	}
	return log, nil
}
