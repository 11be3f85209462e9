package auth

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io/fs"
	"log/slog"
	"os"
	"strings"
	"time"
)

// KeyFiles are where a daemon reads its keys: HS256 secret files (the
// first is the current secret and must exist; the others are accepted
// too when they exist, for rotation),
// PUSH_JWT_SECRET when no file is given, and PEM public key files.
type KeyFiles struct {
	Secrets    []string
	PublicKeys []string
}

// ParseKeyFiles splits comma-separated flag values.
func ParseKeyFiles(secrets, publicKeys string) KeyFiles {
	split := func(s string) []string {
		var out []string
		for _, p := range strings.Split(s, ",") {
			if p = strings.TrimSpace(p); p != "" {
				out = append(out, p)
			}
		}
		return out
	}
	return KeyFiles{Secrets: split(secrets), PublicKeys: split(publicKeys)}
}

// load reads every key and returns a verifier and a fingerprint of what
// it read, to tell whether the files changed.
func (f KeyFiles) load() (*Verifier, []byte, error) {
	var c Config
	var seen bytes.Buffer
	if len(f.Secrets) == 0 {
		s, err := LoadSecret("")
		if err != nil {
			return nil, nil, err
		}
		c.HMACSecret = s
		seen.Write(s)
	}
	for i, p := range f.Secrets {
		if i > 0 {
			if _, err := os.Stat(p); errors.Is(err, fs.ErrNotExist) {
				continue // an extra secret is there only during a rotation
			}
		}
		s, err := LoadSecret(p)
		if err != nil {
			return nil, nil, err
		}
		if i == 0 {
			c.HMACSecret = s
		} else {
			c.MoreHMACSecrets = append(c.MoreHMACSecrets, s)
		}
		seen.Write(s)
		seen.WriteByte(0)
	}
	if len(f.PublicKeys) > 0 {
		keys, err := LoadPublicKeys(f.PublicKeys...)
		if err != nil {
			return nil, nil, err
		}
		c.PublicKeys = keys
		for _, p := range f.PublicKeys {
			b, _ := os.ReadFile(p)
			seen.Write(b)
		}
	}
	v, err := NewVerifier(c)
	return v, seen.Bytes(), err
}

// Load builds a Keyring from the files.
func (f KeyFiles) Load() (*Keyring, error) {
	v, seen, err := f.load()
	if err != nil {
		return nil, err
	}
	k := NewKeyring(v)
	k.seen = seen
	return k, nil
}

// Watch re-reads the files every interval until ctx ends and swaps k's
// verifier when they changed (a Kubernetes Secret update, a rotation). A
// read that fails keeps the keys in use and is logged: a half-updated
// mount never locks users out.
func (f KeyFiles) Watch(ctx context.Context, k *Keyring, every time.Duration, log *slog.Logger) {
	last := k.seen // what k was built from (Load), not what the files say by now
	t := time.NewTicker(every)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
		v, seen, err := f.load()
		if err != nil {
			log.Warn("JWT keys not reloaded; keeping the ones in use", "err", err)
			continue
		}
		if !bytes.Equal(seen, last) {
			k.Set(v)
			last = seen
			log.Info("JWT keys reloaded", "hs256_secrets", max(len(f.Secrets), 1), "public_key_files", len(f.PublicKeys))
		}
	}
}

// String names the sources, never their contents.
func (f KeyFiles) String() string {
	if len(f.Secrets) == 0 {
		return fmt.Sprintf("$%s + %d public key files", SecretEnv, len(f.PublicKeys))
	}
	return fmt.Sprintf("%d secret files + %d public key files", len(f.Secrets), len(f.PublicKeys))
}
