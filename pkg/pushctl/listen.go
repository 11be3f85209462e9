package pushctl

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"math/rand/v2"
	"net"
	"net/http"
	"net/url"
	"os"
	"os/signal"
	"strconv"
	"syscall"
	"time"

	"github.com/coder/websocket"

	"github.com/pushcluster/push/pkg/auth"
	"github.com/pushcluster/push/pkg/flagenv"
)

// Close codes of docs/protocol.md that listen acts on.
const (
	closeUnauthorized = 4001
	closeReplaced     = 4002
	closeMoved        = 4003
	closeKicked       = 4004
)

// maxFrameBytes bounds one message from the edge: the largest payload an
// edge can be configured to accept (--max-payload-bytes) plus its envelope.
const maxFrameBytes = 16<<20 + 4096

// DefaultWSURL is the router's WebSocket endpoint as make run starts it.
const DefaultWSURL = "ws://127.0.0.1:8080/ws"

// listener follows one user's stream across reconnects.
type listener struct {
	a        *App
	url      string
	user     string
	token    string
	mint     func() (string, error) // nil with --token
	lastSeq  uint64
	epoch    string
	resume   bool // send last_seq (and epoch): set by --last-seq, and after the first connection
	attempts int  // failed attempts in a row, for the backoff
}

// envelope is one frame from the edge (docs/protocol.md, "Messages").
type envelope struct {
	Seq       uint64          `json:"seq"`
	Epoch     string          `json:"epoch"`
	Data      json.RawMessage `json:"data"`
	Hb        bool            `json:"hb"`
	Gap       bool            `json:"gap"`
	Broadcast bool            `json:"broadcast"`
	From      uint64          `json:"from"`
	To        *uint64         `json:"to"`
}

func (a *App) listen(args []string) error {
	fs := flag.NewFlagSet("pushctl listen", flag.ContinueOnError)
	fs.SetOutput(a.Stderr)
	user := fs.String("user", "", "user id to listen as")
	wsURL := fs.String("ws-url", DefaultWSURL, "WebSocket endpoint: the router's (or an edge's) /ws")
	token := fs.String("token", "", "token to connect with (default: a dev token minted from --jwt-secret-file or $PUSH_JWT_SECRET, fresh for every connection)")
	secretFile := fs.String("jwt-secret-file", "", "file with the HS256 secret dev tokens are minted with (default: $PUSH_JWT_SECRET)")
	ttl := fs.Duration("ttl", time.Hour, "validity of each minted token")
	lastSeq := fs.Int64("last-seq", -1, "resume after this seq of --epoch (0: from the start of what the edge still has); default: a fresh client, only what no connection has taken")
	epoch := fs.String("epoch", "", "the stream --last-seq belongs to")
	flagenv.SetUsage(fs, "PUSH", "pushctl listen --user U [--last-seq N] [--epoch E] [--token T]",
		"Connects as the user through the router, like a browser, and prints each message on stdout: "+
			"seq=N epoch=E data=PAYLOAD (a broadcast: broadcast data=PAYLOAD; a gap notice: gap epoch=E from=A to=B). "+
			"Connection events go to stderr. It follows moves (close 4003) and every other close by reconnecting with "+
			"last_seq and epoch, as the web client does, and stops on Ctrl-C (exit 0), or when the user is kicked (4004) or "+
			"replaced by a newer connection (4002) (exit 1).")
	if err := a.parseFlagsOnly(fs, args); err != nil {
		return err
	}
	if *user == "" {
		return usageError{errors.New("--user is required")}
	}
	if *epoch != "" && *lastSeq < 0 {
		return usageError{errors.New("--epoch needs --last-seq")}
	}
	u, err := url.Parse(*wsURL)
	if err != nil || (u.Scheme != "ws" && u.Scheme != "wss") || u.Host == "" {
		return usageError{fmt.Errorf("--ws-url %q: want ws://host:port/ws", *wsURL)}
	}
	l := &listener{a: a, url: *wsURL, user: *user, token: *token, epoch: *epoch}
	if *lastSeq >= 0 {
		l.lastSeq, l.resume = uint64(*lastSeq), true
	}
	if l.token == "" {
		secret, err := a.loadSecret(*secretFile)
		if err != nil {
			return usageError{fmt.Errorf("no --token, and no secret to mint one: %w", err)}
		}
		l.mint = func() (string, error) { return auth.Mint(secret, *user, *ttl, time.Now()) }
	}
	ctx := a.Context
	if ctx == nil {
		var stop context.CancelFunc
		ctx, stop = signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
		defer stop()
	}
	return l.run(ctx)
}

