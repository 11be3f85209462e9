// Package secure_test checks the cluster's gRPC security end to end on
// loopback, with real gRPC servers, TLS and WebSockets: who may call an
// edge and a router, with which credential, how fast, and that a backend
// with a token reaches a browser through the router.
package secure_test

import (
	"context"
	"errors"
	"io"
	"log/slog"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/coder/websocket"
	"github.com/prometheus/client_golang/prometheus"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	healthpb "google.golang.org/grpc/health/grpc_health_v1"
	"google.golang.org/grpc/status"

	"github.com/pushcluster/push/pkg/auth"
	"github.com/pushcluster/push/pkg/client"
	"github.com/pushcluster/push/pkg/daemon"
	"github.com/pushcluster/push/pkg/edge"
	"github.com/pushcluster/push/pkg/edge/edgetest"
	"github.com/pushcluster/push/pkg/grpcauth"
	"github.com/pushcluster/push/pkg/grpcauth/certtest"
	"github.com/pushcluster/push/pkg/ring"
	"github.com/pushcluster/push/pkg/store"
	pushv1 "github.com/pushcluster/push/proto/push/v1"
)

var (
	browserSecret = []byte("browser-secret-browser-secret-browser-secret")
	backendSecret = []byte("backend-secret-backend-secret-backend-secret")
	clusterSecret = []byte("cluster-secret-cluster-secret-cluster-secret")
	forgedSecret  = []byte("forged-secret-forged-secret-forged-secret!!!")
)

func quiet() *slog.Logger { return slog.New(slog.NewTextHandler(io.Discard, nil)) }

// env is one cluster's credentials.
type env struct {
	clusterCA, backendCA, wrongCA *certtest.CA
	node                          certtest.Pair // edges' and routers' certificate (cluster CA)
	backendCert, wrongCert        certtest.Pair
	backendKey, clusterKey        string // secret files
}

func newEnv(t *testing.T) *env {
	e := &env{clusterCA: certtest.NewCA(t, "cluster"), backendCA: certtest.NewCA(t, "backend"), wrongCA: certtest.NewCA(t, "wrong")}
	e.node = e.clusterCA.Issue(t, "node", certtest.Options{})
	e.backendCert = e.backendCA.Issue(t, "billing", certtest.Options{OU: []string{"publish", "presence"}})
	e.wrongCert = e.wrongCA.Issue(t, "billing", certtest.Options{OU: []string{"publish"}})
	dir := t.TempDir()
	e.backendKey, e.clusterKey = filepath.Join(dir, "backend.key"), filepath.Join(dir, "cluster.key")
	writeFile(t, e.backendKey, backendSecret)
	writeFile(t, e.clusterKey, clusterSecret)
	return e
}

func (e *env) server(t *testing.T, name string, mutate func(*grpcauth.Config)) (*grpcauth.Server, *prometheus.Registry) {
	c := grpcauth.Config{CertFile: e.node.CertFile, KeyFile: e.node.KeyFile,
		BackendCA: e.backendCA.CertFile, ClusterCA: e.clusterCA.CertFile,
		BackendJWTSecretFiles: e.backendKey, ClusterJWTSecretFiles: e.clusterKey, IdentityLabels: 10}
	if mutate != nil {
		mutate(&c)
	}
	reg := prometheus.NewRegistry()
	s, err := grpcauth.NewServer(c, name, quiet(), reg)
	if err != nil {
		t.Fatal(err)
	}
	return s, reg
}

// token mints a backend token; issued is when (exp = issued + ttl).
func token(t *testing.T, secret []byte, sub, scope string, ttl time.Duration, issued time.Time) string {
	tok, err := auth.MintScoped(secret, sub, scope, ttl, issued)
	if err != nil {
		t.Fatal(err)
	}
	return tok
}

// dial connects to addr trusting the cluster CA, with extra credentials.
func (e *env) dial(t *testing.T, addr string, c grpcauth.ClientConfig) *grpc.ClientConn {
	if c.CA == "" {
		c.CA = e.clusterCA.CertFile
	}
	opts, err := c.DialOptions(quiet())
	if err != nil {
		t.Fatal(err)
	}
	cc, err := grpc.NewClient(addr, opts...)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { cc.Close() })
	return cc
}

func ctxT(t *testing.T) context.Context {
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	t.Cleanup(cancel)
	return ctx
}

