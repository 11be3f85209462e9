// Package auth verifies the JWTs that browsers present when they open a push
// WebSocket (GET /ws?uid=<user>&token=<JWT>), and mints HS256 tokens for dev
// tooling (pushctl token, the demo page, tests and load generators).
//
// The edge builds one [Verifier] at start-up and calls [Verifier.Verify]
// before upgrading each connection. Every failure wraps exactly one of the
// sentinel errors below, so the edge can answer HTTP 401 with [Reason] and
// count failures by kind without parsing error strings.
package auth

import (
	"crypto"
	"crypto/ed25519"
	"crypto/rsa"
	"encoding/json"
	"errors"
	"fmt"
	"math"
	"strconv"
	"sync/atomic"
	"time"

	"github.com/golang-jwt/jwt/v5"
)

// Sentinel errors returned (wrapped) by [Verifier.Verify]. Their texts are
// the reasons [Reason] reports, so they must stay short and free of secrets.
var (
	// ErrMissingToken means the request carried no token at all.
	ErrMissingToken = errors.New("missing token")
	// ErrMalformed means the token is not a well-formed JWT (wrong number of
	// segments, bad base64 or JSON, wrongly typed claims, or too long).
	ErrMalformed = errors.New("malformed token")
	// ErrBadSignature means the signature did not verify with any key
	// configured for the token's signing method.
	ErrBadSignature = errors.New("bad signature")
	// ErrExpired means exp is not in the future (allowing for leeway).
	ErrExpired = errors.New("token expired")
	// ErrNotYetValid means nbf or iat is in the future (allowing for leeway).
	ErrNotYetValid = errors.New("token not yet valid")
	// ErrNoExpiry means the token has no exp claim; unbounded tokens are
	// refused because a leaked one could never be retired.
	ErrNoExpiry = errors.New("token has no exp")
	// ErrSubjectMismatch means the token's sub is not the uid the
	// connection claims to be.
	ErrSubjectMismatch = errors.New("token sub does not match uid")
	// ErrMethod means the token's alg is not one this Verifier has keys for
	// (this includes "none" and any unknown alg).
	ErrMethod = errors.New("signing method not allowed")
)

// MaxTokenLen is the longest token Verify will look at. A real token is a
// few hundred bytes; anything longer is rejected as [ErrMalformed] before any
// decoding, so an attacker cannot make the edge base64- and JSON-decode
// megabytes per upgrade attempt.
const MaxTokenLen = 4096

// errTooLong is built once so refusing an oversized token allocates nothing.
var errTooLong = fmt.Errorf("%w: longer than %d bytes", ErrMalformed, MaxTokenLen)

// MinSecretLen is the minimum HS256 secret length in bytes. RFC 7518 §3.2
// requires a key at least as long as the hash output (256 bits).
const MinSecretLen = 32

// Algorithms this package pins each key type to. Keeping them as constants
// ties the parser's allow-list and the key lookup to the same names.
const (
	algHS256 = "HS256"
	algRS256 = "RS256"
	algEdDSA = "EdDSA"
)

// minRSABits rejects RSA keys that are too weak to trust for signatures.
const minRSABits = 2048

// Config configures a [Verifier].
type Config struct {
	// HMACSecret is the HS256 shared secret (the default method). It must be
	// at least MinSecretLen bytes. It may be empty only when PublicKeys is
	// not, in which case HS256 tokens are refused with ErrMethod.
	HMACSecret []byte
	// MoreHMACSecrets are also accepted for HS256 (key rotation: the next
	// or the previous secret beside the current one).
	MoreHMACSecrets [][]byte
	// PublicKeys optionally enables asymmetric tokens: *rsa.PublicKey keys
	// verify RS256 and ed25519.PublicKey keys verify EdDSA. Several keys of
	// one kind are tried in turn, which allows key rotation.
	PublicKeys []crypto.PublicKey
	// Leeway is the clock skew allowed on exp, nbf and iat. Default 0.
	Leeway time.Duration
	// Now is the clock; nil means time.Now. Injectable for tests.
	Now func() time.Time
}

// TokenVerifier is what the edge needs of a Verifier; a Keyring is one too.
// VerifyClaims is Verify that also returns the token's lifetime, which the
// edge keeps per connection (expiry, revocation).
type TokenVerifier interface {
	Verify(token, uid string) error
	VerifyClaims(token, uid string) (Claims, error)
}

