package auth

import (
	"crypto"
	"crypto/ed25519"
	"crypto/rand"
	"crypto/rsa"
	"crypto/x509"
	"encoding/base64"
	"encoding/pem"
	"errors"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/golang-jwt/jwt/v5"
)

var (
	testSecret = []byte("0123456789abcdef0123456789abcdef") // exactly MinSecretLen
	testNow    = time.Date(2030, 1, 2, 3, 4, 5, 0, time.UTC)
)

func fixedNow() time.Time { return testNow }

// rsaTestKey is generated once: 2048-bit generation is slow under -race.
var rsaTestKey = sync.OnceValue(func() *rsa.PrivateKey {
	k, err := rsa.GenerateKey(rand.Reader, 2048)
	if err != nil {
		panic(err)
	}
	return k
})

func edTestKey(t testing.TB) ed25519.PrivateKey {
	t.Helper()
	_, priv, err := ed25519.GenerateKey(rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	return priv
}

func sign(t testing.TB, m jwt.SigningMethod, key any, c jwt.Claims) string {
	t.Helper()
	s, err := jwt.NewWithClaims(m, c).SignedString(key)
	if err != nil {
		t.Fatalf("sign %s: %v", m.Alg(), err)
	}
	return s
}

func claims(sub string, exp time.Duration) jwt.RegisteredClaims {
	return jwt.RegisteredClaims{
		Subject:   sub,
		IssuedAt:  jwt.NewNumericDate(testNow.Add(-time.Minute)),
		ExpiresAt: jwt.NewNumericDate(testNow.Add(exp)),
	}
}

func newVerifier(t testing.TB, c Config) *Verifier {
	t.Helper()
	if c.Now == nil {
		c.Now = fixedNow
	}
	v, err := NewVerifier(c)
	if err != nil {
		t.Fatalf("NewVerifier: %v", err)
	}
	return v
}

func pemPublic(t testing.TB, k crypto.PublicKey) []byte {
	t.Helper()
	der, err := x509.MarshalPKIXPublicKey(k)
	if err != nil {
		t.Fatal(err)
	}
	return pem.EncodeToMemory(&pem.Block{Type: "PUBLIC KEY", Bytes: der})
}

func b64(s string) string { return base64.RawURLEncoding.EncodeToString([]byte(s)) }

func TestVerify(t *testing.T) {
	rsaKey := rsaTestKey()
	edKey := edTestKey(t)
	otherEd := edTestKey(t)
	all := newVerifier(t, Config{
		HMACSecret: testSecret,
		PublicKeys: []crypto.PublicKey{&rsaKey.PublicKey, edKey.Public()},
	})
	secretOnly := newVerifier(t, Config{HMACSecret: testSecret})
	rsaOnly := newVerifier(t, Config{PublicKeys: []crypto.PublicKey{&rsaKey.PublicKey}})

	rsaPEM := pemPublic(t, &rsaKey.PublicKey)
	noExp := jwt.RegisteredClaims{Subject: "alice"}
	nbfFuture := claims("alice", time.Hour)
	nbfFuture.NotBefore = jwt.NewNumericDate(testNow.Add(time.Minute))
	iatFuture := claims("alice", time.Hour)
	iatFuture.IssuedAt = jwt.NewNumericDate(testNow.Add(time.Minute))
	noneTok := sign(t, jwt.SigningMethodNone, jwt.UnsafeAllowNoneSignatureType, claims("alice", time.Hour))
	hs512 := sign(t, jwt.SigningMethodHS512, testSecret, claims("alice", time.Hour))
	goodTok := good(t)
	// Change the first signature character: all six of its bits are data,
	// so the result is still canonical base64 but a different signature.
	i := strings.LastIndexByte(goodTok, '.') + 1
	repl := "A"
	if goodTok[i] == 'A' {
		repl = "B"
	}
	tampered := goodTok[:i] + repl + goodTok[i+1:]

	tests := []struct {
		name  string
		v     *Verifier
		token string
		uid   string
		want  error
	}{
		{"HS256 ok", all, goodTok, "alice", nil},
		{"HS256 secret-only ok", secretOnly, goodTok, "alice", nil},
		{"RS256 ok", all, sign(t, jwt.SigningMethodRS256, rsaKey, claims("alice", time.Hour)), "alice", nil},
		{"RS256 rsa-only ok", rsaOnly, sign(t, jwt.SigningMethodRS256, rsaKey, claims("alice", time.Hour)), "alice", nil},
		{"EdDSA ok", all, sign(t, jwt.SigningMethodEdDSA, edKey, claims("alice", time.Hour)), "alice", nil},
		{"missing", all, "", "alice", ErrMissingToken},
		{"expired", all, sign(t, jwt.SigningMethodHS256, testSecret, claims("alice", -time.Second)), "alice", ErrExpired},
		{"exp equals now", all, sign(t, jwt.SigningMethodHS256, testSecret, claims("alice", 0)), "alice", ErrExpired},
		{"nbf in future", all, sign(t, jwt.SigningMethodHS256, testSecret, nbfFuture), "alice", ErrNotYetValid},
		{"iat in future", all, sign(t, jwt.SigningMethodHS256, testSecret, iatFuture), "alice", ErrNotYetValid},
		{"no exp", all, sign(t, jwt.SigningMethodHS256, testSecret, noExp), "alice", ErrNoExpiry},
		{"sub mismatch", all, goodTok, "bob", ErrSubjectMismatch},
		{"sub prefix", all, goodTok, "alic", ErrSubjectMismatch},
		{"sub case", all, goodTok, "Alice", ErrSubjectMismatch},
		{"empty sub and uid", all, sign(t, jwt.SigningMethodHS256, testSecret, claims("", time.Hour)), "", ErrSubjectMismatch},
		{"wrong secret", all, sign(t, jwt.SigningMethodHS256, []byte("another-secret-another-secret-xx"), claims("alice", time.Hour)), "alice", ErrBadSignature},
		{"tampered signature", all, tampered, "alice", ErrBadSignature},
		{"wrong ed25519 key", all, sign(t, jwt.SigningMethodEdDSA, otherEd, claims("alice", time.Hour)), "alice", ErrBadSignature},
		{"alg none", all, noneTok, "alice", ErrMethod},
		{"alg none hand-made", all, b64(`{"alg":"none","typ":"JWT"}`) + "." + b64(`{"sub":"alice","exp":4102444800}`) + ".", "alice", ErrMethod},
		{"alg missing", all, b64(`{"typ":"JWT"}`) + "." + b64(`{"sub":"alice","exp":4102444800}`) + ".AAAA", "alice", ErrMethod},
		{"alg unknown", all, b64(`{"alg":"XX999"}`) + "." + b64(`{"sub":"alice","exp":4102444800}`) + ".AAAA", "alice", ErrMethod},
		{"HS512 not allowed", all, hs512, "alice", ErrMethod},
		// Classic alg confusion: HS256 keyed with the RSA public key bytes.
		{"alg confusion with secret", all, sign(t, jwt.SigningMethodHS256, rsaPEM, claims("alice", time.Hour)), "alice", ErrBadSignature},
		{"alg confusion rsa-only", rsaOnly, sign(t, jwt.SigningMethodHS256, rsaPEM, claims("alice", time.Hour)), "alice", ErrMethod},
		{"RS256 with secret only", secretOnly, sign(t, jwt.SigningMethodRS256, rsaKey, claims("alice", time.Hour)), "alice", ErrMethod},
		{"EdDSA with secret only", secretOnly, sign(t, jwt.SigningMethodEdDSA, edKey, claims("alice", time.Hour)), "alice", ErrMethod},
		{"garbage", all, "not a jwt", "alice", ErrMalformed},
		{"two segments", all, "a.b", "alice", ErrMalformed},
		{"four segments", all, goodTok + ".x", "alice", ErrMalformed},
		{"bad base64", all, "!!!.???.***", "alice", ErrMalformed},
		{"bad json", all, b64("{") + "." + b64("{}") + ".AAAA", "alice", ErrMalformed},
		{"exp wrong type", all, sign(t, jwt.SigningMethodHS256, testSecret, jwt.MapClaims{"sub": "alice", "exp": "tomorrow"}), "alice", ErrMalformed},
		{"too long", all, strings.Repeat("a", MaxTokenLen+1), "alice", ErrMalformed},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			err := tc.v.Verify(tc.token, tc.uid)
			if tc.want == nil {
				if err != nil {
					t.Fatalf("Verify: unexpected error %v", err)
				}
				return
			}
			if !errors.Is(err, tc.want) {
				t.Fatalf("Verify error = %v, want %v", err, tc.want)
			}
			// Exactly one sentinel, so Reason and metrics are unambiguous.
			for _, s := range reasons {
				if s != tc.want && errors.Is(err, s) {
					t.Errorf("error %v also matches %v", err, s)
				}
			}
			if got := Reason(err); got != tc.want.Error() {
				t.Errorf("Reason = %q, want %q", got, tc.want.Error())
			}
			if len(tc.token) > 20 && strings.Contains(err.Error(), tc.token) {
				t.Errorf("error echoes the token: %v", err)
			}
			if strings.Contains(err.Error(), string(testSecret)) {
				t.Errorf("error leaks the secret: %v", err)
			}
		})
	}
}

