package auth

import (
	"crypto"
	"crypto/ecdsa"
	"crypto/ed25519"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/rsa"
	"crypto/x509"
	"encoding/pem"
	"errors"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/golang-jwt/jwt/v5"
)

func writeFile(t *testing.T, name string, data []byte) string {
	t.Helper()
	p := filepath.Join(t.TempDir(), name)
	if err := os.WriteFile(p, data, 0o600); err != nil {
		t.Fatal(err)
	}
	return p
}

func TestLoadSecretFile(t *testing.T) {
	t.Setenv(SecretEnv, "env-secret-that-must-not-be-used-xxxxxxxx")
	for name, content := range map[string]string{
		"no newline":   string(testSecret),
		"newline":      string(testSecret) + "\n",
		"crlf newline": string(testSecret) + "\r\n",
	} {
		t.Run(name, func(t *testing.T) {
			got, err := LoadSecret(writeFile(t, "secret", []byte(content)))
			if err != nil {
				t.Fatal(err)
			}
			if string(got) != string(testSecret) {
				t.Fatalf("got %q, want %q", got, testSecret)
			}
		})
	}

	t.Run("only one newline trimmed", func(t *testing.T) {
		got, err := LoadSecret(writeFile(t, "secret", []byte(string(testSecret)+"\n\n")))
		if err != nil {
			t.Fatal(err)
		}
		if string(got) != string(testSecret)+"\n" {
			t.Fatalf("got %q", got)
		}
	})

	for name, content := range map[string]string{
		"empty":         "",
		"only newline":  "\n",
		"short":         "short-secret\n",
		"one byte less": string(testSecret[:MinSecretLen-1]) + "\n",
	} {
		t.Run(name, func(t *testing.T) {
			p := writeFile(t, "secret", []byte(content))
			_, err := LoadSecret(p)
			if err == nil {
				t.Fatal("LoadSecret succeeded, want error")
			}
			if !strings.Contains(err.Error(), p) {
				t.Errorf("error %q does not name the file", err)
			}
			if c := strings.TrimSpace(content); c != "" && strings.Contains(err.Error(), c) {
				t.Errorf("error %q leaks the secret", err)
			}
		})
	}

	t.Run("missing file", func(t *testing.T) {
		p := filepath.Join(t.TempDir(), "nope")
		_, err := LoadSecret(p)
		if !errors.Is(err, os.ErrNotExist) || !strings.Contains(err.Error(), p) {
			t.Fatalf("got %v, want not-exist error naming %s", err, p)
		}
	})
}

func TestLoadSecretEnv(t *testing.T) {
	t.Setenv(SecretEnv, string(testSecret)+"\n")
	got, err := LoadSecret("")
	if err != nil {
		t.Fatal(err)
	}
	if string(got) != string(testSecret) {
		t.Fatalf("got %q", got)
	}

	t.Setenv(SecretEnv, "too-short")
	_, err = LoadSecret("")
	if err == nil || !strings.Contains(err.Error(), SecretEnv) || strings.Contains(err.Error(), "too-short") {
		t.Fatalf("short env secret: got %v, want error naming %s without the value", err, SecretEnv)
	}

	t.Setenv(SecretEnv, "")
	if _, err := LoadSecret(""); err == nil || !strings.Contains(err.Error(), "empty") {
		t.Fatalf("empty env secret: got %v", err)
	}

	// t.Setenv restores the variable afterwards; unset it for this case.
	os.Unsetenv(SecretEnv)
	if _, err := LoadSecret(""); !errors.Is(err, ErrNoSecret) {
		t.Fatalf("unset env: got %v, want ErrNoSecret", err)
	}
}

func TestLoadPublicKeys(t *testing.T) {
	rsaKey := rsaTestKey()
	edKey := edTestKey(t)
	rsaPKIX := writeFile(t, "rsa.pem", pemPublic(t, &rsaKey.PublicKey))
	edPKIX := writeFile(t, "ed.pem", pemPublic(t, edKey.Public()))
	rsaPKCS1 := writeFile(t, "rsa1.pem", pem.EncodeToMemory(&pem.Block{
		Type: "RSA PUBLIC KEY", Bytes: x509.MarshalPKCS1PublicKey(&rsaKey.PublicKey),
	}))
	bundle := writeFile(t, "bundle.pem", append(pemPublic(t, edKey.Public()), pemPublic(t, &rsaKey.PublicKey)...))

	keys, err := LoadPublicKeys(rsaPKIX, edPKIX, rsaPKCS1, bundle)
	if err != nil {
		t.Fatal(err)
	}
	if len(keys) != 5 {
		t.Fatalf("got %d keys, want 5", len(keys))
	}
	wantTypes := []string{"rsa", "ed", "rsa", "ed", "rsa"}
	for i, k := range keys {
		var ok bool
		switch wantTypes[i] {
		case "rsa":
			var r *rsa.PublicKey
			r, ok = k.(*rsa.PublicKey)
			ok = ok && r.Equal(&rsaKey.PublicKey)
		case "ed":
			var e ed25519.PublicKey
			e, ok = k.(ed25519.PublicKey)
			ok = ok && e.Equal(edKey.Public())
		}
		if !ok {
			t.Errorf("key %d: got %T, want %s key matching the generated one", i, k, wantTypes[i])
		}
	}

	// The loaded keys must actually work in a Verifier.
	v := newVerifier(t, Config{PublicKeys: keys})
	for _, tok := range []string{
		sign(t, jwt.SigningMethodRS256, rsaKey, claims("alice", time.Hour)),
		sign(t, jwt.SigningMethodEdDSA, edKey, claims("alice", time.Hour)),
	} {
		if err := v.Verify(tok, "alice"); err != nil {
			t.Errorf("Verify with loaded keys: %v", err)
		}
	}

	if keys, err := LoadPublicKeys(); err != nil || len(keys) != 0 {
		t.Errorf("no paths: got %v, %v; want none, nil", keys, err)
	}
}

func TestLoadPublicKeysErrors(t *testing.T) {
	ecKey, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	edPriv := edTestKey(t)
	privDER, err := x509.MarshalPKCS8PrivateKey(edPriv)
	if err != nil {
		t.Fatal(err)
	}
	cases := map[string][]byte{
		"not pem":     []byte("hello"),
		"empty":       nil,
		"ecdsa":       pemPublic(t, crypto.PublicKey(&ecKey.PublicKey)),
		"private key": pem.EncodeToMemory(&pem.Block{Type: "PRIVATE KEY", Bytes: privDER}),
		"bad pkix":    pem.EncodeToMemory(&pem.Block{Type: "PUBLIC KEY", Bytes: []byte("junk")}),
		"bad pkcs1":   pem.EncodeToMemory(&pem.Block{Type: "RSA PUBLIC KEY", Bytes: []byte("junk")}),
	}
	for name, data := range cases {
		t.Run(name, func(t *testing.T) {
			p := writeFile(t, "key.pem", data)
			_, err := LoadPublicKeys(p)
			if err == nil {
				t.Fatal("LoadPublicKeys succeeded, want error")
			}
			if !strings.Contains(err.Error(), p) {
				t.Errorf("error %q does not name the file", err)
			}
		})
	}
	if _, err := LoadPublicKeys(filepath.Join(t.TempDir(), "missing.pem")); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("missing file: got %v", err)
	}
}
