package auth

import (
	"crypto/hmac"
	"crypto/sha256"
	"encoding/base64"
	"encoding/json"
	"hash"
	"strings"
	"sync"
	"time"
)

// The common case — an HS256 token whose header is exactly what JWT
// libraries emit — is verified here without golang-jwt's generic path (its
// JSON decoding of the header into a map and a fresh HMAC per call were
// most of an upgrade's user CPU). The rules are the same and a
// differential test holds the two to the same answers; any other token
// (another header, another algorithm) goes through golang-jwt.

// fastHeaders are the base64url encodings of the HS256 headers accepted
// on the fast path; the header fixes the algorithm, so there is no
// algorithm to confuse.
var fastHeaders = map[string]bool{}

func init() {
	for _, h := range []string{`{"alg":"HS256","typ":"JWT"}`, `{"typ":"JWT","alg":"HS256"}`, `{"alg":"HS256"}`} {
		fastHeaders[base64.RawURLEncoding.EncodeToString([]byte(h))] = true
	}
}

// hmacPool keeps one HMAC state per secret, reset between uses.
type hmacPool struct {
	pool sync.Pool
}

func newHMACPool(secret []byte) *hmacPool {
	key := append([]byte(nil), secret...)
	return &hmacPool{pool: sync.Pool{New: func() any { return hmac.New(sha256.New, key) }}}
}

var strictB64 = base64.RawURLEncoding.Strict()

// verifyFast returns handled=false when the token is not for the fast
// path; otherwise its verdict on everything but the subject, with the same
// sentinel errors as Verify, and the claims in c.
func (v *Verifier) verifyFast(token string, c *tokenClaims) (err error, handled bool) {
	if len(v.hmacPools) == 0 {
		return nil, false
	}
	dot1 := strings.IndexByte(token, '.')
	if dot1 < 0 || !fastHeaders[token[:dot1]] {
		return nil, false
	}
	rest := token[dot1+1:]
	dot2 := strings.IndexByte(rest, '.')
	if dot2 < 0 || strings.IndexByte(rest[dot2+1:], '.') >= 0 {
		return ErrMalformed, true
	}
	dot2 += dot1 + 1
	var sig [sha256.Size]byte
	if n, e := strictB64.Decode(sig[:], []byte(token[dot2+1:])); e != nil || n != len(sig) ||
		strictB64.DecodedLen(len(token)-dot2-1) != len(sig) {
		return ErrBadSignature, true
	}
	signed := token[:dot2]
	ok := false
	var sum [sha256.Size]byte
	for _, p := range v.hmacPools {
		h := p.pool.Get().(hash.Hash)
		h.Reset()
		h.Write([]byte(signed))
		h.Sum(sum[:0])
		p.pool.Put(h)
		if hmac.Equal(sum[:], sig[:]) {
			ok = true
			break
		}
	}
	if !ok {
		return ErrBadSignature, true
	}
	payload, e := strictB64.DecodeString(token[dot1+1 : dot2])
	if e != nil {
		return ErrMalformed, true
	}
	if json.Unmarshal(payload, c) != nil {
		return ErrMalformed, true
	}
	exp, e1 := numericDate(c.Exp)
	nbf, e2 := numericDate(c.Nbf)
	iat, e3 := numericDate(c.Iat)
	if e1 != nil || e2 != nil || e3 != nil {
		return ErrMalformed, true
	}
	now := v.now()
	switch {
	case exp == nil:
		return ErrNoExpiry, true
	case !now.Before(exp.Add(v.leeway)):
		return ErrExpired, true
	case nbf != nil && now.Add(v.leeway).Before(nbf.Time):
		return ErrNotYetValid, true
	case iat != nil && now.Add(v.leeway).Before(iat.Time):
		return ErrNotYetValid, true
	}
	return nil, true
}

func (v *Verifier) now() time.Time {
	if v.timeFunc != nil {
		return v.timeFunc()
	}
	return time.Now()
}
