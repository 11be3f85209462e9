package grpcauth

import (
	"context"
	"crypto/x509"
	"errors"
	"fmt"
	"strings"
	"time"

	"google.golang.org/grpc/credentials"
	"google.golang.org/grpc/metadata"
	"google.golang.org/grpc/peer"

	"github.com/pushcluster/push/pkg/auth"
)

// identify reads the caller's credential: a bearer token if the call
// carries one (it decides alone), else a verified client certificate.
func (s *Server) identify(ctx context.Context) (*Identity, error) {
	md, _ := metadata.FromIncomingContext(ctx)
	if vals := md.Get("authorization"); len(vals) > 0 {
		v := vals[0]
		if len(v) < 7 || !strings.EqualFold(v[:7], "bearer ") {
			return nil, errors.New("authorization metadata is not \"Bearer <token>\"")
		}
		return s.identifyToken(strings.TrimSpace(v[7:]))
	}
	if p, ok := peer.FromContext(ctx); ok {
		if ti, ok := p.AuthInfo.(credentials.TLSInfo); ok && len(ti.State.VerifiedChains) > 0 && s.cas != nil {
			return s.identifyCert(ti.State.VerifiedChains)
		}
	}
	return nil, errors.New("no credentials: send a client certificate or a bearer token (authorization: Bearer <jwt>)")
}

func (s *Server) identifyToken(tok string) (*Identity, error) {
	now := time.Now()
	if id := s.tokens.get(tok, now); id != nil {
		return id, nil
	}
	id, exp, err := s.verifyToken(tok)
	if err != nil {
		return nil, err
	}
	s.tokens.put(tok, id, exp, now)
	return id, nil
}

func (s *Server) verifyToken(tok string) (*Identity, time.Time, error) {
	if s.clusterKeys != nil {
		c, err := s.clusterKeys.get().VerifyService(tok)
		if err == nil {
			if scopeLenient(c.Scope)&ScopeCluster == 0 {
				return nil, time.Time{}, fmt.Errorf("token signed with the cluster key for %q lacks scope cluster", c.Subject)
			}
			return &Identity{Name: c.Subject, Scope: scopeAll, Member: true, Via: "jwt", Expires: c.Expires}, c.Expires, nil
		}
		if s.backendKeys == nil || !errors.Is(err, auth.ErrBadSignature) && !errors.Is(err, auth.ErrMethod) {
			return nil, time.Time{}, fmt.Errorf("bearer token: %s", auth.Reason(err))
		}
	}
	if s.backendKeys == nil {
		return nil, time.Time{}, errors.New("bearer token: this port takes no bearer tokens from backends (client certificates only)")
	}
	c, err := s.backendKeys.get().VerifyService(tok)
	if err != nil {
		if errors.Is(err, auth.ErrNoSubject) {
			return nil, time.Time{}, errors.New("bearer token: no sub")
		}
		return nil, time.Time{}, fmt.Errorf("bearer token: %s", auth.Reason(err))
	}
	// A backend key never makes a member, whatever its token claims.
	return &Identity{Name: c.Subject, Scope: scopeLenient(c.Scope) &^ ScopeCluster, Via: "jwt", Expires: c.Expires}, c.Expires, nil
}

// scopeLenient reads a credential's scope: names it does not know grant
// nothing (a newer issuer's scope is not an error here).
func scopeLenient(s string) Scope {
	var out Scope
	for _, f := range strings.FieldsFunc(s, func(r rune) bool { return r == ' ' || r == ',' }) {
		if sc, err := ParseScope(f); err == nil {
			out |= sc
		}
	}
	return out
}

func (s *Server) identifyCert(chains [][]*x509.Certificate) (*Identity, error) {
	cas := s.cas.get()
	for _, ch := range chains {
		leaf, root := ch[0], ch[len(ch)-1]
		if cas.cluster.holds(root) {
			return &Identity{Name: certName(leaf), Scope: scopeAll, Member: true, Via: "mtls", Expires: leaf.NotAfter}, nil
		}
		if cas.backend.holds(root) {
			return &Identity{Name: certName(leaf), Scope: scopeLenient(strings.Join(leaf.Subject.OrganizationalUnit, " ")) &^ ScopeCluster,
				Via: "mtls", Expires: leaf.NotAfter}, nil
		}
	}
	return nil, errors.New("client certificate is from neither the backend nor the cluster CA in use")
}

func certName(c *x509.Certificate) string {
	switch {
	case c.Subject.CommonName != "":
		return c.Subject.CommonName
	case len(c.DNSNames) > 0:
		return c.DNSNames[0]
	case len(c.URIs) > 0:
		return c.URIs[0].String()
	}
	return "serial:" + c.SerialNumber.String()
}
