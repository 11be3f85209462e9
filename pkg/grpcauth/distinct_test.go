package grpcauth

import (
	"errors"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials"
	"google.golang.org/grpc/status"

	"github.com/pushcluster/push/pkg/grpcauth/certtest"
)

// One CA or one secret under two paths is refused like the same path:
// every backend would be a member, or a browser token worth a backend's.
func TestSameCredentialUnderTwoPathsIsRefused(t *testing.T) {
	dir := t.TempDir()
	ca := certtest.NewCA(t, "shared")
	node := ca.Issue(t, "node", certtest.Options{})
	copyCA := filepath.Join(dir, "backend-ca.crt")
	data, err := os.ReadFile(ca.CertFile)
	if err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(copyCA, data, 0o600); err != nil {
		t.Fatal(err)
	}
	secret := func(name, v string) string {
		p := filepath.Join(dir, name)
		if err := os.WriteFile(p, []byte(v+"\n"), 0o600); err != nil {
			t.Fatal(err)
		}
		return p
	}
	backend := secret("backend.key", "0123456789abcdef0123456789abcdef-backend")
	cluster := secret("cluster.key", "0123456789abcdef0123456789abcdef-cluster")
	clusterAsBackend := secret("cluster-copy.key", "0123456789abcdef0123456789abcdef-cluster")
	tls := Config{CertFile: node.CertFile, KeyFile: node.KeyFile}
	for _, tc := range []struct {
		name string
		c    Config
		want string
	}{
		{"CA copied", func() Config { c := tls; c.ClusterCA, c.BackendCA = ca.CertFile, copyCA; return c }(), "hold the same certificate"},
		{"secret copied", func() Config {
			c := tls
			c.ClusterJWTSecretFiles, c.BackendJWTSecretFiles = cluster, backend+","+clusterAsBackend
			return c
		}(), "hold the same secret"},
	} {
		_, err := NewServer(tc.c, "edge-1", nil, nil)
		if !errors.Is(err, ErrConfig) || !strings.Contains(err.Error(), tc.want) {
			t.Fatalf("%s: %v, want ErrConfig %q", tc.name, err, tc.want)
		}
	}
	ok := tls
	ok.ClusterJWTSecretFiles, ok.BackendJWTSecretFiles = cluster, backend
	if _, err := NewServer(ok, "edge-1", nil, nil); err != nil {
		t.Fatalf("distinct secrets: %v", err)
	}
	if err := ok.CheckBrowserSecrets(secret("browser.key", "0123456789abcdef0123456789abcdef-backend")); err == nil || !strings.Contains(err.Error(), "--backend-jwt-secret-file") {
		t.Fatalf("browser secret equal to the backend one: %v", err)
	}
	if err := ok.CheckBrowserSecrets(secret("browser2.key", "0123456789abcdef0123456789abcdef-browser")); err != nil {
		t.Fatalf("distinct browser secret: %v", err)
	}
}

// A bearer token goes over plaintext to loopback addresses only.
func TestPlaintextTokenOnlyToLoopback(t *testing.T) {
	plain := credentials.CommonAuthInfo{SecurityLevel: credentials.NoSecurity}
	secure := credentials.TLSInfo{CommonAuthInfo: credentials.CommonAuthInfo{SecurityLevel: credentials.PrivacyAndIntegrity}}
	for _, tc := range []struct {
		ai   credentials.AuthInfo
		uri  string
		want codes.Code
	}{
		{plainInfo{plain}, "https://127.0.0.1:9090/push.v1.Push", codes.OK},
		{plainInfo{plain}, "https://[::1]:9090/push.v1.Push", codes.OK},
		{plainInfo{plain}, "https://localhost:9090/push.v1.Push", codes.OK},
		{plainInfo{plain}, "https://192.0.2.2:9090/push.v1.Push", codes.Unauthenticated},
		{plainInfo{plain}, "https://edge-1.push:9090/push.v1.Push", codes.Unauthenticated},
		{secure, "https://192.0.2.2:9090/push.v1.Push", codes.OK},
	} {
		if got := status.Code(plaintextTokenAllowed(tc.ai, []string{tc.uri})); got != tc.want {
			t.Errorf("%T %s: %v, want %v", tc.ai, tc.uri, got, tc.want)
		}
	}
}

type plainInfo struct{ credentials.CommonAuthInfo }

func (plainInfo) AuthType() string { return "insecure" }
