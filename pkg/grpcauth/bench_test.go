package grpcauth

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"os"
	"path/filepath"
	"testing"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials"
	"google.golang.org/grpc/metadata"
	"google.golang.org/grpc/peer"

	"github.com/pushcluster/push/pkg/auth"
	"github.com/pushcluster/push/pkg/grpcauth/certtest"
	pushv1 "github.com/pushcluster/push/proto/push/v1"
)

// BenchmarkAuthPublishInterceptor is the server-side cost the unary
// interceptor adds to one Publish (identify, scope, limit, metrics),
// without the network: a bearer token found in the cache (what a backend
// sending one token costs), one verified from scratch (HMAC and claims),
// and a client certificate.
//
//	go test -run '^$' -bench AuthPublishInterceptor -benchmem ./pkg/grpcauth
func BenchmarkAuthPublishInterceptor(b *testing.B) {
	dir := b.TempDir()
	cluster, backend := certtest.NewCA(b, "cluster"), certtest.NewCA(b, "backend")
	node := cluster.Issue(b, "node", certtest.Options{})
	cert := backend.Issue(b, "billing", certtest.Options{OU: []string{"publish"}})
	secret := []byte("backend-secret-backend-secret-backend-secret")
	key := filepath.Join(dir, "backend.key")
	os.WriteFile(key, secret, 0o600)
	s, err := NewServer(Config{CertFile: node.CertFile, KeyFile: node.KeyFile, BackendCA: backend.CertFile,
		ClusterCA: cluster.CertFile, BackendJWTSecretFiles: key, PublishRate: 1e12, PublishBurst: 1 << 40, IdentityLabels: 10},
		"edge-1", quiet(), nil)
	if err != nil {
		b.Fatal(err)
	}
	tok, _ := auth.MintScoped(secret, "billing", "publish", time.Hour, time.Time{})
	req := &pushv1.PublishRequest{UserId: "alice", Data: []byte("x")}
	info := &grpc.UnaryServerInfo{FullMethod: "/push.v1.Push/Publish"}
	handler := func(ctx context.Context, req any) (any, error) { return nil, nil }
	bearerCtx := metadata.NewIncomingContext(context.Background(), metadata.Pairs("authorization", "Bearer "+tok))
	certCtx := peer.NewContext(context.Background(), &peer.Peer{AuthInfo: credentials.TLSInfo{State: tls.ConnectionState{
		VerifiedChains: [][]*x509.Certificate{{cert.Cert, backend.Cert}}}}})
	run := func(b *testing.B, ctx context.Context, each func()) {
		b.ReportAllocs()
		for b.Loop() {
			each()
			if _, err := s.unary(ctx, req, info, handler); err != nil {
				b.Fatal(err)
			}
		}
	}
	b.Run("jwt-cached", func(b *testing.B) { run(b, bearerCtx, func() {}) })
	b.Run("jwt-verified", func(b *testing.B) { run(b, bearerCtx, func() { s.tokens = tokenCache{} }) })
	b.Run("mtls", func(b *testing.B) { run(b, certCtx, func() {}) })
}
