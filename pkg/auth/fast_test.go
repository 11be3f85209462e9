package auth

import (
	"crypto/hmac"
	"crypto/sha256"
	"encoding/base64"
	"errors"
	"fmt"
	"strings"
	"testing"
	"time"
)

// handmade signs header and payload JSON with secret, so the test can build
// tokens no library would produce.
func handmade(secret []byte, header, payload string) string {
	enc := base64.RawURLEncoding
	signed := enc.EncodeToString([]byte(header)) + "." + enc.EncodeToString([]byte(payload))
	m := hmac.New(sha256.New, secret)
	m.Write([]byte(signed))
	return signed + "." + enc.EncodeToString(m.Sum(nil))
}

// kind names the sentinel an error wraps ("ok" for nil).
func kind(err error) string {
	if err == nil {
		return "ok"
	}
	for _, s := range reasons {
		if errors.Is(err, s) {
			return s.Error()
		}
	}
	return "other: " + err.Error()
}

// The fast path must answer exactly as golang-jwt does: same accept or
// reject, and the same reason.
func TestFastPathAgreesWithGolangJWT(t *testing.T) {
	secret := []byte(strings.Repeat("k", 40))
	other := []byte(strings.Repeat("z", 40))
	now := time.Unix(1_800_000_000, 0)
	v, err := NewVerifier(Config{HMACSecret: secret, MoreHMACSecrets: [][]byte{other}, Leeway: 5 * time.Second,
		Now: func() time.Time { return now }})
	if err != nil {
		t.Fatal(err)
	}
	slow := func(token, uid string) error { // Verify without the fast path
		pools := v.hmacPools
		v.hmacPools = nil
		defer func() { v.hmacPools = pools }()
		return v.Verify(token, uid)
	}
	hs := `{"alg":"HS256","typ":"JWT"}`
	n := now.Unix()
	var cases []string
	signedOK := map[string]bool{} // tokens whose signature verifies with a configured secret
	for _, header := range []string{hs, `{"typ":"JWT","alg":"HS256"}`, `{"alg":"HS256"}`} {
		for _, p := range []string{
			fmt.Sprintf(`{"sub":"u","exp":%d}`, n+60),
			fmt.Sprintf(`{"sub":"u","exp":%d.5}`, n+60),
			fmt.Sprintf(`{"sub":"u","exp":%d}`, n-1),    // expired, within leeway
			fmt.Sprintf(`{"sub":"u","exp":%d}`, n-5),    // expired exactly at leeway
			fmt.Sprintf(`{"sub":"u","exp":%d}`, n-3600), // expired
			`{"sub":"u"}`, // no exp
			fmt.Sprintf(`{"sub":"u","exp":"%d"}`, n+60), // exp as a string
			fmt.Sprintf(`{"sub":"u","exp":%d,"nbf":%d}`, n+60, n+3),
			fmt.Sprintf(`{"sub":"u","exp":%d,"nbf":%d}`, n+60, n+30),
			fmt.Sprintf(`{"sub":"u","exp":%d,"iat":%d}`, n+60, n+30),
			fmt.Sprintf(`{"sub":"u","exp":%d,"iat":%d}`, n+60, n-30),
			fmt.Sprintf(`{"sub":"other","exp":%d}`, n+60),
			fmt.Sprintf(`{"sub":"","exp":%d}`, n+60),
			fmt.Sprintf(`{"exp":%d}`, n+60),
			fmt.Sprintf(`{"sub":5,"exp":%d}`, n+60),
			fmt.Sprintf(`{"sub":"u","sub":"x","exp":%d}`, n+60), // duplicate key: the last wins in both
			fmt.Sprintf(`{"sub":"u","exp":%d,"aud":["a"],"extra":{"x":[1,2]}}`, n+60),
			fmt.Sprintf(`{"sub":"u","exp":%d,"exp":%d}`, n-3600, n+60),
			fmt.Sprintf(`{"sub":"u","exp":1e400}`),
			`not json`,
			`[]`,
		} {
			a, b := handmade(secret, header, p), handmade(other, header, p)
			signedOK[a], signedOK[b] = true, true
			cases = append(cases, a, b)
		}
	}
	good := handmade(secret, hs, fmt.Sprintf(`{"sub":"u","exp":%d}`, n+60))
	parts := strings.Split(good, ".")
	cases = append(cases,
		handmade([]byte(strings.Repeat("x", 40)), hs, fmt.Sprintf(`{"sub":"u","exp":%d}`, n+60)), // unknown secret
		parts[0]+"."+parts[1]+"."+parts[2][:len(parts[2])-1]+"A",                                 // altered signature
		parts[0]+"."+parts[1]+"."+parts[2]+"=",                                                   // padded signature
		parts[0]+"."+parts[1],                   // two segments
		parts[0]+"."+parts[1]+"."+parts[2]+".x", // four segments
		parts[0]+".."+parts[2],                  // empty payload
		parts[0]+"."+parts[1]+"x."+parts[2],     // payload changed
		handmade(secret, `{"alg":"none","typ":"JWT"}`, fmt.Sprintf(`{"sub":"u","exp":%d}`, n+60)),
		handmade(secret, `{"alg":"HS512","typ":"JWT"}`, fmt.Sprintf(`{"sub":"u","exp":%d}`, n+60)),
	)
	fastHandled := 0
	for i, tok := range cases {
		got := v.Verify(tok, "u")
		want := slow(tok, "u")
		if _, handled := v.verifyFast(tok, new(tokenClaims)); handled {
			fastHandled++
		}
		// A tampered token may fail for a different first reason
		// (golang-jwt decodes the payload before it checks the
		// signature); what must match is accept versus reject, and the
		// exact reason whenever the signature is good.
		if (got == nil) != (want == nil) || (signedOK[tok] && kind(got) != kind(want)) {
			t.Errorf("case %d %q: fast path %q, golang-jwt %q", i, tok, kind(got), kind(want))
		}
	}
	if fastHandled < len(cases)/2 {
		t.Fatalf("the fast path handled only %d of %d tokens", fastHandled, len(cases))
	}
}

func BenchmarkVerifyHS256Slow(b *testing.B) {
	secret := []byte(strings.Repeat("k", 40))
	v, _ := NewVerifier(Config{HMACSecret: secret})
	v.hmacPools = nil
	tok, _ := Mint(secret, "alice", time.Hour, time.Now())
	b.ReportAllocs()
	for i := 0; i < b.N; i++ {
		if err := v.Verify(tok, "alice"); err != nil {
			b.Fatal(err)
		}
	}
}
