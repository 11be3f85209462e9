package grpcauth

import (
	"context"
	"io"
	"log/slog"
	"math/big"
	"net"
	"os"
	"testing"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials"
	"google.golang.org/grpc/peer"
	"google.golang.org/grpc/status"

	"github.com/pushcluster/push/pkg/grpcauth/certtest"
	pushv1 "github.com/pushcluster/push/proto/push/v1"
)

func quiet() *slog.Logger { return slog.New(slog.NewTextHandler(io.Discard, nil)) }

// presence answers every Presence call.
type presence struct{ pushv1.UnimplementedPushServer }

func (presence) Presence(context.Context, *pushv1.PresenceRequest) (*pushv1.PresenceResponse, error) {
	return &pushv1.PresenceResponse{}, nil
}

func serve(t *testing.T, s *Server) string {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	g := grpc.NewServer(s.ServerOptions()...)
	pushv1.RegisterPushServer(g, presence{})
	go g.Serve(ln)
	t.Cleanup(g.Stop)
	return ln.Addr().String()
}

// presenceCall makes one Presence call on a new connection and returns the
// serial of the server's certificate.
func presenceCall(t *testing.T, addr string, c ClientConfig) (*big.Int, error) {
	opts, err := c.DialOptions(quiet())
	if err != nil {
		t.Fatal(err)
	}
	cc, err := grpc.NewClient(addr, opts...)
	if err != nil {
		t.Fatal(err)
	}
	defer cc.Close()
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	var p peer.Peer
	if _, err := pushv1.NewPushClient(cc).Presence(ctx, &pushv1.PresenceRequest{}, grpc.Peer(&p)); err != nil {
		return nil, err
	}
	return p.AuthInfo.(credentials.TLSInfo).State.PeerCertificates[0].SerialNumber, nil
}

func TestCertificatesAreReloadedWithoutRestart(t *testing.T) {
	defer func(d time.Duration) { checkEvery = d }(checkEvery)
	checkEvery = 0 // look at the files on every handshake

	cluster, backend := certtest.NewCA(t, "cluster"), certtest.NewCA(t, "backend")
	first := cluster.Issue(t, "node", certtest.Options{})
	client := backend.Issue(t, "billing", certtest.Options{OU: []string{"presence"}})
	secret := t.TempDir() + "/cluster.key"
	if err := os.WriteFile(secret, []byte("cluster-secret-cluster-secret-cluster-secret"), 0o600); err != nil {
		t.Fatal(err)
	}
	s, err := NewServer(Config{CertFile: first.CertFile, KeyFile: first.KeyFile, BackendCA: backend.CertFile,
		ClusterJWTSecretFiles: secret}, "edge-1", quiet(), nil)
	if err != nil {
		t.Fatal(err)
	}
	addr := serve(t, s)
	creds := ClientConfig{CA: cluster.CertFile, Cert: client.CertFile, Key: client.KeyFile}
	if serial, err := presenceCall(t, addr, creds); err != nil || serial.Cmp(first.Cert.SerialNumber) != 0 {
		t.Fatalf("first certificate: serial %v, %v", serial, err)
	}

	// A renewed server certificate (same files) is served from the next
	// handshake on.
	second := cluster.Issue(t, "node", certtest.Options{})
	if serial, err := presenceCall(t, addr, creds); err != nil || serial.Cmp(second.Cert.SerialNumber) != 0 {
		t.Fatalf("after renewal: serial %v (want %v), %v", serial, second.Cert.SerialNumber, err)
	}

	// A half-written file keeps the certificate in use.
	if err := os.WriteFile(second.CertFile, []byte("-----BEGIN CERT"), 0o600); err != nil {
		t.Fatal(err)
	}
	if serial, err := presenceCall(t, addr, creds); err != nil || serial.Cmp(second.Cert.SerialNumber) != 0 {
		t.Fatalf("with a broken file: serial %v, %v", serial, err)
	}

	// A new backend CA replaces the old one: certificates of the old CA are
	// refused, the new CA's accepted.
	newBackend := certtest.NewCA(t, "backend2")
	newClient := newBackend.Issue(t, "billing2", certtest.Options{OU: []string{"presence"}})
	b, err := os.ReadFile(newBackend.CertFile)
	if err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(backend.CertFile, b, 0o600); err != nil {
		t.Fatal(err)
	}
	third := cluster.Issue(t, "node", certtest.Options{}) // repair the server's files
	if _, err := presenceCall(t, addr, creds); status.Code(err) != codes.Unavailable {
		t.Fatalf("a certificate of the replaced CA: %v", err)
	}
	if serial, err := presenceCall(t, addr, ClientConfig{CA: cluster.CertFile, Cert: newClient.CertFile, Key: newClient.KeyFile}); err != nil ||
		serial.Cmp(third.Cert.SerialNumber) != 0 {
		t.Fatalf("a certificate of the new CA: %v %v", serial, err)
	}
}

