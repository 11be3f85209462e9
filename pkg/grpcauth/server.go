package grpcauth

import (
	"crypto/tls"
	"errors"
	"flag"
	"fmt"
	"log/slog"
	"net"
	"os"
	"strings"

	"github.com/prometheus/client_golang/prometheus"
	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials"

	"github.com/pushcluster/push/pkg/auth"
)

// Defaults of the flags RegisterFlags adds. A zero Config has no limits.
const (
	DefaultPublishRate    = 5000 // messages a second per identity and process
	DefaultPublishBurst   = 10000
	DefaultBroadcastRate  = 5 // broadcasts a second per identity and process
	DefaultBroadcastBurst = 10
	DefaultIdentityLabels = 50
)

// Config is the authentication of one gRPC port (an edge's or a router's).
// With nothing set the port is open: every caller is trusted as a member,
// which a daemon allows only on a loopback address or with --dev
// (CheckListen).
type Config struct {
	// CertFile and KeyFile are the port's TLS certificate and key (PEM),
	// re-read when they change. Members also present this certificate as
	// their client certificate to each other when ClusterCA is set.
	CertFile, KeyFile string
	// BackendCA verifies backends' client certificates; a certificate's OU
	// values name its scopes ("publish", "kick", ...).
	BackendCA string
	// ClusterCA verifies members' client certificates (and, when members
	// dial each other, their server certificates). Keep it apart from
	// BackendCA: a certificate from it is trusted with everything.
	ClusterCA string
	// BackendJWTSecretFiles (comma-separated HS256 secret files, the
	// current one first; later ones may be missing, for rotation) and
	// BackendJWTPublicKeys (PEM files, RS256/EdDSA) verify backends'
	// bearer tokens, whose scope claim names their calls.
	BackendJWTSecretFiles, BackendJWTPublicKeys string
	// ClusterJWTSecretFiles verify members' bearer tokens (scope
	// "cluster"); the first also signs this member's own.
	ClusterJWTSecretFiles string
	// PublishRate (messages a second) and PublishBurst, BroadcastRate and
	// BroadcastBurst bound each backend identity in this process;
	// RESOURCE_EXHAUSTED beyond. 0 rate: unlimited. Members are not limited
	// (a router limits the backends it forwards for).
	PublishRate    float64
	PublishBurst   int
	BroadcastRate  float64
	BroadcastBurst int
	// IdentityLabels caps the identity label values of the metrics;
	// identities past it are counted as "other".
	IdentityLabels int
}

// RegisterFlags adds the flags of c to fs, with their defaults.
func (c *Config) RegisterFlags(fs *flag.FlagSet) {
	fs.StringVar(&c.CertFile, "grpc-tls-cert-file", "", "PEM certificate of the gRPC port (TLS; re-read when it changes); also this member's client certificate toward other members when --cluster-ca-file is set")
	fs.StringVar(&c.KeyFile, "grpc-tls-key-file", "", "PEM private key of --grpc-tls-cert-file")
	fs.StringVar(&c.BackendCA, "backend-ca-file", "", "PEM CA of backends' client certificates (mutual TLS); a certificate's OU values name its scopes: publish, publish_multi, broadcast, kick, presence")
	fs.StringVar(&c.ClusterCA, "cluster-ca-file", "", "PEM CA of cluster members' certificates: a client certificate from it may call push.v1.Cluster and send forwarded=true; members verify each other's server certificates with it")
	fs.StringVar(&c.BackendJWTSecretFiles, "backend-jwt-secret-file", "", "comma-separated HS256 secret files verifying backends' bearer tokens (scope claim: publish publish_multi broadcast kick presence), current first; re-read when they change")
	fs.StringVar(&c.BackendJWTPublicKeys, "backend-jwt-public-keys", "", "comma-separated PEM RS256/EdDSA public keys also verifying backends' bearer tokens")
	fs.StringVar(&c.ClusterJWTSecretFiles, "cluster-jwt-secret-file", "", "comma-separated HS256 secret files of cluster members' bearer tokens (scope cluster); the first also signs this member's own")
	fs.Float64Var(&c.PublishRate, "backend-publish-rate", DefaultPublishRate, "messages a second one backend identity may publish through this process (PublishMulti counts each user); RESOURCE_EXHAUSTED beyond; 0: unlimited")
	fs.IntVar(&c.PublishBurst, "backend-publish-burst", DefaultPublishBurst, "burst of --backend-publish-rate")
	fs.Float64Var(&c.BroadcastRate, "backend-broadcast-rate", DefaultBroadcastRate, "broadcasts a second one backend identity may send through this process; 0: unlimited")
	fs.IntVar(&c.BroadcastBurst, "backend-broadcast-burst", DefaultBroadcastBurst, "burst of --backend-broadcast-rate")
	fs.IntVar(&c.IdentityLabels, "grpc-identity-labels", DefaultIdentityLabels, "identities with their own label in push_grpc_* metrics; later ones are counted as \"other\"")
}