// Keyring is a TokenVerifier whose keys can be replaced while it is in use
// (the edge re-reads its secret files), so rotating a key drops nobody.
type Keyring struct {
	v    atomic.Pointer[Verifier]
	seen []byte // fingerprint of the key files it was loaded from (KeyFiles.Load)
}

// NewKeyring starts with v.
func NewKeyring(v *Verifier) *Keyring {
	k := &Keyring{}
	k.v.Store(v)
	return k
}

// Set replaces the verifier for every later Verify.
func (k *Keyring) Set(v *Verifier) { k.v.Store(v) }

// Verify checks token with the current verifier.
func (k *Keyring) Verify(token, uid string) error { return k.v.Load().Verify(token, uid) }

// VerifyClaims checks token with the current verifier and returns its
// lifetime.
func (k *Keyring) VerifyClaims(token, uid string) (Claims, error) {
	return k.v.Load().VerifyClaims(token, uid)
}

// Verifier checks browser tokens. It is safe for concurrent use and meant to
// be built once at start-up: all per-key and per-option work happens in
// [NewVerifier] so that Verify does only decoding and crypto.
type Verifier struct {
	parser *jwt.Parser
	// keyFunc is v.key bound once, so Verify does not allocate a closure
	// or method value per call.
	keyFunc jwt.Keyfunc
	// Keys are stored pre-boxed as interface values because converting a
	// []byte or key set to `any` on every call would allocate.
	hmacKey any
	rsaKey  any
	edKey   any
	// methods is the parser allow-list; kept to tell ErrMethod apart from
	// ErrBadSignature (the library reports both as a signature error).
	methods []string

	// The HS256 fast path (fast.go): one HMAC pool per secret, and the
	// same leeway and clock as the parser.
	hmacPools []*hmacPool
	leeway    time.Duration
	timeFunc  func() time.Time
}

// NewVerifier validates c and builds a Verifier. It fails if the secret is
// shorter than MinSecretLen, if no key is configured at all, or if a public
// key is of an unsupported type or too weak.
func NewVerifier(c Config) (*Verifier, error) {
	v := &Verifier{}
	var hmacKeys []jwt.VerificationKey
	for i, secret := range append([][]byte{c.HMACSecret}, c.MoreHMACSecrets...) {
		if len(secret) == 0 {
			if i == 0 {
				continue // public keys only
			}
			return nil, fmt.Errorf("auth: HMAC secret %d is empty", i+1)
		}
		if len(secret) < MinSecretLen {
			return nil, fmt.Errorf("auth: HMAC secret %d is %d bytes, need at least %d", i+1, len(secret), MinSecretLen)
		}
		// Copy so a caller reusing or zeroing its slice cannot change the
		// key under a running verifier.
		hmacKeys = append(hmacKeys, append([]byte(nil), secret...))
		v.hmacPools = append(v.hmacPools, newHMACPool(secret))
	}
	v.leeway, v.timeFunc = c.Leeway, c.Now
	if len(hmacKeys) > 0 {
		v.hmacKey = keySet(hmacKeys)
		v.methods = append(v.methods, algHS256)
	}

	var rsaKeys, edKeys []jwt.VerificationKey
	for i, k := range c.PublicKeys {
		switch k := k.(type) {
		case *rsa.PublicKey:
			if k == nil || k.N == nil {
				return nil, fmt.Errorf("auth: public key %d: nil RSA key", i)
			}
			if bits := k.N.BitLen(); bits < minRSABits {
				return nil, fmt.Errorf("auth: public key %d: RSA key is %d bits, need at least %d", i, bits, minRSABits)
			}
			rsaKeys = append(rsaKeys, k)
		case ed25519.PublicKey:
			if len(k) != ed25519.PublicKeySize {
				return nil, fmt.Errorf("auth: public key %d: Ed25519 key is %d bytes, want %d", i, len(k), ed25519.PublicKeySize)
			}
			edKeys = append(edKeys, k)
		default:
			return nil, fmt.Errorf("auth: public key %d: unsupported type %T (want *rsa.PublicKey or ed25519.PublicKey)", i, k)
		}
	}
	if len(rsaKeys) > 0 {
		v.rsaKey = keySet(rsaKeys)
		v.methods = append(v.methods, algRS256)
	}
	if len(edKeys) > 0 {
		v.edKey = keySet(edKeys)
		v.methods = append(v.methods, algEdDSA)
	}
	if len(v.methods) == 0 {
		return nil, errors.New("auth: no verification key configured (need an HMAC secret or a public key)")
	}

	opts := []jwt.ParserOption{
		jwt.WithValidMethods(v.methods),
		jwt.WithExpirationRequired(),
		jwt.WithIssuedAt(),
		jwt.WithLeeway(c.Leeway),
		// Strict base64 refuses non-canonical encodings, so one signature
		// has exactly one accepted spelling.
		jwt.WithStrictDecoding(),
	}
	if c.Now != nil {
		opts = append(opts, jwt.WithTimeFunc(c.Now))
	}
	v.parser = jwt.NewParser(opts...)
	v.keyFunc = v.key
	return v, nil
}

