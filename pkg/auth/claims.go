package auth

import (
	"errors"
	"math"

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