// Enabled reports whether any caller credential is configured.
func (c *Config) Enabled() bool {
	return c.BackendCA != "" || c.ClusterCA != "" || c.BackendJWTSecretFiles != "" ||
		c.BackendJWTPublicKeys != "" || c.ClusterJWTSecretFiles != ""
}

// ErrConfig wraps every configuration error.
var ErrConfig = errors.New("invalid gRPC authentication config")

func (c *Config) validate() error {
	bad := func(format string, a ...any) error { return fmt.Errorf("%w: %s", ErrConfig, fmt.Sprintf(format, a...)) }
	switch {
	case (c.CertFile == "") != (c.KeyFile == ""):
		return bad("--grpc-tls-cert-file and --grpc-tls-key-file go together")
	case (c.BackendCA != "" || c.ClusterCA != "") && c.CertFile == "":
		return bad("client certificates (--backend-ca-file, --cluster-ca-file) need server TLS: --grpc-tls-cert-file and --grpc-tls-key-file")
	case c.Enabled() && c.ClusterCA == "" && c.ClusterJWTSecretFiles == "":
		return bad("with authentication on, members must authenticate each other too: --cluster-ca-file or --cluster-jwt-secret-file")
	case c.PublishRate < 0 || c.BroadcastRate < 0 || c.PublishBurst < 0 || c.BroadcastBurst < 0:
		return bad("rates and bursts must not be negative")
	case c.BackendCA != "" && c.BackendCA == c.ClusterCA:
		return bad("--backend-ca-file and --cluster-ca-file must differ: every backend would be a member")
	}
	return nil
}

// Server checks the calls of one gRPC server. Build it with NewServer and
// pass ServerOptions to grpc.NewServer.
type Server struct {
	cfg  Config
	name string
	log  *slog.Logger
	open bool

	cert        *watched[*tls.Certificate] // nil without TLS
	cas         *watched[*clientCAs]       // nil without client CAs
	backendKeys *watched[*auth.Verifier]   // nil without backend tokens
	clusterKeys *watched[*auth.Verifier]   // nil without cluster tokens
	clusterMint *watched[[]byte]           // the first cluster secret
	limiter     *limiter
	m           *metrics
	tokens      tokenCache
}

// NewServer loads c's files. name is this member's identity in the
// tokens it mints for itself ("edge-3", "router"); reg receives the
// push_grpc_* metrics when not nil.
func NewServer(c Config, name string, log *slog.Logger, reg prometheus.Registerer) (*Server, error) {
	if err := c.validate(); err != nil {
		return nil, err
	}
	if err := c.distinct(); err != nil {
		return nil, err
	}
	if log == nil {
		log = slog.Default()
	}
	s := &Server{cfg: c, name: name, log: log, open: !c.Enabled(),
		limiter: newLimiter(c.PublishRate, c.PublishBurst, c.BroadcastRate, c.BroadcastBurst),
		m:       newMetrics(reg, max(c.IdentityLabels, 1))}
	var err error
	if c.CertFile != "" {
		if s.cert, err = newWatched("gRPC certificate", log, loadKeyPair(c.CertFile, c.KeyFile), c.CertFile, c.KeyFile); err != nil {
			return nil, err
		}
	}
	if c.BackendCA != "" || c.ClusterCA != "" {
		paths := nonEmpty(c.BackendCA, c.ClusterCA)
		if s.cas, err = newWatched("client CAs", log, loadClientCAs(c.BackendCA, c.ClusterCA), paths...); err != nil {
			return nil, err
		}
	}
	if c.BackendJWTSecretFiles != "" || c.BackendJWTPublicKeys != "" {
		secrets, pubs := splitList(c.BackendJWTSecretFiles), splitList(c.BackendJWTPublicKeys)
		if s.backendKeys, err = newWatched("backend JWT keys", log, loadVerifier(secrets, pubs), append(secrets, pubs...)...); err != nil {
			return nil, err
		}
	}
	if c.ClusterJWTSecretFiles != "" {
		secrets := splitList(c.ClusterJWTSecretFiles)
		if s.clusterKeys, err = newWatched("cluster JWT keys", log, loadVerifier(secrets, nil), secrets...); err != nil {
			return nil, err
		}
		if s.clusterMint, err = newWatched("cluster JWT signing secret", log, func() ([]byte, error) { return auth.LoadSecret(secrets[0]) }, secrets[0]); err != nil {
			return nil, err
		}
	}
	return s, nil
}

