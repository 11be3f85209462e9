package store

import (
	"crypto/tls"
	"errors"
	"flag"
	"fmt"
	"log/slog"
	"os"
	"strings"

	clientv3 "go.etcd.io/etcd/client/v3"
	"google.golang.org/grpc"

	"github.com/pushcluster/push/pkg/grpcauth"
)

// EtcdSecurity is how a process authenticates to etcd and checks it: TLS
// (the CA of etcd's server certificates, a client certificate for etcd's
// --client-cert-auth) and/or etcd's own users (--etcd-user with a password
// file). Certificates are re-read when they change. The zero value talks
// plaintext without credentials.
type EtcdSecurity struct {
	CA, Cert, Key string
	User          string
	PasswordFile  string
}

// RegisterFlags adds s's flags to fs.
func (s *EtcdSecurity) RegisterFlags(fs *flag.FlagSet) {
	fs.StringVar(&s.CA, "etcd-ca-file", "", "PEM CA of etcd's server certificates (turns TLS to etcd on)")
	fs.StringVar(&s.Cert, "etcd-cert-file", "", "PEM client certificate for etcd (--client-cert-auth; turns TLS on); re-read when it changes")
	fs.StringVar(&s.Key, "etcd-key-file", "", "PEM private key of --etcd-cert-file")
	fs.StringVar(&s.User, "etcd-user", "", "etcd user (etcd auth enabled); its password comes from --etcd-password-file")
	fs.StringVar(&s.PasswordFile, "etcd-password-file", "", "file holding the password of --etcd-user")
}

func (s EtcdSecurity) tls() bool { return s.CA != "" || s.Cert != "" }

func (s EtcdSecurity) password() (string, error) {
	if s.User == "" {
		if s.PasswordFile != "" {
			return "", errors.New("--etcd-password-file without --etcd-user")
		}
		return "", nil
	}
	if s.PasswordFile == "" {
		return "", fmt.Errorf("--etcd-user %q needs --etcd-password-file", s.User)
	}
	b, err := os.ReadFile(s.PasswordFile)
	if err != nil {
		return "", fmt.Errorf("--etcd-password-file: %w", err)
	}
	pass := strings.TrimRight(string(b), "\r\n")
	if pass == "" {
		return "", fmt.Errorf("--etcd-password-file %s is empty", s.PasswordFile)
	}
	return pass, nil
}

// Option changes how Open opens a store.
type Option func(*options)

type options struct{ etcd EtcdSecurity }

// WithEtcdSecurity sets the TLS and credentials of an etcd store (a file
// store ignores them).
func WithEtcdSecurity(s EtcdSecurity) Option { return func(o *options) { o.etcd = s } }

// config fills the security part of an etcd client's config.
func (s EtcdSecurity) config(c *clientv3.Config, log *slog.Logger) error {
	pass, err := s.password()
	if err != nil {
		return err
	}
	c.Username, c.Password = s.User, pass
	if s.tls() {
		creds, err := grpcauth.ClientCredentials(s.CA, s.Cert, s.Key, "", log)
		if err != nil {
			return fmt.Errorf("etcd TLS: %w", err)
		}
		// TLS set tells the client its endpoints are secure; the
		// credentials below, dialled after its own, do the handshake (and
		// re-read the files).
		c.TLS = &tls.Config{MinVersion: tls.VersionTLS12}
		c.DialOptions = append(c.DialOptions, grpc.WithTransportCredentials(creds))
	}
	return nil
}