// startEdge runs a standalone edge (it owns every user) whose gRPC port
// s guards.
func startEdge(t *testing.T, s *grpcauth.Server) *edgetest.Edge {
	return edgetest.Start(t, browserSecret, edge.Config{ID: 1, ClusterDial: s.ClusterDialOptions()}, s.ServerOptions()...)
}

// startRouter runs a router's gRPC forwarder over the ring in st, as
// cmd/router wires it.
func startRouter(t *testing.T, s *grpcauth.Server, st store.Store) string {
	f, err := store.Follow(ctxT(t), st, store.FollowOptions{Log: quiet()})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(f.Close)
	sdk := client.NewWithFollower(f, client.WithLogger(quiet()), client.WithDialOptions(s.ClusterDialOptions()...), client.WithForwarded())
	t.Cleanup(func() { sdk.Close() })
	g, err := daemon.NewGRPC("127.0.0.1:0", 1<<20, s.ServerOptions()...)
	if err != nil {
		t.Fatal(err)
	}
	pushv1.RegisterPushServer(g.Server, sdk.Server())
	go g.Serve()
	t.Cleanup(g.Server.Stop)
	return g.Addr().String()
}

// ringOf stores a ring of the edge and makes the edge a live member.
func ringOf(t *testing.T, ed *edgetest.Edge) store.Store {
	st, err := store.Open("file:"+filepath.Join(t.TempDir(), "ring.json"), quiet())
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { st.Close() })
	doc := &ring.Document{Version: 1, Algorithm: ring.AlgorithmBounded, Members: []ring.Member{ed.Member(1, 1)}}
	if err := st.CompareAndSwap(ctxT(t), 0, doc, false); err != nil {
		t.Fatal(err)
	}
	r, err := edge.DesiredRing(ctxT(t), st)
	if err != nil {
		t.Fatal(err)
	}
	ed.Srv.SetRing(r)
	mem, err := edge.Join(ed.Srv, st, 15*time.Second)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(mem.Close)
	return st
}

func code(err error) codes.Code { return status.Code(err) }

// checkRefusals runs every refused (and a few accepted) calls against a
// push.v1.Push port.
func checkRefusals(t *testing.T, e *env, addr string) {
	now := time.Now()
	good := token(t, backendSecret, "billing", "publish presence", time.Hour, now)
	publish := func(c grpcauth.ClientConfig, forwarded bool) error {
		_, err := pushv1.NewPushClient(e.dial(t, addr, c)).Publish(ctxT(t),
			&pushv1.PublishRequest{UserId: "alice", Data: []byte(`{"n":1}`), Forwarded: forwarded})
		return err
	}
	for _, tc := range []struct {
		name      string
		creds     grpcauth.ClientConfig
		forwarded bool
		want      codes.Code
		msg       string
	}{
		{"no credentials", grpcauth.ClientConfig{}, false, codes.Unauthenticated, "no credentials"},
		{"forged token", grpcauth.ClientConfig{Token: token(t, forgedSecret, "billing", "publish", time.Hour, now)}, false, codes.Unauthenticated, "bad signature"},
		{"expired token", grpcauth.ClientConfig{Token: token(t, backendSecret, "billing", "publish", time.Minute, now.Add(-time.Hour))}, false, codes.Unauthenticated, "expired"},
		{"not a bearer", grpcauth.ClientConfig{Token: "x"}, false, codes.Unauthenticated, "malformed"},
		{"wrong scope", grpcauth.ClientConfig{Token: token(t, backendSecret, "billing", "presence kick", time.Hour, now)}, false, codes.PermissionDenied, "needs scope \"publish\""},
		{"a backend token claiming cluster", grpcauth.ClientConfig{Token: token(t, backendSecret, "billing", "cluster", time.Hour, now)}, false, codes.PermissionDenied, "needs scope"},
		{"forwarded from a backend token", grpcauth.ClientConfig{Token: good}, true, codes.PermissionDenied, "cluster members"},
		{"forwarded from a backend certificate", grpcauth.ClientConfig{Cert: e.backendCert.CertFile, Key: e.backendCert.KeyFile}, true, codes.PermissionDenied, "cluster members"},
		{"client certificate of a wrong CA", grpcauth.ClientConfig{Cert: e.wrongCert.CertFile, Key: e.wrongCert.KeyFile}, false, codes.Unavailable, ""},
		{"token", grpcauth.ClientConfig{Token: good}, false, codes.OK, ""},
		{"backend certificate", grpcauth.ClientConfig{Cert: e.backendCert.CertFile, Key: e.backendCert.KeyFile}, false, codes.OK, ""},
		{"member certificate, forwarded", grpcauth.ClientConfig{Cert: e.node.CertFile, Key: e.node.KeyFile}, true, codes.OK, ""},
		{"member token, forwarded", grpcauth.ClientConfig{Token: token(t, clusterSecret, "edge-9", "cluster", time.Hour, now)}, true, codes.OK, ""},
	} {
		err := publish(tc.creds, tc.forwarded)
		if code(err) != tc.want || !strings.Contains(status.Convert(err).Message(), tc.msg) {
			t.Errorf("%s: %v, want %v (%q)", tc.name, err, tc.want, tc.msg)
		}
	}
	// The certificate's OU names its scopes: no kick for billing.
	_, err := pushv1.NewPushClient(e.dial(t, addr, grpcauth.ClientConfig{Cert: e.backendCert.CertFile, Key: e.backendCert.KeyFile})).
		Kick(ctxT(t), &pushv1.KickRequest{UserId: "alice"})
	if code(err) != codes.PermissionDenied {
		t.Errorf("kick with a publish/presence certificate: %v", err)
	}
	// PublishStream: checked when it opens, and a forwarded message from a
	// backend ends it.
	ps, err := pushv1.NewPushClient(e.dial(t, addr, grpcauth.ClientConfig{})).PublishStream(ctxT(t))
	if err == nil {
		_, err = ps.Recv()
	}
	if code(err) != codes.Unauthenticated && code(err) != codes.Unimplemented {
		t.Errorf("PublishStream without credentials: %v", err)
	}
	// Probes carry no credentials.
	h, err := healthpb.NewHealthClient(e.dial(t, addr, grpcauth.ClientConfig{})).Check(ctxT(t), &healthpb.HealthCheckRequest{})
	if err != nil || h.Status != healthpb.HealthCheckResponse_SERVING {
		t.Errorf("health without credentials: %v %v", h, err)
	}
}

