package edge_test

import (
	"context"
	"io"
	"log/slog"
	"os"
	"path/filepath"
	"syscall"
	"testing"
	"time"

	"google.golang.org/grpc"

	"github.com/pushcluster/push/pkg/auth"
	"github.com/pushcluster/push/pkg/edge"
	"github.com/pushcluster/push/pkg/edge/edgetest"
	"github.com/pushcluster/push/pkg/grpcauth"
	"github.com/pushcluster/push/pkg/grpcauth/certtest"
	pushv1 "github.com/pushcluster/push/proto/push/v1"
)

func cpuTime() time.Duration {
	var ru syscall.Rusage
	syscall.Getrusage(syscall.RUSAGE_SELF, &ru)
	return time.Duration(ru.Utime.Nano() + ru.Stime.Nano())
}

// BenchmarkAuthPublish measures a unary Publish to an edge (client and
// server in this process, over loopback) on an open port and under each
// credential, on one connection: ns/op is the round trip, cpu-ns/op the
// process's CPU (user + system, both ends) per publish, allocs/op both
// ends' allocations.
//
//	go test -run '^$' -bench AuthPublish -benchmem ./pkg/edge
func BenchmarkAuthPublish(b *testing.B) {
	dir := b.TempDir()
	cluster, backend := certtest.NewCA(b, "cluster"), certtest.NewCA(b, "backend")
	node := cluster.Issue(b, "node", certtest.Options{})
	cert := backend.Issue(b, "billing", certtest.Options{OU: []string{"publish"}})
	backendKey, clusterKey := filepath.Join(dir, "backend.key"), filepath.Join(dir, "cluster.key")
	os.WriteFile(backendKey, []byte("backend-secret-backend-secret-backend-secret"), 0o600)
	os.WriteFile(clusterKey, []byte("cluster-secret-cluster-secret-cluster-secret"), 0o600)
	tok, err := auth.MintScoped([]byte("backend-secret-backend-secret-backend-secret"), "billing", "publish", time.Hour, time.Time{})
	if err != nil {
		b.Fatal(err)
	}
	authed := grpcauth.Config{BackendCA: backend.CertFile, ClusterCA: cluster.CertFile,
		BackendJWTSecretFiles: backendKey, ClusterJWTSecretFiles: clusterKey,
		PublishRate: 1e9, PublishBurst: 1e9, IdentityLabels: 10}
	withTLS := func(c grpcauth.Config) grpcauth.Config { c.CertFile, c.KeyFile = node.CertFile, node.KeyFile; return c }
	for _, bc := range []struct {
		name   string
		server grpcauth.Config
		client grpcauth.ClientConfig
	}{
		{"open-plaintext", grpcauth.Config{}, grpcauth.ClientConfig{}},
		{"jwt-plaintext", grpcauth.Config{BackendJWTSecretFiles: backendKey, ClusterJWTSecretFiles: clusterKey,
			PublishRate: 1e9, PublishBurst: 1e9}, grpcauth.ClientConfig{Token: tok}},
		{"open-tls", withTLS(grpcauth.Config{}), grpcauth.ClientConfig{CA: cluster.CertFile}},
		{"jwt-tls", withTLS(authed), grpcauth.ClientConfig{CA: cluster.CertFile, Token: tok}},
		{"mtls", withTLS(authed), grpcauth.ClientConfig{CA: cluster.CertFile, Cert: cert.CertFile, Key: cert.KeyFile}},
	} {
		b.Run(bc.name, func(b *testing.B) {
			log := slog.New(slog.NewTextHandler(io.Discard, nil))
			s, err := grpcauth.NewServer(bc.server, "edge-1", log, nil)
			if err != nil {
				b.Fatal(err)
			}
			ed := edgetest.Start(b, secret, edge.Config{ID: 1, MailboxSize: 16}, s.ServerOptions()...)
			opts, err := bc.client.DialOptions(log)
			if err != nil {
				b.Fatal(err)
			}
			cc, err := grpc.NewClient(ed.GRPCAddr(), opts...)
			if err != nil {
				b.Fatal(err)
			}
			defer cc.Close()
			c := pushv1.NewPushClient(cc)
			ctx := context.Background()
			req := &pushv1.PublishRequest{UserId: "alice", Data: []byte(`{"n":1}`)}
			if _, err := c.Publish(ctx, req); err != nil { // connect, handshake
				b.Fatal(err)
			}
			b.ReportAllocs()
			b.ResetTimer()
			cpu := cpuTime()
			for range b.N {
				if _, err := c.Publish(ctx, req); err != nil {
					b.Fatal(err)
				}
			}
			b.ReportMetric(float64(cpuTime()-cpu)/float64(b.N), "cpu-ns/op")
		})
	}
}
