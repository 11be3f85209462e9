package auth

import (
	"bytes"
	"crypto"
	"crypto/ed25519"
	"crypto/rsa"
	"crypto/x509"
	"encoding/pem"
	"errors"
	"fmt"
	"os"
)

// SecretEnv is the environment variable LoadSecret falls back to when no
// secret file is given.
const SecretEnv = "PUSH_JWT_SECRET"

// ErrNoSecret is returned by LoadSecret when neither a file nor SecretEnv
// provides a secret, so dev commands can choose to generate one instead of
// failing.
var ErrNoSecret = errors.New("no JWT secret configured")

// LoadSecret reads the HS256 secret. If path is not empty it reads that file,
// otherwise it uses the SecretEnv environment variable. In both cases one
// trailing newline is trimmed (editors and `echo` add one) and the result
// must be at least MinSecretLen bytes. Errors name the source used and what
// is wrong with it, never the secret itself.
func LoadSecret(path string) ([]byte, error) { return LoadSecretWith(path, os.LookupEnv) }

// LoadSecretWith is LoadSecret with the environment looked up through
// lookup, for callers that carry their own environment (CLIs under test).
func LoadSecretWith(path string, lookup func(string) (string, bool)) ([]byte, error) {
	var (
		b      []byte
		source string
	)
	if path != "" {
		source = fmt.Sprintf("secret file %q", path)
		var err error
		b, err = os.ReadFile(path)
		if err != nil {
			return nil, fmt.Errorf("auth: read %s: %w", source, err)
		}
	} else {
		source = "environment variable " + SecretEnv
		s, ok := lookup(SecretEnv)
		if !ok {
			return nil, fmt.Errorf("auth: %w: no secret file given and %s is not set", ErrNoSecret, SecretEnv)
		}
		b = []byte(s)
	}
	b = trimNewline(b)
	if len(b) == 0 {
		return nil, fmt.Errorf("auth: %s is empty", source)
	}
	if len(b) < MinSecretLen {
		return nil, fmt.Errorf("auth: %s holds %d bytes, need at least %d", source, len(b), MinSecretLen)
	}
	return b, nil
}

// trimNewline removes exactly one trailing "\n" or "\r\n", so a secret that
// deliberately ends in whitespace is otherwise kept byte for byte.
func trimNewline(b []byte) []byte {
	if bytes.HasSuffix(b, []byte("\r\n")) {
		return b[:len(b)-2]
	}
	if bytes.HasSuffix(b, []byte("\n")) {
		return b[:len(b)-1]
	}
	return b
}

// LoadPublicKeys parses PEM files into keys for [Config.PublicKeys]. It
// accepts PKIX "PUBLIC KEY" blocks holding RSA or Ed25519 keys and PKCS #1
// "RSA PUBLIC KEY" blocks; a file may hold several blocks. Any other block
// (notably a private key given by mistake), other key types, or a file
// without PEM data is an error naming the file.
func LoadPublicKeys(paths ...string) ([]crypto.PublicKey, error) {
	var keys []crypto.PublicKey
	for _, path := range paths {
		data, err := os.ReadFile(path)
		if err != nil {
			return nil, fmt.Errorf("auth: read public key file: %w", err)
		}
		n := 0
		for {
			var block *pem.Block
			block, data = pem.Decode(data)
			if block == nil {
				break
			}
			n++
			k, err := parsePublicKey(block)
			if err != nil {
				return nil, fmt.Errorf("auth: public key file %q, PEM block %d: %w", path, n, err)
			}
			keys = append(keys, k)
		}
		if n == 0 {
			return nil, fmt.Errorf("auth: public key file %q: no PEM data found", path)
		}
	}
	return keys, nil
}

func parsePublicKey(block *pem.Block) (crypto.PublicKey, error) {
	switch block.Type {
	case "PUBLIC KEY":
		k, err := x509.ParsePKIXPublicKey(block.Bytes)
		if err != nil {
			return nil, fmt.Errorf("parse PKIX public key: %w", err)
		}
		switch k := k.(type) {
		case *rsa.PublicKey, ed25519.PublicKey:
			return k, nil
		default:
			return nil, fmt.Errorf("unsupported key type %T (want RSA or Ed25519)", k)
		}
	case "RSA PUBLIC KEY":
		k, err := x509.ParsePKCS1PublicKey(block.Bytes)
		if err != nil {
			return nil, fmt.Errorf("parse PKCS #1 RSA public key: %w", err)
		}
		return k, nil
	default:
		return nil, fmt.Errorf("unexpected PEM block type %q (want \"PUBLIC KEY\" or \"RSA PUBLIC KEY\")", block.Type)
	}
}
