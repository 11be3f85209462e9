// Package flagenv gives the push daemons (edge, router, pushctl) one way to
// read configuration: standard library flags that can also be set through
// PUSH_* environment variables, which is what container deployments use.
// The command line always wins over the environment, and --help shows each
// flag's variable so operators never have to guess the name.
package flagenv

import (
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"runtime"
	"strings"
	"sync"
	"weak"
)

// EnvName returns the environment variable for flagName: prefix, "_", and
// the flag name upper-cased with every character other than ASCII letters
// and digits replaced by '_'. For example with prefix "PUSH", "max-conns"
// maps to PUSH_MAX_CONNS and "jwt.secret-file" to PUSH_JWT_SECRET_FILE.
// An empty prefix yields just the converted name.
func EnvName(prefix, flagName string) string {
	prefix = strings.TrimRight(prefix, "_")
	var b strings.Builder
	b.Grow(len(prefix) + 1 + len(flagName))
	if prefix != "" {
		writeUpperSnake(&b, prefix)
		b.WriteByte('_')
	}
	writeUpperSnake(&b, flagName)
	return b.String()
}

func writeUpperSnake(b *strings.Builder, s string) {
	// Iterating bytes (not runes) is deliberate: every byte of a multi-byte
	// rune becomes '_', which keeps the result a portable POSIX name.
	for i := 0; i < len(s); i++ {
		c := s[i]
		switch {
		case 'a' <= c && c <= 'z':
			b.WriteByte(c - 'a' + 'A')
		case 'A' <= c && c <= 'Z', '0' <= c && c <= '9':
			b.WriteByte(c)
		default:
			b.WriteByte('_')
		}
	}
}

// Parse parses args into fs, then, for every flag not set on the command
// line, looks up EnvName(prefix, name) with lookup (os.LookupEnv when nil)
// and sets the flag from it. It returns the remaining positional arguments.
//
// An environment variable that is set but empty is ignored, because
// orchestrators often pass empty values for "not configured" and a bool or
// int flag could not parse them. A value the flag rejects yields an error
// naming both the variable and the flag; all such errors are reported
// together so one restart fixes them all.
//
// Unless SetUsage was called for fs first, Parse installs a usage function
// with a generic usage line. On -h or --help, Parse prints usage to
// fs.Output() and returns flag.ErrHelp, so main can exit 0. fs should use
// flag.ContinueOnError; with ExitOnError the flag package exits by itself.
func Parse(fs *flag.FlagSet, prefix string, args []string, lookup func(string) (string, bool)) ([]string, error) {
	if lookup == nil {
		lookup = os.LookupEnv
	}
	if !hasCustomUsage(fs) {
		setUsage(fs, prefix, "", "")
	}
	if err := fs.Parse(args); err != nil {
		// The flag package has already printed the error and usage.
		return nil, err
	}

	onCommandLine := make(map[string]bool)
	fs.Visit(func(f *flag.Flag) { onCommandLine[f.Name] = true })

	var errs []error
	fs.VisitAll(func(f *flag.Flag) {
		if onCommandLine[f.Name] {
			return
		}
		name := EnvName(prefix, f.Name)
		val, ok := lookup(name)
		if !ok || val == "" {
			return
		}
		if err := fs.Set(f.Name, val); err != nil {
			errs = append(errs, fmt.Errorf("environment variable %s (flag -%s): invalid value %q: %w", name, f.Name, val, err))
		}
	})
	if err := errors.Join(errs...); err != nil {
		return nil, err
	}
	return fs.Args(), nil
}

// custom records which flag sets got their usage from SetUsage, so Parse
// does not overwrite a caller's usage line and description. Weak keys and a
// cleanup keep the registry from pinning flag sets in memory.
var custom struct {
	sync.Mutex
	sets map[weak.Pointer[flag.FlagSet]]struct{}
}

func markCustomUsage(fs *flag.FlagSet) {
	k := weak.Make(fs)
	custom.Lock()
	defer custom.Unlock()
	if _, ok := custom.sets[k]; ok {
		return
	}
	if custom.sets == nil {
		custom.sets = make(map[weak.Pointer[flag.FlagSet]]struct{})
	}
	custom.sets[k] = struct{}{}
	runtime.AddCleanup(fs, func(k weak.Pointer[flag.FlagSet]) {
		custom.Lock()
		delete(custom.sets, k)
		custom.Unlock()
	}, k)
}

func hasCustomUsage(fs *flag.FlagSet) bool {
	custom.Lock()
	defer custom.Unlock()
	_, ok := custom.sets[weak.Make(fs)]
	return ok
}

// SetUsage installs fs.Usage so that help prints usageLine (default
// "Usage: <name> [flags]"), then description as a paragraph if not empty,
// then every flag sorted by name with its type, usage text, default and
// environment variable. Parse installs the same layout with empty texts when
// the caller has not called SetUsage first; commands with subcommands call it
// for each subcommand's flag set.
func SetUsage(fs *flag.FlagSet, prefix, usageLine, description string) {
	setUsage(fs, prefix, usageLine, description)
	markCustomUsage(fs)
}

func setUsage(fs *flag.FlagSet, prefix, usageLine, description string) {
	if usageLine == "" {
		usageLine = fmt.Sprintf("Usage: %s [flags]", fs.Name())
	}
	description = strings.TrimSpace(description)
	fs.Usage = func() { printUsage(fs.Output(), fs, prefix, usageLine, description) }
}

func printUsage(w io.Writer, fs *flag.FlagSet, prefix, usageLine, description string) {
	var b strings.Builder
	b.WriteString(strings.TrimRight(usageLine, "\n"))
	b.WriteString("\n")
	if description != "" {
		b.WriteString("\n")
		b.WriteString(description)
		b.WriteString("\n")
	}
	b.WriteString("\nFlags (also settable from the env variable shown; command line wins):\n")
	// VisitAll walks flags in lexicographical order, which is the order
	// help promises.
	fs.VisitAll(func(f *flag.Flag) {
		typ, usage := flag.UnquoteUsage(f)
		fmt.Fprintf(&b, "  -%s", f.Name)
		if typ != "" {
			fmt.Fprintf(&b, " %s", typ)
		}
		b.WriteString("\n")
		if usage != "" {
			b.WriteString("    \t")
			b.WriteString(strings.ReplaceAll(usage, "\n", "\n    \t"))
			b.WriteString("\n")
		}
		fmt.Fprintf(&b, "    \tdefault: %s\n", formatDefault(f))
		fmt.Fprintf(&b, "    \tenv: %s\n", EnvName(prefix, f.Name))
	})
	// One write so concurrent output (e.g. log lines) cannot interleave
	// inside the help text; a failed write to stderr has nowhere to go.
	_, _ = io.WriteString(w, b.String())
}

// formatDefault quotes string defaults so an empty default is visible.
func formatDefault(f *flag.Flag) string {
	if g, ok := f.Value.(flag.Getter); ok {
		if _, isString := g.Get().(string); isString {
			return fmt.Sprintf("%q", f.DefValue)
		}
	}
	if f.DefValue == "" {
		return `""`
	}
	return f.DefValue
}
