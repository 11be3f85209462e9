package auth

import (
	"encoding/json"
	"errors"
	"fmt"
	"math"
	"strings"
	"time"

	"github.com/golang-jwt/jwt/v5"
)

// Claims is what a connection keeps of the token it was verified with: its
// lifetime, so that the edge can close it when the token expires and cut it
// off when tokens issued before some time are revoked.
type Claims struct {
	// Exp is the token's exp in Unix nanoseconds. Verified tokens always
	// have one (ErrNoExpiry otherwise).
	Exp int64
	// Iat is the token's iat in Unix nanoseconds, or NoIat when the token
	// has none: such a token counts as issued before every revocation.
	Iat int64
}

// NoIat is Claims.Iat for a token without an iat claim.
const NoIat = math.MinInt64

// ErrRevoked means the token verified but its user's tokens issued before
// some time were revoked and it is one of them. Verify never returns it;
// callers that keep revocations (the edge) do, so that Reason and metrics
// treat it like the other refusals.
var ErrRevoked = errors.New("token revoked")

// lifetime converts the verified dates (exp non-nil).
func lifetime(exp, iat *jwt.NumericDate) Claims {
	c := Claims{Exp: unixNano(exp), Iat: NoIat}
	if iat != nil {
		c.Iat = unixNano(iat)
	}
	return c
}

// unixNano saturates instead of overflowing for dates outside 1678..2262
// (time.Time.UnixNano is undefined there): a token valid until the year
// 3000 is simply never closed for expiry.
func unixNano(d *jwt.NumericDate) int64 {
	s := d.Unix()
	switch {
	case s >= math.MaxInt64/int64(1e9):
		return math.MaxInt64
	case s <= math.MinInt64/int64(1e9)+1:
		return math.MinInt64 + 1
	}
	return d.UnixNano()
}

// ServiceClaims are what a service token (a backend's or a cluster member's
// bearer token on gRPC) says about its holder.
type ServiceClaims struct {
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

// VerifyService checks a service token as Verify checks a browser's (pinned
// methods, exp required and in the future, nbf and iat not in the future)
// and returns its claims instead of comparing sub with a user id.
func (v *Verifier) VerifyService(token string) (ServiceClaims, error) {
	var c tokenClaims
	if err := v.verify(token, &c); err != nil {
		return ServiceClaims{}, err
	}
	if c.Sub == "" {
		return ServiceClaims{}, ErrNoSubject
	}
	exp, _ := numericDate(c.Exp) // verify parsed it already
	return ServiceClaims{Subject: c.Sub, Scope: string(c.Scope), Expires: exp.Time}, nil
}

// VerifyService checks a service token with the current verifier.
func (k *Keyring) VerifyService(token string) (ServiceClaims, error) {
	return k.v.Load().VerifyService(token)
}

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
