package auth

import (
	"crypto"
	"testing"
	"time"

	"github.com/golang-jwt/jwt/v5"
)

// BenchmarkVerifyHS256 measures the per-upgrade cost of the default path;
// the edge's whole upgrade budget is 20 µs.
func BenchmarkVerifyHS256(b *testing.B) {
	v := newVerifier(b, Config{HMACSecret: testSecret})
	tok, err := Mint(testSecret, "user-1234567", time.Hour, testNow)
	if err != nil {
		b.Fatal(err)
	}
	b.ReportAllocs()
	for b.Loop() {
		if err := v.Verify(tok, "user-1234567"); err != nil {
			b.Fatal(err)
		}
	}
}

// BenchmarkVerifyRS256 shows the cost of the asymmetric options against the
// upgrade budget.
func BenchmarkVerifyRS256(b *testing.B) {
	k := rsaTestKey()
	v := newVerifier(b, Config{PublicKeys: []crypto.PublicKey{&k.PublicKey}})
	tok := sign(b, jwt.SigningMethodRS256, k, claims("user-1234567", time.Hour))
	b.ReportAllocs()
	for b.Loop() {
		if err := v.Verify(tok, "user-1234567"); err != nil {
			b.Fatal(err)
		}
	}
}

// BenchmarkVerifyEdDSA is the other asymmetric option, for comparison.
func BenchmarkVerifyEdDSA(b *testing.B) {
	k := edTestKey(b)
	v := newVerifier(b, Config{PublicKeys: []crypto.PublicKey{k.Public()}})
	tok := sign(b, jwt.SigningMethodEdDSA, k, claims("user-1234567", time.Hour))
	b.ReportAllocs()
	for b.Loop() {
		if err := v.Verify(tok, "user-1234567"); err != nil {
			b.Fatal(err)
		}
	}
}

// BenchmarkVerifyTooLong shows that an oversized token is refused before
// any decoding.
func BenchmarkVerifyTooLong(b *testing.B) {
	v := newVerifier(b, Config{HMACSecret: testSecret})
	tok := string(make([]byte, 1<<20))
	b.ReportAllocs()
	for b.Loop() {
		_ = v.Verify(tok, "u")
	}
}