func TestEdgeRefusesWhatItMust(t *testing.T) {
	e := newEnv(t)
	s, reg := e.server(t, "edge-1", nil)
	ed := startEdge(t, s)
	checkRefusals(t, e, ed.GRPCAddr())

	// push.v1.Cluster is for members only.
	lease := func(c grpcauth.ClientConfig) error {
		_, err := pushv1.NewClusterClient(e.dial(t, ed.GRPCAddr(), c)).LeaseStatus(ctxT(t), &pushv1.LeaseStatusRequest{MemberId: 2})
		return err
	}
	all := token(t, backendSecret, "billing", "publish publish_multi broadcast kick presence", time.Hour, time.Now())
	if err := lease(grpcauth.ClientConfig{Token: all}); code(err) != codes.PermissionDenied || !strings.Contains(err.Error(), "cluster members only") {
		t.Errorf("LeaseStatus with a backend token of every scope: %v", err)
	}
	if err := lease(grpcauth.ClientConfig{Cert: e.backendCert.CertFile, Key: e.backendCert.KeyFile}); code(err) != codes.PermissionDenied {
		t.Errorf("LeaseStatus with a backend certificate: %v", err)
	}
	if err := lease(grpcauth.ClientConfig{}); code(err) != codes.Unauthenticated {
		t.Errorf("LeaseStatus without credentials: %v", err)
	}
	if err := lease(grpcauth.ClientConfig{Cert: e.node.CertFile, Key: e.node.KeyFile}); err != nil {
		t.Errorf("LeaseStatus with a member certificate: %v", err)
	}
	if err := lease(grpcauth.ClientConfig{Token: token(t, clusterSecret, "edge-2", "cluster", time.Hour, time.Now())}); err != nil {
		t.Errorf("LeaseStatus with a member token: %v", err)
	}
	// The member's own dial options are a member credential.
	cc, err := grpc.NewClient(ed.GRPCAddr(), s.ClusterDialOptions()...)
	if err != nil {
		t.Fatal(err)
	}
	defer cc.Close()
	if _, err := pushv1.NewClusterClient(cc).LeaseStatus(ctxT(t), &pushv1.LeaseStatusRequest{MemberId: 2}); err != nil {
		t.Errorf("LeaseStatus with ClusterDialOptions: %v", err)
	}

	// A forwarded message inside a backend's PublishStream ends it.
	ps, err := pushv1.NewPushClient(e.dial(t, ed.GRPCAddr(), grpcauth.ClientConfig{Token: all})).PublishStream(ctxT(t))
	if err != nil {
		t.Fatal(err)
	}
	if err := ps.Send(&pushv1.PublishRequest{UserId: "bob", Data: []byte("1"), RequestId: 1}); err != nil {
		t.Fatal(err)
	}
	if r, err := ps.Recv(); err != nil || r.ErrorCode != 0 || r.RequestId != 1 {
		t.Fatalf("stream publish: %v %v", r, err)
	}
	ps.Send(&pushv1.PublishRequest{UserId: "bob", Data: []byte("2"), RequestId: 2, Forwarded: true})
	if _, err := ps.Recv(); code(err) != codes.PermissionDenied {
		t.Errorf("forwarded inside a backend's stream: %v", err)
	}
	if n := counter(t, reg, "push_grpc_auth_failures_total", map[string]string{"reason": "unauthenticated"}); n < 5 {
		t.Errorf("push_grpc_auth_failures_total{reason=unauthenticated} = %v", n)
	}
	if n := counter(t, reg, "push_grpc_calls_total", map[string]string{"identity": "billing", "method": "Publish", "code": "OK"}); n != 2 {
		t.Errorf("push_grpc_calls_total{billing,Publish,OK} = %v, want 2", n)
	}
}

