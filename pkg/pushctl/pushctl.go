// Package pushctl implements the operator CLI: minting dev tokens and
// talking to the push.v1.Push service of an edge (or a router) to publish,
// broadcast, kick and ask for presence.
package pushctl

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"os"
	"strings"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/status"

	"github.com/pushcluster/push/pkg/admin"
	"github.com/pushcluster/push/pkg/auth"
	"github.com/pushcluster/push/pkg/flagenv"
	"github.com/pushcluster/push/pkg/grpcauth"
	"github.com/pushcluster/push/pkg/store"
	pushv1 "github.com/pushcluster/push/proto/push/v1"
)

// Exit codes, documented in the README.
const (
	ExitOK       = 0
	ExitFailure  = 1 // the operation failed (server error, unreachable)
	ExitUsage    = 2 // bad arguments, or a change refused (unknown id, last active member, …)
	ExitConflict = 3 // version conflict: the ring changed under a change; re-run it
)

// MaxPayloadBytes is the largest payload any edge can be set to accept
// (--max-payload-bytes at most 16 MiB): publish reads no more.
const MaxPayloadBytes = 16 << 20

// App runs commands; Stdout and Stderr are where they print, Env is looked
// up for PUSH_* variables (os.LookupEnv when nil).
type App struct {
	Stdout, Stderr io.Writer
	Env            func(string) (string, bool)
	Stdin          io.Reader // where "ring lookup" reads user ids and "publish --data -" the payload (os.Stdin when nil)
	// Context stops "listen" when it ends (default: SIGINT or SIGTERM).
	Context context.Context

	creds grpcauth.ClientConfig // --grpc-ca-file, --grpc-cert-file, --grpc-token...: toward edges and routers
	etcd  store.EtcdSecurity    // --etcd-ca-file, --etcd-cert-file, --etcd-user...: toward the ring store
}

type command struct {
	name, args, help string
	run              func(a *App, args []string) error
}

var commands []command

func init() {
	commands = []command{
		{"token", "--user U [--ttl 1h] [--scope S]", "mint a dev browser token (HS256, $PUSH_JWT_SECRET or --jwt-secret-file), or with --scope a backend token (--backend-jwt-secret-file)", (*App).token},
		{"publish", "--user U --data JSON|@FILE|- [--ttl 30s]", "publish a message to a user", (*App).publish},
		{"listen", "--user U [--last-seq N] [--epoch E]", "connect as a user through the router and print each message", (*App).listen},
		{"broadcast", "--data JSON", "send a message to every connection", (*App).broadcast},
		{"kick", "[--reason R] U...", "close every connection of the users (4004)", (*App).kick},
		{"presence", "U...", "show whether users are connected", (*App).presence},
		{"revoke", "--user U [--before TIME] | --list", "refuse a user's tokens issued before TIME (default now) on every edge; --list shows revocations in force", (*App).revoke},
		{"admin", "[--admin-url URL] PATH", "call a daemon's admin port with the admin token (e.g. /drain)", (*App).admin},
		{"ring", "SUBCOMMAND [flags] ...", "the ring store: lookup, show, simulate (read); init, add, drain, weight, remove (change)", (*App).ring},
	}
}

// usageError marks errors that exit with ExitUsage.
type usageError struct{ error }

// Main runs one command line and returns the exit code.
func (a *App) Main(args []string) int {
	if len(args) == 0 || args[0] == "-h" || args[0] == "--help" || args[0] == "help" {
		a.usage(a.Stdout)
		if len(args) == 0 {
			return ExitUsage
		}
		return ExitOK
	}
	for _, c := range commands {
		if c.name == args[0] {
			err := c.run(a, args[1:])
			code := ExitFailure
			switch {
			case err == nil, errors.Is(err, flag.ErrHelp):
				return ExitOK
			case errors.As(err, new(conflictError)):
				code = ExitConflict
			case errors.As(err, new(usageError)):
				code = ExitUsage
			}
			fmt.Fprintf(a.Stderr, "pushctl %s: %v\n", commandName(c.name, args[1:]), err)
			return code
		}
	}
	fmt.Fprintf(a.Stderr, "pushctl: unknown command %q\n\n", args[0])
	a.usage(a.Stderr)
	return ExitUsage
}

