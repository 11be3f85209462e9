// Package certtest makes certificate authorities and certificates for
// tests, as PEM files in a test's temporary directory (crypto/x509, no
// tools needed).
package certtest

import (
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"math/big"
	"net"
	"os"
	"path/filepath"
	"sync/atomic"
	"testing"
	"time"
)

var serial atomic.Int64

// CA is a certificate authority whose certificate is in CertFile.
type CA struct {
	Cert     *x509.Certificate
	key      *ecdsa.PrivateKey
	CertFile string
	dir      string
}

// Pair is a certificate and its key, as PEM files.
type Pair struct {
	Cert              *x509.Certificate
	CertFile, KeyFile string
}

func key(t testing.TB) *ecdsa.PrivateKey {
	k, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	return k
}

func write(t testing.TB, path, typ string, der []byte) {
	if err := os.WriteFile(path, pem.EncodeToMemory(&pem.Block{Type: typ, Bytes: der}), 0o600); err != nil {
		t.Fatal(err)
	}
}

// NewCA makes a CA named name in a directory of its own.
func NewCA(t testing.TB, name string) *CA {
	t.Helper()
	k := key(t)
	tmpl := &x509.Certificate{
		SerialNumber: big.NewInt(serial.Add(1)), Subject: pkix.Name{CommonName: name},
		NotBefore: time.Now().Add(-time.Hour), NotAfter: time.Now().Add(24 * time.Hour),
		IsCA: true, BasicConstraintsValid: true, KeyUsage: x509.KeyUsageCertSign | x509.KeyUsageDigitalSignature,
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &k.PublicKey, k)
	if err != nil {
		t.Fatal(err)
	}
	c, _ := x509.ParseCertificate(der)
	dir := t.TempDir()
	ca := &CA{Cert: c, key: k, CertFile: filepath.Join(dir, name+"-ca.pem"), dir: dir}
	write(t, ca.CertFile, "CERTIFICATE", der)
	return ca
}

// Options of a certificate.
type Options struct {
	// OU are its organizational units (a backend certificate's scopes).
	OU []string
	// NotAfter defaults to a day from now.
	NotAfter time.Time
	// File names the PEM files (<File>.pem, <File>-key.pem); default the
	// common name.
	File string
}

// Issue makes a certificate for cn, valid for 127.0.0.1, ::1 and
// localhost, for both server and client authentication.
func (ca *CA) Issue(t testing.TB, cn string, o Options) Pair {
	t.Helper()
	k := key(t)
	if o.NotAfter.IsZero() {
		o.NotAfter = time.Now().Add(24 * time.Hour)
	}
	if o.File == "" {
		o.File = cn
	}
	tmpl := &x509.Certificate{
		SerialNumber: big.NewInt(serial.Add(1)), Subject: pkix.Name{CommonName: cn, OrganizationalUnit: o.OU},
		NotBefore: time.Now().Add(-time.Hour), NotAfter: o.NotAfter,
		KeyUsage:    x509.KeyUsageDigitalSignature,
		ExtKeyUsage: []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth, x509.ExtKeyUsageClientAuth},
		DNSNames:    []string{"localhost"}, IPAddresses: []net.IP{net.IPv4(127, 0, 0, 1), net.IPv6loopback},
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, ca.Cert, &k.PublicKey, ca.key)
	if err != nil {
		t.Fatal(err)
	}
	kder, err := x509.MarshalPKCS8PrivateKey(k)
	if err != nil {
		t.Fatal(err)
	}
	c, _ := x509.ParseCertificate(der)
	p := Pair{Cert: c, CertFile: filepath.Join(ca.dir, o.File+".pem"), KeyFile: filepath.Join(ca.dir, o.File+"-key.pem")}
	// The key first: a reader that sees the new certificate finds its key.
	write(t, p.KeyFile+".tmp", "PRIVATE KEY", kder)
	write(t, p.CertFile+".tmp", "CERTIFICATE", der)
	for _, f := range []string{p.KeyFile, p.CertFile} {
		if err := os.Rename(f+".tmp", f); err != nil {
			t.Fatal(err)
		}
	}
	return p
}
