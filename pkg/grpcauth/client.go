package grpcauth

import (
	"context"
	"crypto/tls"
	"errors"
	"flag"
	"fmt"
	"log/slog"
	"net"
	"net/netip"
	"net/url"
	"os"
	"strings"
	"sync"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/grpc/status"

	"github.com/pushcluster/push/pkg/auth"
)

// ClientConfig is how a backend, pushctl or the demo reaches an edge or a
// router: TLS (the CA of the servers' certificates, optionally a client
// certificate) and/or a bearer token. The zero value dials in plaintext
// with no credentials (an open, loopback cluster).
type ClientConfig struct {
	// CA verifies the servers' certificates (PEM; re-read when it
	// changes); setting it turns TLS on.
	CA string
	// Cert and Key are the client certificate (mutual TLS; re-read when
	// they change); setting them turns TLS on.
	Cert, Key string
	// TLS turns TLS on with the system's roots when CA is empty.
	TLS bool
	// ServerName overrides the name checked in the servers' certificates
	// (default: the host dialled).
	ServerName string
	// Token is a bearer JWT sent with every call; TokenFile is read
	// instead (and re-read when it changes), for tokens that are renewed.
	Token, TokenFile string
}

// RegisterFlags adds c's flags to fs (each also PUSH_<FLAG>).
func (c *ClientConfig) RegisterFlags(fs *flag.FlagSet) {
	fs.StringVar(&c.CA, "grpc-ca-file", "", "PEM CA of the edges' and routers' gRPC certificates (turns TLS on)")
	fs.StringVar(&c.Cert, "grpc-cert-file", "", "PEM client certificate for mutual TLS (turns TLS on)")
	fs.StringVar(&c.Key, "grpc-key-file", "", "PEM private key of --grpc-cert-file")
	fs.BoolVar(&c.TLS, "grpc-tls", false, "TLS with the system's roots (when --grpc-ca-file is not set)")
	fs.StringVar(&c.ServerName, "grpc-server-name", "", "name expected in the server certificate (default: the host dialled)")
	fs.StringVar(&c.Token, "grpc-token", "", "bearer JWT sent with every call (prefer $PUSH_GRPC_TOKEN or --grpc-token-file: a flag shows in ps)")
	fs.StringVar(&c.TokenFile, "grpc-token-file", "", "file holding the bearer JWT, re-read when it changes")
}

// ClientFromEnv reads a ClientConfig from PUSH_GRPC_CA_FILE, PUSH_GRPC_CERT_FILE,
// PUSH_GRPC_KEY_FILE, PUSH_GRPC_TLS, PUSH_GRPC_SERVER_NAME, PUSH_GRPC_TOKEN and
// PUSH_GRPC_TOKEN_FILE, the variables behind RegisterFlags' flags.
func ClientFromEnv(lookup func(string) (string, bool)) ClientConfig {
	if lookup == nil {
		lookup = os.LookupEnv
	}
	get := func(k string) string { v, _ := lookup("PUSH_" + k); return v }
	tlsOn := get("GRPC_TLS")
	return ClientConfig{CA: get("GRPC_CA_FILE"), Cert: get("GRPC_CERT_FILE"), Key: get("GRPC_KEY_FILE"),
		TLS: tlsOn == "1" || strings.EqualFold(tlsOn, "true"), ServerName: get("GRPC_SERVER_NAME"),
		Token: get("GRPC_TOKEN"), TokenFile: get("GRPC_TOKEN_FILE")}
}

// UsesTLS reports whether c dials with TLS.
func (c ClientConfig) UsesTLS() bool { return c.TLS || c.CA != "" || c.Cert != "" }