func nonEmpty(ss ...string) []string {
	var out []string
	for _, s := range ss {
		if s != "" {
			out = append(out, s)
		}
	}
	return out
}

func splitList(s string) []string {
	var out []string
	for _, p := range strings.Split(s, ",") {
		if p = strings.TrimSpace(p); p != "" {
			out = append(out, p)
		}
	}
	return out
}

// loadVerifier reads HS256 secret files (the first must exist, later ones
// may be missing: they exist only while a rotation runs) and public keys.
func loadVerifier(secrets, pubs []string) func() (*auth.Verifier, error) {
	return func() (*auth.Verifier, error) {
		var c auth.Config
		for i, p := range secrets {
			if i > 0 {
				if _, err := os.Stat(p); errors.Is(err, os.ErrNotExist) {
					continue
				}
			}
			b, err := auth.LoadSecret(p)
			if err != nil {
				return nil, err
			}
			if i == 0 {
				c.HMACSecret = b
			} else {
				c.MoreHMACSecrets = append(c.MoreHMACSecrets, b)
			}
		}
		if len(pubs) > 0 {
			keys, err := auth.LoadPublicKeys(pubs...)
			if err != nil {
				return nil, err
			}
			c.PublicKeys = keys
		}
		return auth.NewVerifier(c)
	}
}

// Open reports whether the port takes calls without credentials.
func (s *Server) Open() bool { return s.open }

// TLS reports whether the port serves TLS.
func (s *Server) TLS() bool { return s.cert != nil }

// CheckListen refuses a port that is reachable from other hosts without
// authentication and TLS, unless dev.
func (s *Server) CheckListen(addr string, dev bool) error {
	if dev || IsLoopback(addr) {
		return nil
	}
	if s.open {
		return fmt.Errorf("%w: gRPC address %s is not loopback and no authentication is configured (--backend-ca-file, --backend-jwt-secret-file or --backend-jwt-public-keys for backends; --cluster-ca-file or --cluster-jwt-secret-file for members); --dev serves it open", ErrConfig, addr)
	}
	if s.cert == nil {
		return fmt.Errorf("%w: gRPC address %s is not loopback: it needs TLS (--grpc-tls-cert-file, --grpc-tls-key-file) so that credentials never cross the network in the clear; --dev serves it without", ErrConfig, addr)
	}
	return nil
}

// IsLoopback reports whether a listen address can be reached only from
// this host: 127.0.0.0/8, ::1 or localhost. An empty host (all
// interfaces) is not.
func IsLoopback(addr string) bool {
	host, _, err := net.SplitHostPort(addr)
	if err != nil {
		host = addr
	}
	if host == "localhost" {
		return true
	}
	ip := net.ParseIP(host)
	return ip != nil && ip.IsLoopback()
}

// ServerOptions are the options that make a grpc.Server check its calls:
// TLS when configured, and, unless the port is open, the interceptors.
func (s *Server) ServerOptions() []grpc.ServerOption {
	var o []grpc.ServerOption
	if s.cert != nil {
		o = append(o, grpc.Creds(credentials.NewTLS(s.serverTLS())))
	}
	if !s.open {
		o = append(o, grpc.ChainUnaryInterceptor(s.unary), grpc.ChainStreamInterceptor(s.stream))
	}
	return o
}

// serverTLS builds each handshake's config from the current files.
func (s *Server) serverTLS() *tls.Config {
	return &tls.Config{
		MinVersion: tls.VersionTLS12,
		GetConfigForClient: func(*tls.ClientHelloInfo) (*tls.Config, error) {
			c := &tls.Config{MinVersion: tls.VersionTLS12, NextProtos: []string{"h2"},
				Certificates: []tls.Certificate{*s.cert.get()}}
			if s.cas != nil {
				// Optional: backends may come with a bearer token
				// instead; a call with neither is refused per call.
				c.ClientAuth, c.ClientCAs = tls.VerifyClientCertIfGiven, s.cas.get().pool
			}
			return c, nil
		},
	}
}
