package store_test

import (
	"context"
	"os"
	"path/filepath"
	"testing"
	"time"

	clientv3 "go.etcd.io/etcd/client/v3"

	"github.com/pushcluster/push/pkg/grpcauth/certtest"
	"github.com/pushcluster/push/pkg/ring"
	"github.com/pushcluster/push/pkg/store"
	"github.com/pushcluster/push/pkg/store/etcdtest"
)

// A real etcd that serves TLS only and requires a client certificate: the
// store works with the CA and a client certificate, and is refused
// without a certificate, with one from another CA, and in plaintext.
func TestEtcdWithTLSAndClientCertificates(t *testing.T) {
	ca, other := certtest.NewCA(t, "etcd"), certtest.NewCA(t, "other")
	server := ca.Issue(t, "etcd-server", certtest.Options{})
	client := ca.Issue(t, "edge-1", certtest.Options{})
	stranger := other.Issue(t, "edge-1", certtest.Options{File: "stranger"})
	srv := etcdtest.StartTLS(t, etcdtest.TLS{CertFile: server.CertFile, KeyFile: server.KeyFile, ClientCAFile: ca.CertFile})
	url := srv.URL("/push")

	open := func(sec store.EtcdSecurity) (store.Store, error) {
		st, err := store.Open(url, quiet(), store.WithEtcdSecurity(sec))
		if err != nil {
			return nil, err
		}
		t.Cleanup(func() { st.Close() })
		ctx, cancel := context.WithTimeout(context.Background(), 3*time.Second)
		defer cancel()
		_, err = st.Load(ctx)
		return st, err
	}
	good := store.EtcdSecurity{CA: ca.CertFile, Cert: client.CertFile, Key: client.KeyFile}
	st, err := open(good)
	if err != store.ErrNotFound {
		t.Fatalf("load with the CA and a client certificate: %v, want %v", err, store.ErrNotFound)
	}
	doc := &ring.Document{Version: 1, Algorithm: ring.AlgorithmBounded, Members: []ring.Member{
		{ID: 1, Name: "edge-1", WS: "127.0.0.1:8081", GRPC: "127.0.0.1:9091", Weight: 1, State: ring.StateActive}}}
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	if err := st.CompareAndSwap(ctx, 0, doc, false); err != nil {
		t.Fatalf("write over TLS: %v", err)
	}
	if d, err := st.Load(ctx); err != nil || d.Version != 1 {
		t.Fatalf("read back over TLS: %v %v", d, err)
	}

	for name, sec := range map[string]store.EtcdSecurity{
		"no client certificate":           {CA: ca.CertFile},
		"a client certificate of another": {CA: ca.CertFile, Cert: stranger.CertFile, Key: stranger.KeyFile},
		"plaintext":                       {},
		"a server CA that is not etcd's":  {CA: other.CertFile, Cert: client.CertFile, Key: client.KeyFile},
	} {
		if _, err := open(sec); err == nil || err == store.ErrNotFound {
			t.Errorf("%s: %v, want refused", name, err)
		}
	}

	// A password file without a user, and a user without one, are refused
	// before dialing.
	pw := filepath.Join(t.TempDir(), "pw")
	if err := os.WriteFile(pw, []byte("secret\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	if _, err := store.Open(url, quiet(), store.WithEtcdSecurity(store.EtcdSecurity{PasswordFile: pw})); err == nil {
		t.Error("a password file without --etcd-user was accepted")
	}
	if _, err := store.Open(url, quiet(), store.WithEtcdSecurity(store.EtcdSecurity{User: "push"})); err == nil {
		t.Error("--etcd-user without a password file was accepted")
	}
}

// etcd with authentication enabled: the store works with --etcd-user and
// its password file, and is refused without them or with a wrong password.
func TestEtcdWithUserAndPassword(t *testing.T) {
	srv := etcdtest.Start(t)
	admin, err := clientv3.New(clientv3.Config{Endpoints: []string{"http://" + srv.Endpoint}, DialTimeout: 5 * time.Second})
	if err != nil {
		t.Fatal(err)
	}
	defer admin.Close()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	for _, step := range []func() error{
		func() error { _, err := admin.UserAdd(ctx, "root", "root-password"); return err },
		func() error { _, err := admin.UserGrantRole(ctx, "root", "root"); return err },
		func() error { _, err := admin.UserAdd(ctx, "push", "push-password"); return err },
		func() error { _, err := admin.RoleAdd(ctx, "push"); return err },
		func() error {
			_, err := admin.RoleGrantPermission(ctx, "push", "/push", clientv3.GetPrefixRangeEnd("/push"), clientv3.PermissionType(clientv3.PermReadWrite))
			return err
		},
		func() error { _, err := admin.UserGrantRole(ctx, "push", "push"); return err },
		func() error { _, err := admin.AuthEnable(ctx); return err },
	} {
		if err := step(); err != nil {
			t.Fatal(err)
		}
	}
	dir := t.TempDir()
	good, bad := filepath.Join(dir, "good"), filepath.Join(dir, "bad")
	os.WriteFile(good, []byte("push-password\n"), 0o600)
	os.WriteFile(bad, []byte("guess\n"), 0o600)
	load := func(sec store.EtcdSecurity) error {
		st, err := store.Open(srv.URL("/push"), quiet(), store.WithEtcdSecurity(sec))
		if err != nil {
			return err
		}
		defer st.Close()
		lctx, lcancel := context.WithTimeout(context.Background(), 3*time.Second)
		defer lcancel()
		_, err = st.Load(lctx)
		return err
	}
	if err := load(store.EtcdSecurity{User: "push", PasswordFile: good}); err != store.ErrNotFound {
		t.Fatalf("with the user and its password: %v, want %v", err, store.ErrNotFound)
	}
	for name, sec := range map[string]store.EtcdSecurity{
		"no user":        {},
		"wrong password": {User: "push", PasswordFile: bad},
	} {
		if err := load(sec); err == nil || err == store.ErrNotFound {
			t.Errorf("%s: %v, want refused", name, err)
		}
	}
}
