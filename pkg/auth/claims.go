package auth

import (
	"encoding/json"
	"errors"
	"fmt"
	"strings"
	"time"

	"github.com/golang-jwt/jwt/v5"
)

// Claims are what a service token (a backend's or a cluster member's
// bearer token on gRPC) says about its holder.
type Claims struct {
	// Subject names the holder (sub); never empty.
	Subject string
	// Scope lists the calls the token allows, space-separated as in
	// RFC 8693 ("publish kick"); a JSON array of strings is accepted too.
	Scope string
	// Expires is exp.
	Expires time.Time
}

// ErrNoSubject means a service token has no sub: every caller must be
// nameable, for its limits and its metrics.
var ErrNoSubject = errors.New("token has no sub")

// VerifyClaims checks a service token as Verify checks a browser's (pinned
// methods, exp required and in the future, nbf and iat not in the future)
// and returns its claims instead of comparing sub with a user id.
func (v *Verifier) VerifyClaims(token string) (Claims, error) {
	var c tokenClaims
	if err := v.verify(token, &c); err != nil {
		return Claims{}, err
	}
	if c.Sub == "" {
		return Claims{}, ErrNoSubject
	}
	exp, _ := numericDate(c.Exp) // verify parsed it already
	return Claims{Subject: c.Sub, Scope: string(c.Scope), Expires: exp.Time}, nil
}

// VerifyClaims checks token with the current verifier.
func (k *Keyring) VerifyClaims(token string) (Claims, error) { return k.v.Load().VerifyClaims(token) }

// scopeClaim decodes scope from a space-separated string or an array of
// strings.
type scopeClaim string

func (s *scopeClaim) UnmarshalJSON(b []byte) error {
	if len(b) > 0 && b[0] == '[' {
		var list []string
		if err := json.Unmarshal(b, &list); err != nil {
			return err
		}
		*s = scopeClaim(strings.Join(list, " "))
		return nil
	}
	var str string
	if err := json.Unmarshal(b, &str); err != nil {
		return err
	}
	*s = scopeClaim(str)
	return nil
}

// MintScoped makes an HS256 service token for sub with the given scope,
// valid for ttl from now (a zero now means time.Now()). Cluster members
// mint their own from the cluster secret; operators mint backend tokens
// with `pushctl token --backend`.
func MintScoped(secret []byte, sub, scope string, ttl time.Duration, now time.Time) (string, error) {
	if len(secret) < MinSecretLen {
		return "", fmt.Errorf("auth: mint: secret is %d bytes, need at least %d", len(secret), MinSecretLen)
	}
	if sub == "" {
		return "", errors.New("auth: mint: empty sub")
	}
	if ttl <= 0 {
		return "", fmt.Errorf("auth: mint: ttl %v is not positive", ttl)
	}
	if now.IsZero() {
		now = time.Now()
	}
	claims := jwt.MapClaims{"sub": sub, "scope": scope, "iat": now.Unix(), "exp": now.Add(ttl).Unix()}
	s, err := jwt.NewWithClaims(jwt.SigningMethodHS256, claims).SignedString(secret)
	if err != nil {
		return "", fmt.Errorf("auth: mint token for %q: %w", sub, err)
	}
	return s, nil
}