// commandName names the command in error messages: "ring add" for a ring
// subcommand, so that the message reads "pushctl ring add: …".
func commandName(name string, args []string) string {
	if name == "ring" && len(args) > 0 {
		for _, s := range ringSubcommands {
			if s.name == args[0] {
				return name + " " + s.name
			}
		}
	}
	return name
}

func (a *App) usage(w io.Writer) {
	fmt.Fprintln(w, "usage: pushctl <command> [flags]\n\ncommands:")
	for _, c := range commands {
		fmt.Fprintf(w, "  %-10s %-36s %s\n", c.name, c.args, c.help)
	}
	fmt.Fprintln(w, "\nRun 'pushctl <command> --help' for its flags. Flags also read PUSH_<FLAG> variables.")
	fmt.Fprintln(w, "Exit codes: 0 ok, 1 operation failed, 2 bad arguments or refused, 3 version conflict (the ring changed; re-run).")
}

// flags builds a command's flag set with the shared connection flags.
func (a *App) flags(name, usage string) (*flag.FlagSet, *string, *time.Duration) {
	fs := flag.NewFlagSet("pushctl "+name, flag.ContinueOnError)
	fs.SetOutput(a.Stderr)
	addr := fs.String("grpc", "127.0.0.1:9090", "push.v1.Push address of an edge or router")
	timeout := fs.Duration("timeout", 5*time.Second, "deadline for the call")
	a.creds.RegisterFlags(fs)
	flagenv.SetUsage(fs, "PUSH", "pushctl "+name+" "+usage, "")
	return fs, addr, timeout
}

func (a *App) parse(fs *flag.FlagSet, args []string) ([]string, error) {
	rest, err := flagenv.Parse(fs, "PUSH", args, a.Env)
	if err != nil && !errors.Is(err, flag.ErrHelp) {
		return nil, usageError{err}
	}
	return rest, err
}

// parseFlagsOnly is parse for commands that take no positional argument:
// a stray word would end the flags silently ("publish x --user a" would
// read no --user), so it is a usage error naming the word.
func (a *App) parseFlagsOnly(fs *flag.FlagSet, args []string) error {
	rest, err := a.parse(fs, args)
	if err != nil {
		return err
	}
	if len(rest) > 0 {
		msg := fmt.Sprintf("unexpected argument %q: %s takes flags only", rest[0], fs.Name())
		if len(rest) > 1 {
			msg += fmt.Sprintf("; nothing after it was read (%q)", strings.Join(rest[1:], " "))
		}
		return usageError{errors.New(msg)}
	}
	return nil
}

// dialOptions are the --grpc-* credentials as dial options.
func (a *App) dialOptions() ([]grpc.DialOption, error) {
	opts, err := a.creds.DialOptions(slog.New(slog.NewTextHandler(a.Stderr, &slog.HandlerOptions{Level: slog.LevelWarn})))
	if err != nil {
		return nil, usageError{err}
	}
	return opts, nil
}

func (a *App) dial(addr string, timeout time.Duration) (pushv1.PushClient, context.Context, func(), error) {
	opts, err := a.dialOptions()
	if err != nil {
		return nil, nil, nil, err
	}
	cc, err := grpc.NewClient(addr, opts...)
	if err != nil {
		return nil, nil, nil, usageError{fmt.Errorf("--grpc %q: %w", addr, err)}
	}
	ctx, cancel := context.WithTimeout(context.Background(), timeout)
	return pushv1.NewPushClient(cc), ctx, func() { cancel(); cc.Close() }, nil
}

// rpcError turns a gRPC status into a one-line message.
func rpcError(err error) error {
	if s, ok := status.FromError(err); ok {
		return fmt.Errorf("%s: %s", s.Code(), s.Message())
	}
	return err
}