// DialOptions turns c into dial options; log receives reload warnings.
func (c ClientConfig) DialOptions(log *slog.Logger) ([]grpc.DialOption, error) {
	if log == nil {
		log = slog.Default()
	}
	if (c.Cert == "") != (c.Key == "") {
		return nil, errors.New("--grpc-cert-file and --grpc-key-file go together")
	}
	if c.Token != "" && c.TokenFile != "" {
		return nil, errors.New("--grpc-token and --grpc-token-file: give one")
	}
	var opts []grpc.DialOption
	if !c.UsesTLS() {
		opts = append(opts, grpc.WithTransportCredentials(insecure.NewCredentials()))
	} else {
		creds, err := ClientCredentials(c.CA, c.Cert, c.Key, c.ServerName, log)
		if err != nil {
			return nil, err
		}
		opts = append(opts, grpc.WithTransportCredentials(creds))
	}
	switch {
	case c.Token != "":
		tok := c.Token
		opts = append(opts, grpc.WithPerRPCCredentials(bearer{func() (string, error) { return tok, nil }}))
	case c.TokenFile != "":
		w, err := newWatched("bearer token", log, func() (string, error) {
			b, err := os.ReadFile(c.TokenFile)
			if err != nil {
				return "", err
			}
			if t := strings.TrimSpace(string(b)); t != "" {
				return t, nil
			}
			return "", fmt.Errorf("token file %s is empty", c.TokenFile)
		}, c.TokenFile)
		if err != nil {
			return nil, err
		}
		opts = append(opts, grpc.WithPerRPCCredentials(bearer{func() (string, error) { return w.get(), nil }}))
	}
	return opts, nil
}

// reloadingTLS is TLS toward servers verified against a CA file that may
// change (read again on use), presenting a client certificate that may
// change. crypto/tls's own verification reads RootCAs fixed at start, so
// verification is done here, against the name dialled.
type reloadingTLS struct {
	credentials.TransportCredentials // Info, Clone's base, ServerHandshake
	cert                             *watched[*tls.Certificate]
	roots                            *watched[*caSet]
	serverName                       string
}

func newReloadingTLS(cert *watched[*tls.Certificate], roots *watched[*caSet], serverName string) *reloadingTLS {
	return &reloadingTLS{TransportCredentials: credentials.NewTLS(&tls.Config{MinVersion: tls.VersionTLS12}),
		cert: cert, roots: roots, serverName: serverName}
}

func (r *reloadingTLS) ClientHandshake(ctx context.Context, authority string, raw net.Conn) (net.Conn, credentials.AuthInfo, error) {
	name := r.serverName
	if name == "" {
		name = authority
		if h, _, err := net.SplitHostPort(authority); err == nil {
			name = h
		}
	}
	c := &tls.Config{MinVersion: tls.VersionTLS12, ServerName: name}
	if r.cert != nil {
		c.GetClientCertificate = func(*tls.CertificateRequestInfo) (*tls.Certificate, error) { return r.cert.get(), nil }
	}
	if r.roots != nil {
		// Verified below against the CA as it is now, not as it was at
		// start: a CA rotation needs no restart.
		roots := r.roots.get().pool
		c.InsecureSkipVerify = true
		c.VerifyConnection = func(cs tls.ConnectionState) error {
			if err := verifyServer(cs, name, roots); err != nil {
				return fmt.Errorf("server certificate of %s: %w", name, err)
			}
			return nil
		}
	}
	return credentials.NewTLS(c).ClientHandshake(ctx, authority, raw)
}

func (r *reloadingTLS) Clone() credentials.TransportCredentials {
	c := *r
	c.TransportCredentials = r.TransportCredentials.Clone()
	return &c
}

func (r *reloadingTLS) OverrideServerName(name string) error {
	r.serverName = name
	return nil
}

// bearer sends "authorization: Bearer <token>" with every call. Plaintext
// is allowed to loopback addresses only: a daemon serves a non-loopback port only with TLS (unless
// --dev), so a plaintext token stays on this host.
type bearer struct{ token func() (string, error) }

// GetRequestMetadata adds the token. Over a connection without transport
// security it is sent only to a loopback address: a plaintext token must
// not leave this host (a mistyped --grpc, or a ring entry naming another
// machine, would hand it to whoever listens there).
func (b bearer) GetRequestMetadata(ctx context.Context, uri ...string) (map[string]string, error) {
	if ri, ok := credentials.RequestInfoFromContext(ctx); ok {
		if err := plaintextTokenAllowed(ri.AuthInfo, uri); err != nil {
			return nil, err
		}
	}
	t, err := b.token()
	if err != nil {
		return nil, err
	}
	return map[string]string{"authorization": "Bearer " + t}, nil
}

