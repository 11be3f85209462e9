package pushctl_test

import (
	"io"
	"log/slog"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/pushcluster/push/pkg/admin"
	"github.com/pushcluster/push/pkg/auth"
	"github.com/pushcluster/push/pkg/edge"
	"github.com/pushcluster/push/pkg/edge/edgetest"
	"github.com/pushcluster/push/pkg/grpcauth"
	"github.com/pushcluster/push/pkg/grpcauth/certtest"
)

const backendSecret = "pushctl-backend-secret-pushctl-backend-secret"

// pushctl mints a backend token and calls an authenticated edge with it
// over TLS, from flags and from PUSH_* variables.
func TestPublishWithBackendTokenOverTLS(t *testing.T) {
	dir := t.TempDir()
	key, clusterKey := filepath.Join(dir, "backend.key"), filepath.Join(dir, "cluster.key")
	os.WriteFile(key, []byte(backendSecret), 0o600)
	os.WriteFile(clusterKey, []byte("cluster-secret-cluster-secret-cluster-secret"), 0o600)
	ca := certtest.NewCA(t, "cluster")
	node := ca.Issue(t, "node", certtest.Options{})
	s, err := grpcauth.NewServer(grpcauth.Config{CertFile: node.CertFile, KeyFile: node.KeyFile,
		BackendJWTSecretFiles: key, ClusterJWTSecretFiles: clusterKey}, "edge-3", slog.New(slog.NewTextHandler(io.Discard, nil)), nil)
	if err != nil {
		t.Fatal(err)
	}
	addr := edgetest.Start(t, []byte(secret), edge.Config{ID: 3, DrainPeriod: time.Millisecond}, s.ServerOptions()...).GRPCAddr()

	code, tok, errOut := run(map[string]string{"PUSH_BACKEND_JWT_SECRET_FILE": key}, "token", "--scope", "publish presence", "--user", "billing", "--ttl", "5m")
	if code != 0 {
		t.Fatalf("token --scope: %d %s", code, errOut)
	}
	v, _ := auth.NewVerifier(auth.Config{HMACSecret: []byte(backendSecret)})
	if c, err := v.VerifyService(strings.TrimSpace(tok)); err != nil || c.Subject != "billing" || c.Scope != "publish presence" {
		t.Fatalf("minted backend token: %+v %v", c, err)
	}
	if code, _, errOut := run(nil, "token", "--scope", "publish cluster", "--user", "x", "--backend-jwt-secret-file", key); code != 2 || !strings.Contains(errOut, "--scope") {
		t.Fatalf("a cluster scope minted: %d %s", code, errOut)
	}
	env := map[string]string{"PUSH_GRPC_CA_FILE": ca.CertFile, "PUSH_GRPC_TOKEN": strings.TrimSpace(tok)}
	if code, out, errOut := run(env, "publish", "--grpc", addr, "--user", "bob", "--data", "1"); code != 0 || !strings.HasPrefix(out, "stored seq=1") {
		t.Fatalf("publish with the token from PUSH_GRPC_TOKEN: %d %q %q", code, out, errOut)
	}
	if code, _, errOut := run(env, "kick", "--grpc", addr, "bob"); code != 1 || !strings.Contains(errOut, "PermissionDenied") {
		t.Fatalf("kick outside the token's scope: %d %q", code, errOut)
	}
	if code, _, errOut := run(nil, "publish", "--grpc", addr, "--grpc-ca-file", ca.CertFile, "--user", "bob", "--data", "1"); code != 1 || !strings.Contains(errOut, "Unauthenticated") {
		t.Fatalf("publish without a token: %d %q", code, errOut)
	}
}

// pushctl admin sends the admin token; the daemon refuses without it.
func TestAdminCallsWithTheToken(t *testing.T) {
	tokenFile := filepath.Join(t.TempDir(), "token")
	os.WriteFile(tokenFile, []byte("admin-secret\n"), 0o600)
	drained := 0
	srv, err := admin.New(admin.Config{Addr: "127.0.0.1:0", Auth: admin.Auth{TokenFile: tokenFile},
		Extra: map[string]http.Handler{"/drain": http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
			drained++
			io.WriteString(w, "drained\n")
		})}})
	if err != nil {
		t.Fatal(err)
	}
	go srv.Serve()
	defer srv.Shutdown(t.Context())
	url := "http://" + srv.Addr().String()
	if code, _, errOut := run(nil, "admin", "--admin-url", url, "/drain"); code != 1 || !strings.Contains(errOut, "401") {
		t.Fatalf("without the token: %d %q", code, errOut)
	}
	code, out, errOut := run(map[string]string{"PUSH_ADMIN_TOKEN_FILE": tokenFile}, "admin", "--admin-url", url, "/drain")
	if code != 0 || out != "drained\n" || drained != 1 {
		t.Fatalf("with PUSH_ADMIN_TOKEN_FILE: %d %q %q", code, out, errOut)
	}
}