func (a *App) token(args []string) error {
	fs := flag.NewFlagSet("pushctl token", flag.ContinueOnError)
	fs.SetOutput(a.Stderr)
	user := fs.String("user", "", "user id (the token's sub)")
	ttl := fs.Duration("ttl", time.Hour, "validity")
	secretFile := fs.String("jwt-secret-file", "", "file with the HS256 secret (default: $PUSH_JWT_SECRET)")
	scope := fs.String("scope", "", "mint a backend token for the gRPC API instead, --user naming the backend, with these scopes (publish publish_multi broadcast kick presence)")
	backendSecret := fs.String("backend-jwt-secret-file", "", "with --scope: the edges' and routers' --backend-jwt-secret-file (the first file signs)")
	flagenv.SetUsage(fs, "PUSH", "pushctl token --user U [--ttl 1h] [--scope S]", "Prints a browser token for development (production tokens come from your login service), or with --scope a backend token for the gRPC API.")
	if err := a.parseFlagsOnly(fs, args); err != nil {
		return err
	}
	if *scope != "" {
		if *user == "" || *ttl <= 0 {
			return usageError{errors.New("--user and a positive --ttl are required")}
		}
		sc, err := grpcauth.ParseScope(*scope)
		if err != nil || sc == 0 || sc&grpcauth.ScopeCluster != 0 {
			return usageError{fmt.Errorf("--scope %q: want some of publish, publish_multi, broadcast, kick, presence (members use their own credential)", *scope)}
		}
		files := strings.Split(*backendSecret, ",")
		if files[0] == "" {
			return usageError{errors.New("--scope needs --backend-jwt-secret-file (or PUSH_BACKEND_JWT_SECRET_FILE)")}
		}
		secret, err := auth.LoadSecret(strings.TrimSpace(files[0]))
		if err != nil {
			return err
		}
		tok, err := auth.MintScoped(secret, *user, sc.String(), *ttl, time.Now())
		if err != nil {
			return err
		}
		fmt.Fprintln(a.Stdout, tok)
		return nil
	}
	if *user == "" {
		return usageError{errors.New("--user is required")}
	}
	if *ttl <= 0 {
		return usageError{fmt.Errorf("--ttl %v must be positive", *ttl)}
	}
	secret, err := a.loadSecret(*secretFile)
	if err != nil {
		return err
	}
	tok, err := auth.Mint(secret, *user, *ttl, time.Now())
	if err != nil {
		return err
	}
	fmt.Fprintln(a.Stdout, tok)
	return nil
}

func (a *App) loadSecret(path string) ([]byte, error) {
	lookup := a.Env
	if lookup == nil {
		lookup = os.LookupEnv
	}
	return auth.LoadSecretWith(path, lookup)
}

func (a *App) publish(args []string) error {
	fs, addr, timeout := a.flags("publish", "--user U --data JSON|@FILE|-")
	user := fs.String("user", "", "user id")
	data := fs.String("data", "", "payload (JSON is embedded as-is, anything else is sent as a JSON string); @FILE reads it from a file, - from stdin (one trailing newline dropped); up to 16 MiB, the most an edge can be set to accept (--max-payload-bytes, 64 KiB by default)")
	ttl := fs.Duration("ttl", 0, "how long to keep it for a user who is not connected (0: the edge's default)")
	if err := a.parseFlagsOnly(fs, args); err != nil {
		return err
	}
	if *user == "" || *data == "" {
		return usageError{errors.New("--user and --data are required")}
	}
	if *ttl < 0 {
		return usageError{fmt.Errorf("--ttl %v must not be negative", *ttl)}
	}
	payload, err := a.readData(*data, MaxPayloadBytes)
	if err != nil {
		return err
	}
	// Round up: 500ms must not become 0, which means the edge's default.
	ttlSeconds := uint32((*ttl + time.Second - 1) / time.Second)
	c, ctx, done, err := a.dial(*addr, *timeout)
	if err != nil {
		return err
	}
	defer done()
	r, err := c.Publish(ctx, &pushv1.PublishRequest{UserId: *user, Data: payload, TtlSeconds: ttlSeconds})
	if err != nil {
		return rpcError(err)
	}
	out := strings.ToLower(strings.TrimPrefix(r.Outcome.String(), "OUTCOME_"))
	fmt.Fprintf(a.Stdout, "%s seq=%d epoch=%s connections=%d edge=%d", out, r.Seq, r.Epoch, r.Connections, r.EdgeId)
	if r.Reason != "" {
		fmt.Fprintf(a.Stdout, " reason=%q", r.Reason)
	}
	fmt.Fprintln(a.Stdout)
	if r.Outcome == pushv1.Outcome_OUTCOME_REJECTED {
		return errors.New("rejected: " + r.Reason)
	}
	return nil
}