// keySet avoids the set indirection in the common single-key case.
func keySet(keys []jwt.VerificationKey) any {
	if len(keys) == 1 {
		return keys[0]
	}
	return jwt.VerificationKeySet{Keys: keys}
}

// key pins each algorithm to its own key type. The parser's allow-list
// already refuses unconfigured algs; checking the method identity again here
// is what rules out alg confusion even if that list were ever widened.
func (v *Verifier) key(t *jwt.Token) (any, error) {
	var k any
	switch t.Method {
	case jwt.SigningMethodHS256:
		k = v.hmacKey
	case jwt.SigningMethodRS256:
		k = v.rsaKey
	case jwt.SigningMethodEdDSA:
		k = v.edKey
	}
	if k == nil {
		return nil, ErrMethod
	}
	return k, nil
}

// Verify checks that token is a valid JWT whose signature verifies with a
// configured key for its pinned method (HS256 only with the secret, RS256
// only with RSA keys, EdDSA only with Ed25519 keys; never "none"), whose exp
// is present and in the future, whose nbf and iat (if present) are not in the
// future, and whose sub equals uid exactly.
//
// On failure the error wraps one of the package's sentinel errors; pass it to
// [Reason] for the HTTP 401 body. Error texts never contain the token or key
// material.
func (v *Verifier) Verify(token, uid string) error {
	_, err := v.VerifyClaims(token, uid)
	return err
}

// VerifyClaims is Verify that also returns the verified token's exp and
// iat (the zero Claims on failure).
func (v *Verifier) VerifyClaims(token, uid string) (Claims, error) {
	var claims tokenClaims
	if err := v.verify(token, &claims); err != nil {
		return Claims{}, err
	}
	// An empty sub never matches: a token minted without a subject must not
	// authenticate a connection that simply omitted uid.
	if claims.Sub == "" || claims.Sub != uid {
		return Claims{}, ErrSubjectMismatch
	}
	// verify validated both dates, so they parse.
	exp, _ := numericDate(claims.Exp)
	iat, _ := numericDate(claims.Iat)
	return lifetime(exp, iat), nil
}

// verify checks everything Verify does but the subject, leaving the
// claims in c.
func (v *Verifier) verify(token string, c *tokenClaims) error {
	if token == "" {
		return ErrMissingToken
	}
	if len(token) > MaxTokenLen {
		return errTooLong
	}
	if err, ok := v.verifyFast(token, c); ok {
		return err
	}
	t, err := v.parser.ParseWithClaims(token, c, v.keyFunc)
	if err != nil {
		return v.classify(t, err)
	}
	return nil
}

// tokenClaims decodes only what Verify checks. jwt.RegisteredClaims parses
// every date through a big.Float and the audience through a custom
// unmarshaler; this plain struct keeps the JSON decode, the largest part of
// a verification, to a few string fields. Validation stays in the library:
// it calls the getters below.
type tokenClaims struct {
	Sub   string      `json:"sub"`
	Exp   json.Number `json:"exp"`
	Nbf   json.Number `json:"nbf"`
	Iat   json.Number `json:"iat"`
	Scope scopeClaim  `json:"scope"`
}

func numericDate(n json.Number) (*jwt.NumericDate, error) {
	if n == "" {
		return nil, nil
	}
	f, err := strconv.ParseFloat(string(n), 64)
	if err != nil || math.IsNaN(f) || math.IsInf(f, 0) {
		return nil, fmt.Errorf("%w: bad numeric date", jwt.ErrTokenMalformed)
	}
	sec, frac := math.Modf(f)
	return jwt.NewNumericDate(time.Unix(int64(sec), int64(frac*1e9))), nil
}

