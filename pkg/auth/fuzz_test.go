package auth

import (
	"fmt"
	"strings"
	"testing"
	"time"
)

// FuzzVerify: the token path never panics, and the fast HS256 path answers
// as golang-jwt does (accept versus reject, and the reason whenever the
// signature is good). A token is either taken as given or built from a
// header and a payload, signed with a configured secret (sign true).
func FuzzVerify(f *testing.F) {
	secret := []byte(strings.Repeat("k", 40))
	now := time.Unix(1_800_000_000, 0)
	v, err := NewVerifier(Config{HMACSecret: secret, Leeway: 5 * time.Second, Now: func() time.Time { return now }})
	if err != nil {
		f.Fatal(err)
	}
	n := now.Unix()
	hs := `{"alg":"HS256","typ":"JWT"}`
	for _, s := range []struct {
		header, payload string
		sign            bool
	}{
		{hs, fmt.Sprintf(`{"sub":"u","exp":%d}`, n+60), true},
		{hs, fmt.Sprintf(`{"sub":"u","exp":%d}`, n-3600), true},
		{hs, fmt.Sprintf(`{"sub":"u","exp":%d,"nbf":%d}`, n+60, n+30), true},
		{hs, `{"sub":"u","exp":1e400}`, true},
		{`{"alg":"HS256"}`, fmt.Sprintf(`{"sub":"u","exp":"%d"}`, n+60), true},
		{`{"alg":"none"}`, fmt.Sprintf(`{"sub":"u","exp":%d}`, n+60), true},
		{hs, `not json`, true},
		{"", "eyJhbGciOiJIUzI1NiJ9.e30.sig", false},
		{"", "", false},
	} {
		f.Add(s.header, s.payload, s.sign)
	}
	slow := func(token string) error {
		pools := v.hmacPools
		v.hmacPools = nil
		defer func() { v.hmacPools = pools }()
		return v.Verify(token, "u")
	}
	f.Fuzz(func(t *testing.T, header, payload string, sign bool) {
		tok := payload
		if sign {
			tok = handmade(secret, header, payload)
		}
		got, want := v.Verify(tok, "u"), slow(tok)
		if (got == nil) != (want == nil) || (sign && kind(got) != kind(want)) {
			t.Fatalf("%q: fast path %q, golang-jwt %q", tok, kind(got), kind(want))
		}
		if got != nil && Reason(got) == "" {
			t.Fatalf("%q: refused without a reason", tok)
		}
	})
}