func (a *App) broadcast(args []string) error {
	fs, addr, timeout := a.flags("broadcast", "--data JSON")
	data := fs.String("data", "", "payload")
	if err := a.parseFlagsOnly(fs, args); err != nil {
		return err
	}
	if *data == "" {
		return usageError{errors.New("--data is required")}
	}
	c, ctx, done, err := a.dial(*addr, *timeout)
	if err != nil {
		return err
	}
	defer done()
	r, err := c.Broadcast(ctx, &pushv1.BroadcastRequest{Data: []byte(*data)})
	if err != nil {
		return rpcError(err)
	}
	fmt.Fprintf(a.Stdout, "connections=%d edges=%d\n", r.Connections, r.Edges)
	return nil
}

func (a *App) kick(args []string) error {
	fs, addr, timeout := a.flags("kick", "[--reason R] U...")
	reason := fs.String("reason", "", "close reason shown to the client")
	users, err := a.parse(fs, args)
	if err != nil {
		return err
	}
	if len(users) == 0 {
		return usageError{errors.New("name at least one user")}
	}
	c, ctx, done, err := a.dial(*addr, *timeout)
	if err != nil {
		return err
	}
	defer done()
	for _, u := range users {
		r, err := c.Kick(ctx, &pushv1.KickRequest{UserId: u, Reason: *reason})
		if err != nil {
			return fmt.Errorf("%s: %w", u, rpcError(err))
		}
		fmt.Fprintf(a.Stdout, "%s\tclosed=%d\n", u, r.Connections)
	}
	return nil
}

func (a *App) presence(args []string) error {
	fs, addr, timeout := a.flags("presence", "U...")
	users, err := a.parse(fs, args)
	if err != nil {
		return err
	}
	if len(users) == 0 {
		return usageError{errors.New("name at least one user")}
	}
	c, ctx, done, err := a.dial(*addr, *timeout)
	if err != nil {
		return err
	}
	defer done()
	r, err := c.Presence(ctx, &pushv1.PresenceRequest{UserIds: users})
	if err != nil {
		return rpcError(err)
	}
	for _, p := range r.Users {
		state := "offline"
		if p.Online {
			state = "online"
		}
		fmt.Fprintf(a.Stdout, "%s\t%s\tconnections=%d\tedge=%d\n", p.UserId, state, p.Connections, p.EdgeId)
	}
	return nil
}

// admin calls a path on a daemon's admin port with the admin token: the
// edge's preStop hook runs `pushctl admin /drain` inside the pod, where
// the token file is mounted.
func (a *App) admin(args []string) error {
	fs := flag.NewFlagSet("pushctl admin", flag.ContinueOnError)
	fs.SetOutput(a.Stderr)
	base := fs.String("admin-url", "http://127.0.0.1:9100", "the daemon's admin port")
	var tok admin.Auth
	tok.RegisterFlags(fs)
	method := fs.String("method", http.MethodGet, "HTTP method")
	timeout := fs.Duration("timeout", 2*time.Minute, "deadline for the answer (/drain answers once the edge is drained)")
	flagenv.SetUsage(fs, "PUSH", "pushctl admin [--admin-url URL] PATH", "Calls PATH on the admin port with Authorization: Bearer <admin token>; prints the answer; fails on a status other than 2xx.")
	rest, err := a.parse(fs, args)
	if err != nil {
		return err
	}
	if len(rest) != 1 || !strings.HasPrefix(rest[0], "/") {
		return usageError{errors.New("name one path, e.g. /drain")}
	}
	token := tok.Token
	if tok.TokenFile != "" {
		b, err := os.ReadFile(tok.TokenFile)
		if err != nil {
			return usageError{fmt.Errorf("--admin-token-file: %w", err)}
		}
		token = strings.TrimSpace(string(b))
	}
	ctx, cancel := context.WithTimeout(context.Background(), *timeout)
	defer cancel()
	req, err := http.NewRequestWithContext(ctx, *method, strings.TrimRight(*base, "/")+rest[0], nil)
	if err != nil {
		return usageError{err}
	}
	if token != "" {
		req.Header.Set("Authorization", "Bearer "+token)
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		return err
	}
	defer resp.Body.Close()
	body, _ := io.ReadAll(io.LimitReader(resp.Body, 1<<20))
	if resp.StatusCode/100 != 2 {
		return fmt.Errorf("%s %s: %s: %s", *method, req.URL, resp.Status, strings.TrimSpace(string(body)))
	}
	_, err = a.Stdout.Write(body)
	return err
}