func (c *tokenClaims) GetExpirationTime() (*jwt.NumericDate, error) { return numericDate(c.Exp) }
func (c *tokenClaims) GetNotBefore() (*jwt.NumericDate, error)      { return numericDate(c.Nbf) }
func (c *tokenClaims) GetIssuedAt() (*jwt.NumericDate, error)       { return numericDate(c.Iat) }
func (c *tokenClaims) GetIssuer() (string, error)                   { return "", nil }
func (c *tokenClaims) GetSubject() (string, error)                  { return c.Sub, nil }
func (c *tokenClaims) GetAudience() (jwt.ClaimStrings, error)       { return nil, nil }

// classify maps the library's error onto exactly one sentinel. The order
// matters: a token can fail several claim checks at once, and the most
// actionable reason (expired) should win.
func (v *Verifier) classify(t *jwt.Token, err error) error {
	var kind error
	switch {
	case errors.Is(err, ErrMethod):
		kind = ErrMethod
	case errors.Is(err, jwt.ErrTokenMalformed):
		kind = ErrMalformed
	case errors.Is(err, jwt.ErrTokenUnverifiable):
		// Missing or unknown alg: there is no method we could verify with.
		kind = ErrMethod
	case errors.Is(err, jwt.ErrTokenSignatureInvalid):
		// The library reports a disallowed alg as a signature error; tell
		// the two apart so operators see "alg none" attempts for what they
		// are.
		if t != nil && t.Method != nil && !v.allowed(t.Method.Alg()) {
			kind = ErrMethod
		} else {
			kind = ErrBadSignature
		}
	case errors.Is(err, jwt.ErrTokenRequiredClaimMissing):
		kind = ErrNoExpiry
	case errors.Is(err, jwt.ErrTokenExpired):
		kind = ErrExpired
	case errors.Is(err, jwt.ErrTokenNotValidYet), errors.Is(err, jwt.ErrTokenUsedBeforeIssued):
		kind = ErrNotYetValid
	default:
		kind = ErrMalformed
	}
	return fmt.Errorf("%w: %w", kind, err)
}

func (v *Verifier) allowed(alg string) bool {
	for _, m := range v.methods {
		if m == alg {
			return true
		}
	}
	return false
}

// reasons lists the sentinels in the order Reason tests them.
var reasons = []error{
	ErrMissingToken, ErrMalformed, ErrMethod, ErrBadSignature,
	ErrNoExpiry, ErrExpired, ErrNotYetValid, ErrSubjectMismatch, ErrRevoked,
}

// Reason returns the short text for an HTTP 401 body for an error from
// Verify, e.g. "token expired". It returns "" for nil and "unauthorized" for
// errors that wrap none of the sentinels, so callers never leak an arbitrary
// error string to a client.
func Reason(err error) string {
	if err == nil {
		return ""
	}
	for _, s := range reasons {
		if errors.Is(err, s) {
			return s.Error()
		}
	}
	return "unauthorized"
}

// Mint makes an HS256 token for uid valid for ttl from now, with sub, iat and
// exp set. It is for dev tooling (pushctl token, the demo page's dev
// endpoint, tests, load generators), not for a production identity provider.
// A zero now means time.Now().
func Mint(secret []byte, uid string, ttl time.Duration, now time.Time) (string, error) {
	if len(secret) < MinSecretLen {
		return "", fmt.Errorf("auth: mint: secret is %d bytes, need at least %d", len(secret), MinSecretLen)
	}
	if uid == "" {
		return "", errors.New("auth: mint: empty uid")
	}
	if ttl <= 0 {
		return "", fmt.Errorf("auth: mint: ttl %v is not positive", ttl)
	}
	if now.IsZero() {
		now = time.Now()
	}
	claims := jwt.RegisteredClaims{
		Subject:   uid,
		IssuedAt:  jwt.NewNumericDate(now),
		ExpiresAt: jwt.NewNumericDate(now.Add(ttl)),
	}
	s, err := jwt.NewWithClaims(jwt.SigningMethodHS256, claims).SignedString(secret)
	if err != nil {
		return "", fmt.Errorf("auth: mint token for %q: %w", uid, err)
	}
	return s, nil
}