func TestRouterRefusesWhatItMustAndForwardsToTheBrowser(t *testing.T) {
	e := newEnv(t)
	es, _ := e.server(t, "edge-1", nil)
	ed := startEdge(t, es)
	st := ringOf(t, ed)
	rs, _ := e.server(t, "router", nil)
	addr := startRouter(t, rs, st)
	checkRefusals(t, e, addr)

	// A browser on the edge; a backend with a token publishes through the
	// router, which calls the edge as a member.
	btok, err := auth.Mint(browserSecret, "carol", time.Hour, time.Time{})
	if err != nil {
		t.Fatal(err)
	}
	ws, _, err := websocket.Dial(ctxT(t), "ws://"+ed.WS()+"/ws?uid=carol&token="+btok, nil)
	if err != nil {
		t.Fatal(err)
	}
	defer ws.CloseNow()
	waitFor(t, func() bool { return ed.Srv.Presence("carol") == 1 })
	backend := pushv1.NewPushClient(e.dial(t, addr, grpcauth.ClientConfig{Token: token(t, backendSecret, "billing", "publish", time.Hour, time.Now())}))
	resp, err := backend.Publish(ctxT(t), &pushv1.PublishRequest{UserId: "carol", Data: []byte(`{"hello":"carol"}`)})
	if err != nil || resp.Outcome != pushv1.Outcome_OUTCOME_DELIVERED {
		t.Fatalf("publish through the router: %v %v", resp, err)
	}
	_, msg, err := ws.Read(ctxT(t))
	if err != nil || !strings.Contains(string(msg), `"data":{"hello":"carol"}`) {
		t.Fatalf("browser got %s, %v", msg, err)
	}
	// The SDK straight to the edge (its PublishStream), with the
	// credentials from PUSH_GRPC_* as a backend's process would have them.
	t.Setenv("PUSH_GRPC_CA_FILE", e.clusterCA.CertFile)
	t.Setenv("PUSH_GRPC_TOKEN", token(t, backendSecret, "billing", "publish", time.Hour, time.Now()))
	creds, err := client.CredentialsFromEnv()
	if err != nil {
		t.Fatal(err)
	}
	sdk, err := client.New(ctxT(t), st, client.WithLogger(quiet()), creds)
	if err != nil {
		t.Fatal(err)
	}
	defer sdk.Close()
	if r, err := sdk.Publish(ctxT(t), "carol", []byte(`{"via":"sdk"}`), 0); err != nil || r.Outcome != pushv1.Outcome_OUTCOME_DELIVERED {
		t.Fatalf("SDK publish with PUSH_GRPC_* credentials: %v %v", r, err)
	}
	if _, msg, err = ws.Read(ctxT(t)); err != nil || !strings.Contains(string(msg), `"data":{"via":"sdk"}`) {
		t.Fatalf("browser got %s, %v", msg, err)
	}
	t.Setenv("PUSH_GRPC_TOKEN", token(t, backendSecret, "billing", "presence", time.Hour, time.Now()))
	if creds, err = client.CredentialsFromEnv(); err != nil {
		t.Fatal(err)
	}
	weak, err := client.New(ctxT(t), st, client.WithLogger(quiet()), creds)
	if err != nil {
		t.Fatal(err)
	}
	defer weak.Close()
	if _, err := weak.Publish(ctxT(t), "carol", []byte("x"), 0); code(err) != codes.PermissionDenied {
		t.Fatalf("SDK publish with a presence token: %v", err)
	}

	// A broadcast needs its scope at the router, whatever the router may
	// do at the edges.
	if _, err := backend.Broadcast(ctxT(t), &pushv1.BroadcastRequest{Data: []byte("x")}); code(err) != codes.PermissionDenied {
		t.Errorf("broadcast with a publish token through the router: %v", err)
	}
}