// run connects, reads and reconnects until ctx ends (nil) or the server
// ends the session for good.
func (l *listener) run(ctx context.Context) error {
	for {
		code, reason, opened, err := l.session(ctx)
		if ctx.Err() != nil {
			fmt.Fprintln(l.a.Stderr, "# stopped")
			return nil
		}
		if err != nil {
			return err
		}
		var delay time.Duration
		switch code {
		case closeKicked:
			return fmt.Errorf("kicked (close %d %q): not reconnecting", code, reason)
		case closeReplaced:
			return fmt.Errorf("replaced by a newer connection of %s (close %d): not reconnecting", l.user, code)
		case closeMoved, int(websocket.StatusGoingAway):
			// A new owner, or a draining edge: resume at once, spread a
			// little like the web client.
			l.attempts = 0
			delay = time.Duration(rand.Int64N(int64(200 * time.Millisecond)))
		default:
			if opened {
				l.attempts = 0
			}
			delay = backoff(l.attempts)
			l.attempts++
		}
		fmt.Fprintf(l.a.Stderr, "# %s: reconnecting in %v with last_seq=%d epoch=%s\n", describeClose(code, reason), delay.Round(time.Millisecond), l.lastSeq, l.epochOrNone())
		select {
		case <-ctx.Done():
			fmt.Fprintln(l.a.Stderr, "# stopped")
			return nil
		case <-time.After(delay):
		}
	}
}

func (l *listener) epochOrNone() string {
	if l.epoch == "" {
		return "-"
	}
	return l.epoch
}

// backoff is the wait after the n-th failed attempt in a row: 100ms
// doubling up to 5s, with jitter.
func backoff(n int) time.Duration {
	d := 100 * time.Millisecond << min(n, 6)
	d = min(d, 5*time.Second)
	return d/2 + time.Duration(rand.Int64N(int64(d/2)+1))
}

func describeClose(code int, reason string) string {
	switch code {
	case -1:
		return "connection lost"
	case closeMoved:
		return fmt.Sprintf("moved (close %d)", code)
	case int(websocket.StatusGoingAway):
		return fmt.Sprintf("edge going away (close %d)", code)
	}
	if reason != "" {
		return fmt.Sprintf("closed (%d %q)", code, reason)
	}
	return fmt.Sprintf("closed (%d)", code)
}

// session is one connection: it returns the close code (-1 when the
// connection ended without one, or could not be made), whether it opened,
// and an error only when listening cannot go on.
func (l *listener) session(ctx context.Context) (code int, reason string, opened bool, err error) {
	tok := l.token
	if l.mint != nil {
		if tok, err = l.mint(); err != nil {
			return 0, "", false, err
		}
	}
	q := url.Values{"uid": {l.user}, "token": {tok}}
	if l.resume {
		q.Set("last_seq", strconv.FormatUint(l.lastSeq, 10))
		if l.epoch != "" {
			q.Set("epoch", l.epoch)
		}
	}
	dctx, cancel := context.WithTimeout(ctx, 10*time.Second)
	c, resp, err := websocket.Dial(dctx, l.url+"?"+q.Encode(), nil)
	cancel()
	if err != nil {
		if ctx.Err() != nil {
			return -1, "", false, nil
		}
		if resp != nil && resp.StatusCode == http.StatusUnauthorized {
			return 0, "", false, fmt.Errorf("%s refused the token for %s (HTTP 401): check --token, or that the secret is the cluster's", l.url, l.user)
		}
		fmt.Fprintf(l.a.Stderr, "# connect %s: %v\n", l.url, dialError(err, resp))
		return -1, "", false, nil
	}
	defer c.CloseNow()
	c.SetReadLimit(maxFrameBytes)
	l.resume = true // from now on every reconnect says where it is
	fmt.Fprintf(l.a.Stderr, "# connected to %s as %s\n", l.url, l.user)
	for {
		_, b, err := c.Read(ctx)
		if err != nil {
			if ctx.Err() != nil {
				c.Close(websocket.StatusNormalClosure, "bye")
				return -1, "", true, nil
			}
			var ce websocket.CloseError
			if errors.As(err, &ce) {
				if ce.Code == closeUnauthorized && l.mint == nil {
					return 0, "", true, fmt.Errorf("the edge closed with %d (unauthorized): the token is no longer accepted", ce.Code)
				}
				return int(ce.Code), ce.Reason, true, nil
			}
			return -1, "", true, nil
		}
		l.print(b)
	}
}

