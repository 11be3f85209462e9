package auth

import (
	"crypto"
	"crypto/ed25519"
	"crypto/rand"
	"errors"
	"fmt"
	"strings"
	"testing"
	"time"

	"github.com/golang-jwt/jwt/v5"
)

// VerifyClaims returns the token's exp and iat, the same on the HS256 fast
// path, through golang-jwt, and through a Keyring.
func TestVerifyClaimsReturnsLifetime(t *testing.T) {
	secret := []byte(strings.Repeat("k", 40))
	now := time.Unix(1_800_000_000, 0)
	pub, priv, err := ed25519.GenerateKey(rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	v, err := NewVerifier(Config{HMACSecret: secret, PublicKeys: []crypto.PublicKey{pub}, Now: func() time.Time { return now }})
	if err != nil {
		t.Fatal(err)
	}
	n := now.Unix()
	withIat := handmade(secret, `{"alg":"HS256","typ":"JWT"}`, fmt.Sprintf(`{"sub":"u","iat":%d,"exp":%d}`, n-10, n+60))
	fractional := handmade(secret, `{"alg":"HS256"}`, fmt.Sprintf(`{"sub":"u","iat":%d.5,"exp":%d.25}`, n-10, n+60))
	noIat := handmade(secret, `{"alg":"HS256","typ":"JWT"}`, fmt.Sprintf(`{"sub":"u","exp":%d}`, n+60))
	slowHeader := handmade(secret, `{"typ":"JWT","alg":"HS256","kid":"a"}`, fmt.Sprintf(`{"sub":"u","iat":%d,"exp":%d}`, n-10, n+60))
	ed, err := jwt.NewWithClaims(jwt.SigningMethodEdDSA, jwt.MapClaims{"sub": "u", "iat": n - 10, "exp": n + 60}).SignedString(priv)
	if err != nil {
		t.Fatal(err)
	}
	sec := func(s int64) int64 { return s * int64(time.Second) }
	for name, c := range map[string]struct {
		tok      string
		exp, iat int64
	}{
		"fast path": {withIat, sec(n + 60), sec(n - 10)},
		// Whole seconds, as golang-jwt's NumericDate (jwt.TimePrecision)
		// and so as the handshake's own checks.
		"fractional dates": {fractional, sec(n + 60), sec(n - 10)},
		"no iat":           {noIat, sec(n + 60), NoIat},
		"golang-jwt HS256": {slowHeader, sec(n + 60), sec(n - 10)},
		"golang-jwt EdDSA": {ed, sec(n + 60), sec(n - 10)},
	} {
		for via, verify := range map[string]TokenVerifier{"verifier": v, "keyring": NewKeyring(v)} {
			got, err := verify.VerifyClaims(c.tok, "u")
			if err != nil {
				t.Fatalf("%s via %s: %v", name, via, err)
			}
			if got.Exp != c.exp || got.Iat != c.iat {
				t.Errorf("%s via %s: exp %d iat %d, want %d %d", name, via, got.Exp, got.Iat, c.exp, c.iat)
			}
		}
	}
	if got, err := v.VerifyClaims(withIat, "someone-else"); !errors.Is(err, ErrSubjectMismatch) || got != (Claims{}) {
		t.Errorf("another user's token: %+v %v", got, err)
	}
	far := handmade(secret, `{"alg":"HS256"}`, `{"sub":"u","exp":99999999999}`)
	if got, err := v.VerifyClaims(far, "u"); err != nil || got.Exp <= sec(n) {
		t.Errorf("exp past 2262 must saturate, not wrap: %+v %v", got, err)
	}
	if Reason(fmt.Errorf("wrapped: %w", ErrRevoked)) != "token revoked" {
		t.Error("Reason does not know ErrRevoked")
	}
}