func TestRateLimitPerIdentity(t *testing.T) {
	e := newEnv(t)
	limits := func(c *grpcauth.Config) {
		// A rate that refills nothing within the test.
		c.PublishRate, c.PublishBurst, c.BroadcastRate, c.BroadcastBurst = 0.001, 3, 0.001, 1
	}
	es, reg := e.server(t, "edge-1", limits)
	ed := startEdge(t, es)
	st := ringOf(t, ed)
	rs, rreg := e.server(t, "router", limits)
	raddr := startRouter(t, rs, st)

	for _, port := range []struct {
		name, addr string
		reg        *prometheus.Registry
	}{{"edge", ed.GRPCAddr(), reg}, {"router", raddr, rreg}} {
		tok := token(t, backendSecret, "flood", "publish publish_multi broadcast", time.Hour, time.Now())
		c := pushv1.NewPushClient(e.dial(t, port.addr, grpcauth.ClientConfig{Token: tok}))
		for i := range 3 {
			if _, err := c.Publish(ctxT(t), &pushv1.PublishRequest{UserId: "u", Data: []byte("x")}); err != nil {
				t.Fatalf("%s: publish %d within the burst: %v", port.name, i, err)
			}
		}
		_, err := c.Publish(ctxT(t), &pushv1.PublishRequest{UserId: "u", Data: []byte("x")})
		if code(err) != codes.ResourceExhausted || !strings.Contains(err.Error(), `"flood"`) {
			t.Errorf("%s: publish past the burst: %v", port.name, err)
		}
		if _, err := c.PublishMulti(ctxT(t), &pushv1.PublishMultiRequest{UserIds: []string{"a", "b"}, Data: []byte("x")}); code(err) != codes.ResourceExhausted {
			t.Errorf("%s: PublishMulti past the burst: %v", port.name, err)
		}
		if _, err := c.Broadcast(ctxT(t), &pushv1.BroadcastRequest{Data: []byte("x")}); err != nil {
			t.Errorf("%s: first broadcast: %v", port.name, err)
		}
		if _, err := c.Broadcast(ctxT(t), &pushv1.BroadcastRequest{Data: []byte("x")}); code(err) != codes.ResourceExhausted {
			t.Errorf("%s: second broadcast: %v", port.name, err)
		}
		// Another identity has its own bucket.
		other := pushv1.NewPushClient(e.dial(t, port.addr, grpcauth.ClientConfig{Cert: e.backendCert.CertFile, Key: e.backendCert.KeyFile}))
		if _, err := other.Publish(ctxT(t), &pushv1.PublishRequest{UserId: "u", Data: []byte("x")}); err != nil {
			t.Errorf("%s: another identity: %v", port.name, err)
		}
		if n := counter(t, port.reg, "push_grpc_rate_limited_total", map[string]string{"identity": "flood", "kind": "publish"}); n != 3 {
			t.Errorf("%s: push_grpc_rate_limited_total{flood,publish} = %v, want 3 (1 + a PublishMulti of 2)", port.name, n)
		}
	}

	// On a stream, each message is counted and answered on its own.
	c := pushv1.NewPushClient(e.dial(t, ed.GRPCAddr(), grpcauth.ClientConfig{Token: token(t, backendSecret, "streamer", "publish", time.Hour, time.Now())}))
	ps, err := c.PublishStream(ctxT(t))
	if err != nil {
		t.Fatal(err)
	}
	for i := uint64(1); i <= 5; i++ {
		if err := ps.Send(&pushv1.PublishRequest{UserId: "u", Data: []byte("x"), RequestId: i}); err != nil {
			t.Fatal(err)
		}
		r, err := ps.Recv()
		want := uint32(0)
		if i > 3 {
			want = uint32(codes.ResourceExhausted)
		}
		if err != nil || r.RequestId != i || r.ErrorCode != want {
			t.Fatalf("stream request %d: %v %v, want error code %d", i, r, err, want)
		}
	}
}