// dialError is the part of a failed dial worth a line: the HTTP status,
// or the network error (the request URL, token included, is left out).
func dialError(err error, resp *http.Response) string {
	if resp != nil {
		return "HTTP " + resp.Status
	}
	var op *net.OpError
	if errors.As(err, &op) {
		return op.Error()
	}
	return err.Error()
}

// print writes one frame and advances the stream position.
func (l *listener) print(b []byte) {
	var v envelope
	if err := json.Unmarshal(b, &v); err != nil {
		fmt.Fprintf(l.a.Stdout, "unparsed %s\n", b)
		return
	}
	w := l.a.Stdout
	switch {
	case v.Hb:
	case v.Gap:
		to := "end (the stream ended on an edge that stopped)"
		if v.To != nil {
			to = strconv.FormatUint(*v.To, 10)
		}
		fmt.Fprintf(w, "gap epoch=%s from=%d to=%s\n", v.Epoch, v.From, to)
	case v.Broadcast:
		fmt.Fprintf(w, "broadcast data=%s\n", compact(v.Data))
	default:
		if v.Epoch == l.epoch && v.Seq <= l.lastSeq {
			return // a duplicate after a resume
		}
		l.epoch, l.lastSeq = v.Epoch, v.Seq
		fmt.Fprintf(w, "seq=%d epoch=%s data=%s\n", v.Seq, v.Epoch, compact(v.Data))
	}
}

func compact(raw json.RawMessage) []byte {
	var b bytes.Buffer
	if json.Compact(&b, raw) != nil {
		return raw
	}
	return b.Bytes()
}

// readData resolves publish's --data: "@path" reads a file, "-" reads
// stdin, anything else is the payload. At most limit bytes are accepted.
func (a *App) readData(data string, limit int) ([]byte, error) {
	var r io.Reader
	var from string
	switch {
	case data == "-":
		r, from = a.stdin(), "stdin"
	case data == "@":
		return nil, usageError{errors.New("--data @ names no file: @FILE reads the payload from FILE")}
	case len(data) > 1 && data[0] == '@':
		f, err := os.Open(data[1:])
		if err != nil {
			return nil, usageError{fmt.Errorf("--data %s: %w", data, err)}
		}
		defer f.Close()
		if fi, err := f.Stat(); err == nil && fi.IsDir() {
			return nil, usageError{fmt.Errorf("--data %s: %s is a directory", data, data[1:])}
		}
		r, from = f, data[1:]
	default:
		if len(data) > limit {
			return nil, usageError{fmt.Errorf("--data is %d bytes: no edge accepts more than %d", len(data), limit)}
		}
		return []byte(data), nil
	}
	b, err := io.ReadAll(io.LimitReader(r, int64(limit)+1))
	if err != nil {
		return nil, fmt.Errorf("--data: read %s: %w", from, err)
	}
	if len(b) > limit {
		return nil, usageError{fmt.Errorf("--data: %s holds more than %d bytes: no edge accepts more", from, limit)}
	}
	b = bytes.TrimSuffix(b, []byte("\n")) // echo and editors end files with one
	if len(b) == 0 {
		return nil, usageError{fmt.Errorf("--data: %s is empty", from)}
	}
	return b, nil
}