func TestBucket(t *testing.T) {
	now := time.Unix(1000, 0)
	l := newLimiter(10, 5, 0, 0)
	l.now = func() time.Time { return now }
	for i := range 5 {
		if !l.allow("a", Publishes, 1) {
			t.Fatalf("publish %d within the burst refused", i)
		}
	}
	if l.allow("a", Publishes, 1) {
		t.Fatal("publish past the burst allowed")
	}
	if !l.allow("b", Publishes, 5) || l.allow("b", Publishes, 1) {
		t.Fatal("b's bucket is not its own")
	}
	now = now.Add(300 * time.Millisecond) // 3 tokens back
	if !l.allow("a", Publishes, 3) || l.allow("a", Publishes, 1) {
		t.Fatal("refill at 10/s")
	}
	if l.allow("a", Publishes, 6) {
		t.Fatal("a call larger than the burst passed")
	}
	if !l.allow("a", Broadcasts, 1000) {
		t.Fatal("broadcasts are unlimited at rate 0")
	}
	now = now.Add(time.Hour)
	l.sweep(now)
	if len(l.buckets) != 0 {
		t.Fatalf("%d full buckets kept by sweep", len(l.buckets))
	}
}

func TestScope(t *testing.T) {
	s, err := ParseScope("publish,kick presence")
	if err != nil || s != ScopePublish|ScopeKick|ScopePresence || s.String() != "publish kick presence" {
		t.Fatalf("%v %q %v", s, s, err)
	}
	if _, err := ParseScope("publish pubish"); err == nil {
		t.Fatal("a misspelt scope parsed")
	}
	if scopeLenient("publish future_scope") != ScopePublish {
		t.Fatal("an unknown scope in a credential must grant nothing and refuse nothing")
	}
}

func TestIdentityLabelsAreBounded(t *testing.T) {
	m := newMetrics(nil, 2)
	if m.label("a") != "a" || m.label("b") != "b" || m.label("c") != otherLabel || m.label("a") != "a" {
		t.Fatal("labels past the cap must be \"other\"")
	}
}

// A server certificate is checked against the name dialled, IP addresses
// included (crypto/tls leaves ConnectionState.ServerName empty for them).
func TestServerNameIsVerified(t *testing.T) {
	cluster := certtest.NewCA(t, "cluster")
	node := cluster.Issue(t, "node", certtest.Options{})
	s, err := NewServer(Config{CertFile: node.CertFile, KeyFile: node.KeyFile}, "edge-1", quiet(), nil)
	if err != nil {
		t.Fatal(err)
	}
	addr := serve(t, s)
	if _, err := presenceCall(t, addr, ClientConfig{CA: cluster.CertFile}); err != nil {
		t.Fatalf("127.0.0.1 is in the certificate: %v", err)
	}
	if _, err := presenceCall(t, addr, ClientConfig{CA: cluster.CertFile, ServerName: "edge-9.example"}); status.Code(err) != codes.Unavailable {
		t.Fatalf("a name not in the certificate: %v", err)
	}
	if _, err := presenceCall(t, addr, ClientConfig{CA: cluster.CertFile, ServerName: "127.0.0.2"}); status.Code(err) != codes.Unavailable {
		t.Fatalf("an IP address not in the certificate: %v", err)
	}
}

func TestTokenCacheHoldsNoTokenPastItsExpiryOrTheTTL(t *testing.T) {
	var c tokenCache
	now := time.Unix(1000, 0)
	id := &Identity{Name: "billing"}
	c.put("a", id, now.Add(time.Second), now)
	c.put("b", id, now.Add(time.Hour), now)
	if c.get("a", now) != id || c.get("b", now) != id || c.get("c", now) != nil {
		t.Fatal("cached tokens not found")
	}
	if c.get("a", now.Add(time.Second)) != nil {
		t.Fatal("a token served past its exp")
	}
	if c.get("b", now.Add(tokenCacheTTL)) != nil {
		t.Fatal("a token trusted past the cache TTL")
	}
}