// plaintextTokenAllowed refuses a bearer token on a connection without
// transport security (ai) unless the request URI names a loopback host.
func plaintextTokenAllowed(ai credentials.AuthInfo, uri []string) error {
	if credentials.CheckSecurityLevel(ai, credentials.PrivacyAndIntegrity) == nil {
		return nil
	}
	if host := uriHost(uri); !loopbackHost(host) {
		return status.Errorf(codes.Unauthenticated, "refusing to send a bearer token without TLS to %s, which is not a loopback address: give the server's CA (--grpc-ca-file, PUSH_GRPC_CA_FILE) or --grpc-tls", host)
	}
	return nil
}

// uriHost is the host of the first request URI gRPC passes
// ("https://host:port/service").
func uriHost(uri []string) string {
	if len(uri) == 0 {
		return ""
	}
	u, err := url.Parse(uri[0])
	if err != nil {
		return ""
	}
	return u.Hostname()
}

// loopbackHost reports whether host is localhost or a loopback address.
func loopbackHost(host string) bool {
	if strings.EqualFold(host, "localhost") {
		return true
	}
	ip, err := netip.ParseAddr(host)
	return err == nil && ip.IsLoopback()
}

func (bearer) RequireTransportSecurity() bool { return false }

// ClusterDialOptions are how this member dials other members: TLS when
// its own port serves TLS (members are configured alike), verifying their
// certificates with the cluster CA (else the system's roots) and
// presenting its own certificate when there is a cluster CA; and a bearer
// token it mints from the cluster secret (scope cluster, 10 minutes,
// renewed halfway) when there is one.
func (s *Server) ClusterDialOptions() []grpc.DialOption {
	var opts []grpc.DialOption
	if s.cert == nil {
		opts = append(opts, grpc.WithTransportCredentials(insecure.NewCredentials()))
	} else {
		var roots *watched[*caSet]
		var cert *watched[*tls.Certificate]
		if s.cas != nil && s.cfg.ClusterCA != "" {
			roots = &watched[*caSet]{paths: []string{s.cfg.ClusterCA}, what: "cluster CA", log: s.log,
				load: func() (*caSet, error) { return readCAs(s.cfg.ClusterCA) }}
			roots.val, _ = readCAs(s.cfg.ClusterCA) // read by NewServer already
			cert = s.cert
		}
		opts = append(opts, grpc.WithTransportCredentials(newReloadingTLS(cert, roots, "")))
	}
	if s.clusterMint != nil {
		m := &minter{s: s}
		opts = append(opts, grpc.WithPerRPCCredentials(bearer{m.token}))
	}
	return opts
}

// clusterTokenTTL is the lifetime of the tokens a member mints for itself.
const clusterTokenTTL = 10 * time.Minute

type minter struct {
	s   *Server
	mu  sync.Mutex // guards tok, exp
	tok string
	exp time.Time
}

func (m *minter) token() (string, error) {
	m.mu.Lock()
	defer m.mu.Unlock()
	now := time.Now()
	if m.tok != "" && now.Before(m.exp.Add(-clusterTokenTTL/2)) {
		return m.tok, nil
	}
	t, err := auth.MintScoped(m.s.clusterMint.get(), m.s.name, "cluster", clusterTokenTTL, now)
	if err != nil {
		return "", fmt.Errorf("mint cluster token: %w", err)
	}
	m.tok, m.exp = t, now.Add(clusterTokenTTL)
	return t, nil
}

// ClientCredentials are the transport credentials of a client that
// re-reads its files when they change: servers verified with the CA in
// caFile (the system's roots when empty) for the name dialled (or
// serverName), and the client certificate certFile/keyFile (none when
// empty). The etcd client uses them too.
func ClientCredentials(caFile, certFile, keyFile, serverName string, log *slog.Logger) (credentials.TransportCredentials, error) {
	if log == nil {
		log = slog.Default()
	}
	if (certFile == "") != (keyFile == "") {
		return nil, errors.New("a client certificate needs both its certificate and its key file")
	}
	var cert *watched[*tls.Certificate]
	var roots *watched[*caSet]
	var err error
	if certFile != "" {
		if cert, err = newWatched("client certificate", log, loadKeyPair(certFile, keyFile), certFile, keyFile); err != nil {
			return nil, err
		}
	}
	if caFile != "" {
		if roots, err = newWatched("server CA", log, func() (*caSet, error) { return readCAs(caFile) }, caFile); err != nil {
			return nil, err
		}
	}
	return newReloadingTLS(cert, roots, serverName), nil
}