func TestOpenPortOnlyOnLoopbackOrDev(t *testing.T) {
	open, err := grpcauth.NewServer(grpcauth.Config{}, "edge-1", quiet(), nil)
	if err != nil {
		t.Fatal(err)
	}
	for _, a := range []string{"127.0.0.1:9090", "[::1]:9090", "localhost:9090"} {
		if err := open.CheckListen(a, false); err != nil {
			t.Errorf("%s: %v", a, err)
		}
	}
	for _, a := range []string{"0.0.0.0:9090", ":9090", "10.0.0.1:9090"} {
		if err := open.CheckListen(a, false); !errors.Is(err, grpcauth.ErrConfig) {
			t.Errorf("%s without auth: %v", a, err)
		}
		if err := open.CheckListen(a, true); err != nil {
			t.Errorf("%s with --dev: %v", a, err)
		}
	}
	e := newEnv(t)
	noTLS, err := grpcauth.NewServer(grpcauth.Config{BackendJWTSecretFiles: e.backendKey, ClusterJWTSecretFiles: e.clusterKey}, "edge-1", quiet(), nil)
	if err != nil {
		t.Fatal(err)
	}
	if err := noTLS.CheckListen("0.0.0.0:9090", false); err == nil || !strings.Contains(err.Error(), "TLS") {
		t.Errorf("tokens without TLS on 0.0.0.0: %v", err)
	}
	if _, err := grpcauth.NewServer(grpcauth.Config{BackendJWTSecretFiles: e.backendKey}, "edge-1", quiet(), nil); !errors.Is(err, grpcauth.ErrConfig) {
		t.Errorf("backend auth without a member credential: %v", err)
	}
}

// A PublishStream outlives no credential: a message after the token's exp
// ends the stream (UNAVAILABLE, so clients reopen it), and the SDK,
// reading a renewed token file, carries on over a new stream.
func TestStreamEndsWhenItsCredentialExpires(t *testing.T) {
	e := newEnv(t)
	es, _ := e.server(t, "edge-1", nil)
	ed := startEdge(t, es)
	st := ringOf(t, ed)

	short := token(t, backendSecret, "billing", "publish", 2*time.Second, time.Now())
	exp := time.Now().Add(2 * time.Second).Truncate(time.Second) // exp is in whole seconds
	ps, err := pushv1.NewPushClient(e.dial(t, ed.GRPCAddr(), grpcauth.ClientConfig{Token: short})).PublishStream(ctxT(t))
	if err != nil {
		t.Fatal(err)
	}
	if err := ps.Send(&pushv1.PublishRequest{UserId: "dave", Data: []byte("1"), RequestId: 1}); err != nil {
		t.Fatal(err)
	}
	if r, err := ps.Recv(); err != nil || r.ErrorCode != 0 {
		t.Fatalf("before exp: %v %v", r, err)
	}
	time.Sleep(time.Until(exp) + 100*time.Millisecond)
	ps.Send(&pushv1.PublishRequest{UserId: "dave", Data: []byte("2"), RequestId: 2})
	if _, err := ps.Recv(); code(err) != codes.Unavailable || !strings.Contains(err.Error(), "expired") {
		t.Fatalf("after exp: %v", err)
	}

	// The SDK with a token file renewed before the old token runs out.
	file := filepath.Join(t.TempDir(), "token")
	writeFile(t, file, []byte(token(t, backendSecret, "billing", "publish", 2*time.Second, time.Now())))
	exp = time.Now().Add(2 * time.Second).Truncate(time.Second)
	opts, err := grpcauth.ClientConfig{CA: e.clusterCA.CertFile, TokenFile: file}.DialOptions(quiet())
	if err != nil {
		t.Fatal(err)
	}
	sdk, err := client.New(ctxT(t), st, client.WithLogger(quiet()), client.WithDialOptions(opts...))
	if err != nil {
		t.Fatal(err)
	}
	defer sdk.Close()
	if _, err := sdk.Publish(ctxT(t), "dave", []byte("3"), 0); err != nil {
		t.Fatalf("SDK before exp: %v", err)
	}
	writeFile(t, file, []byte(token(t, backendSecret, "billing", "publish", time.Hour, time.Now())))
	time.Sleep(time.Until(exp) + 100*time.Millisecond)
	r, err := sdk.Publish(ctxT(t), "dave", []byte("4"), 0)
	if err != nil || r.Seq != 3 {
		t.Fatalf("SDK after the first token's exp: %v %v (want seq 3: message 2 was refused, 3 applied once)", r, err)
	}
}