func TestVerifyLeeway(t *testing.T) {
	tok := sign(t, jwt.SigningMethodHS256, testSecret, claims("alice", -10*time.Second))
	strict := newVerifier(t, Config{HMACSecret: testSecret})
	lenient := newVerifier(t, Config{HMACSecret: testSecret, Leeway: 30 * time.Second})
	if err := strict.Verify(tok, "alice"); !errors.Is(err, ErrExpired) {
		t.Fatalf("strict: got %v, want ErrExpired", err)
	}
	if err := lenient.Verify(tok, "alice"); err != nil {
		t.Fatalf("lenient: got %v, want nil", err)
	}
}

func TestVerifyKeyRotation(t *testing.T) {
	oldKey, newKey := edTestKey(t), edTestKey(t)
	v := newVerifier(t, Config{PublicKeys: []crypto.PublicKey{oldKey.Public(), newKey.Public()}})
	for i, k := range []ed25519.PrivateKey{oldKey, newKey} {
		if err := v.Verify(sign(t, jwt.SigningMethodEdDSA, k, claims("u1", time.Hour)), "u1"); err != nil {
			t.Errorf("key %d: %v", i, err)
		}
	}
	if err := v.Verify(good(t), "alice"); !errors.Is(err, ErrMethod) {
		t.Errorf("HS256 without secret: got %v, want ErrMethod", err)
	}
}

