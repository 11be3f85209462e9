package grpcauth

import (
	"bytes"
	"encoding/pem"
	"fmt"
	"os"
	"strings"
)

// distinct checks what validate cannot see from the paths alone: that no
// certificate of the backend CA bundle is also in the cluster CA bundle,
// and that no backend secret is also a cluster secret (the same contents
// under two paths would make every backend a member).
func (c *Config) distinct() error {
	if c.BackendCA != "" && c.ClusterCA != "" {
		b, err := pemBlocks(c.BackendCA)
		if err != nil {
			return err
		}
		k, err := pemBlocks(c.ClusterCA)
		if err != nil {
			return err
		}
		for _, x := range b {
			for _, y := range k {
				if bytes.Equal(x, y) {
					return fmt.Errorf("%w: --backend-ca-file %s and --cluster-ca-file %s hold the same certificate: every backend would be a member", ErrConfig, c.BackendCA, c.ClusterCA)
				}
			}
		}
	}
	if f, g, same, err := sameSecret(c.BackendJWTSecretFiles, c.ClusterJWTSecretFiles); err != nil {
		return err
	} else if same {
		return fmt.Errorf("%w: --backend-jwt-secret-file %s and --cluster-jwt-secret-file %s hold the same secret: whoever mints backend tokens could mint member tokens", ErrConfig, f, g)
	}
	return nil
}

// CheckBrowserSecrets refuses a configuration whose browser token secrets
// (the edge's --jwt-secret-file, comma-separated) include a backend or
// cluster secret: a browser token must never be worth a backend's or a
// member's (docs/security.md).
func (c *Config) CheckBrowserSecrets(browserFiles string) error {
	for _, other := range []struct{ files, flag string }{
		{c.BackendJWTSecretFiles, "--backend-jwt-secret-file"},
		{c.ClusterJWTSecretFiles, "--cluster-jwt-secret-file"},
	} {
		f, g, same, err := sameSecret(browserFiles, other.files)
		if err != nil {
			return err
		}
		if same {
			return fmt.Errorf("%w: --jwt-secret-file %s and %s %s hold the same secret: keep the browser, backend and cluster secrets different", ErrConfig, f, other.flag, g)
		}
	}
	return nil
}

// sameSecret reports the first pair of files, one from each
// comma-separated list, with the same contents (surrounding space
// trimmed).
func sameSecret(a, b string) (string, string, bool, error) {
	if a == "" || b == "" {
		return "", "", false, nil
	}
	read := func(list string) (map[string][]byte, error) {
		out := map[string][]byte{}
		for _, f := range strings.Split(list, ",") {
			if f = strings.TrimSpace(f); f == "" {
				continue
			}
			data, err := os.ReadFile(f)
			if err != nil {
				return nil, fmt.Errorf("%w: %v", ErrConfig, err)
			}
			out[f] = bytes.TrimSpace(data)
		}
		return out, nil
	}
	x, err := read(a)
	if err != nil {
		return "", "", false, err
	}
	y, err := read(b)
	if err != nil {
		return "", "", false, err
	}
	for f, s := range x {
		for g, t := range y {
			if len(s) > 0 && bytes.Equal(s, t) {
				return f, g, true, nil
			}
		}
	}
	return "", "", false, nil
}

// pemBlocks returns the DER bytes of every PEM block in file.
func pemBlocks(file string) ([][]byte, error) {
	data, err := os.ReadFile(file)
	if err != nil {
		return nil, fmt.Errorf("%w: %v", ErrConfig, err)
	}
	var out [][]byte
	for {
		var b *pem.Block
		if b, data = pem.Decode(data); b == nil {
			return out, nil
		}
		out = append(out, b.Bytes)
	}
}
