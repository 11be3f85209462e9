// Package etcdtest starts a real, embedded etcd server for tests
// (go.etcd.io/etcd/server/v3/embed) on free loopback ports, so tests of the
// etcd ring store need nothing installed.
package etcdtest

import (
	"fmt"
	"net"
	"net/url"
	"path/filepath"
	"testing"
	"time"

	"go.etcd.io/etcd/server/v3/embed"
)

// Server is a running single-member etcd.
type Server struct {
	e        *embed.Etcd
	Endpoint string // host:port for clients
}

func freeURL(t testing.TB, scheme string) url.URL {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	return url.URL{Scheme: scheme, Host: l.Addr().String()}
}

// TLS is the server side of a TLS etcd: its certificate and key, and the
// CA its clients' certificates must come from (client-certificate
// authentication, etcd's --client-cert-auth).
type TLS struct {
	CertFile, KeyFile, ClientCAFile string
}

// Start runs etcd in t.TempDir() until the test ends.
func Start(t testing.TB) *Server {
	t.Helper()
	return start(t, nil)
}

// StartTLS runs etcd serving clients over TLS only, requiring a client
// certificate from tls.ClientCAFile.
func StartTLS(t testing.TB, tls TLS) *Server {
	t.Helper()
	return start(t, &tls)
}

func start(t testing.TB, tls *TLS) *Server {
	t.Helper()
	var lastErr error
	for try := 0; try < 5; try++ { // free ports can be taken between pick and bind
		cfg := embed.NewConfig()
		cfg.Name = "test"
		cfg.Dir = t.TempDir()
		cfg.LogLevel = "error"
		// Its shutdown always logs "server closed" errors: keep them out
		// of test output, beside the data.
		cfg.LogOutputs = []string{filepath.Join(cfg.Dir, "etcd.log")}
		scheme := "http"
		if tls != nil {
			scheme = "https"
			cfg.ClientTLSInfo.CertFile, cfg.ClientTLSInfo.KeyFile = tls.CertFile, tls.KeyFile
			cfg.ClientTLSInfo.TrustedCAFile, cfg.ClientTLSInfo.ClientCertAuth = tls.ClientCAFile, true
		}
		client, peer := freeURL(t, scheme), freeURL(t, "http")
		cfg.ListenClientUrls, cfg.AdvertiseClientUrls = []url.URL{client}, []url.URL{client}
		cfg.ListenPeerUrls, cfg.AdvertisePeerUrls = []url.URL{peer}, []url.URL{peer}
		cfg.InitialCluster = fmt.Sprintf("%s=%s", cfg.Name, peer.String())
		e, err := embed.StartEtcd(cfg)
		if err != nil {
			lastErr = err
			continue
		}
		select {
		case <-e.Server.ReadyNotify():
		case <-time.After(30 * time.Second):
			e.Close()
			t.Fatal("embedded etcd not ready within 30s")
		}
		s := &Server{e: e, Endpoint: client.Host}
		t.Cleanup(s.Stop)
		return s
	}
	t.Fatalf("start embedded etcd: %v", lastErr)
	return nil
}

// URL is the ring store URL for this server with the given key prefix.
func (s *Server) URL(prefix string) string { return "etcd://" + s.Endpoint + prefix }

// Stop shuts the server down (also done at the end of the test).
func (s *Server) Stop() { s.e.Close() }