func good(t testing.TB) string {
	return sign(t, jwt.SigningMethodHS256, testSecret, claims("alice", time.Hour))
}

func TestVerifyConcurrent(t *testing.T) {
	v := newVerifier(t, Config{HMACSecret: testSecret})
	tok := good(t)
	var wg sync.WaitGroup
	for range 8 {
		wg.Go(func() {
			for range 100 {
				if err := v.Verify(tok, "alice"); err != nil {
					t.Error(err)
					return
				}
			}
		})
	}
	wg.Wait()
}

func TestNewVerifierErrors(t *testing.T) {
	small, err := rsa.GenerateKey(rand.Reader, 1024)
	if err != nil {
		t.Fatal(err)
	}
	priv := edTestKey(t)
	tests := []struct {
		name string
		c    Config
	}{
		{"nothing configured", Config{}},
		{"short secret", Config{HMACSecret: testSecret[:MinSecretLen-1]}},
		{"weak RSA key", Config{PublicKeys: []crypto.PublicKey{&small.PublicKey}}},
		{"private key given", Config{PublicKeys: []crypto.PublicKey{priv}}},
		{"nil RSA key", Config{PublicKeys: []crypto.PublicKey{(*rsa.PublicKey)(nil)}}},
		{"short ed25519 key", Config{PublicKeys: []crypto.PublicKey{ed25519.PublicKey{1, 2, 3}}}},
		{"unsupported type", Config{PublicKeys: []crypto.PublicKey{"key"}}},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			if v, err := NewVerifier(tc.c); err == nil {
				t.Fatalf("NewVerifier succeeded (%v), want error", v)
			}
		})
	}
}

func TestNewVerifierCopiesSecret(t *testing.T) {
	secret := append([]byte(nil), testSecret...)
	v := newVerifier(t, Config{HMACSecret: secret})
	clear(secret)
	if err := v.Verify(good(t), "alice"); err != nil {
		t.Fatalf("verifier affected by caller's slice: %v", err)
	}
}

func TestMint(t *testing.T) {
	v := newVerifier(t, Config{HMACSecret: testSecret})
	tok, err := Mint(testSecret, "user-42", time.Minute, testNow)
	if err != nil {
		t.Fatal(err)
	}
	if err := v.Verify(tok, "user-42"); err != nil {
		t.Fatalf("minted token rejected: %v", err)
	}
	if err := v.Verify(tok, "user-43"); !errors.Is(err, ErrSubjectMismatch) {
		t.Fatalf("got %v, want ErrSubjectMismatch", err)
	}
	later := newVerifier(t, Config{HMACSecret: testSecret, Now: func() time.Time { return testNow.Add(time.Minute) }})
	if err := later.Verify(tok, "user-42"); !errors.Is(err, ErrExpired) {
		t.Fatalf("after ttl: got %v, want ErrExpired", err)
	}

	for name, call := range map[string]func() (string, error){
		"short secret": func() (string, error) { return Mint(testSecret[:10], "u", time.Minute, testNow) },
		"empty uid":    func() (string, error) { return Mint(testSecret, "", time.Minute, testNow) },
		"zero ttl":     func() (string, error) { return Mint(testSecret, "u", 0, testNow) },
	} {
		if _, err := call(); err == nil {
			t.Errorf("%s: Mint succeeded, want error", name)
		}
	}
}

func TestReason(t *testing.T) {
	if got := Reason(nil); got != "" {
		t.Errorf("Reason(nil) = %q", got)
	}
	if got := Reason(errors.New("secret stuff from somewhere")); got != "unauthorized" {
		t.Errorf("Reason(foreign) = %q, want unauthorized", got)
	}
}
