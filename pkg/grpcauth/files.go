package grpcauth

import (
	"crypto/sha256"
	"crypto/tls"
	"crypto/x509"
	"encoding/pem"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"sync"
	"time"
)

// checkEvery bounds how often a watched file set is looked at: at most
// once a second, on the first handshake after that.
var checkEvery = time.Second

// watched holds what was loaded from a set of files and loads it again
// when their contents change (a renewed certificate, a Kubernetes Secret
// update), on use: no goroutine. A load that fails keeps the last good
// value, so a half-written file never takes a port down.
type watched[T any] struct {
	paths []string
	load  func() (T, error)
	what  string
	log   *slog.Logger

	mu      sync.Mutex // guards the fields below
	checked time.Time
	sum     [sha256.Size]byte
	val     T
}

func newWatched[T any](what string, log *slog.Logger, load func() (T, error), paths ...string) (*watched[T], error) {
	w := &watched[T]{paths: paths, load: load, what: what, log: log}
	sum, err := w.digest()
	if err != nil {
		return nil, err
	}
	if w.val, err = load(); err != nil {
		return nil, err
	}
	w.sum, w.checked = sum, time.Now()
	return w, nil
}

func (w *watched[T]) digest() ([sha256.Size]byte, error) {
	h := sha256.New()
	for _, p := range w.paths {
		b, err := os.ReadFile(p)
		if err != nil {
			return [sha256.Size]byte{}, fmt.Errorf("%s: %w", w.what, err)
		}
		h.Write(b)
		h.Write([]byte{0})
	}
	var s [sha256.Size]byte
	h.Sum(s[:0])
	return s, nil
}

// get returns the current value, reloading it first if the files changed.
func (w *watched[T]) get() T {
	w.mu.Lock()
	defer w.mu.Unlock()
	now := time.Now()
	if now.Sub(w.checked) < checkEvery {
		return w.val
	}
	w.checked = now
	sum, err := w.digest()
	if err != nil {
		w.log.Warn("TLS files not re-read; keeping the ones in use", "what", w.what, "err", err)
		return w.val
	}
	if sum == w.sum {
		return w.val
	}
	v, err := w.load()
	if err != nil {
		w.log.Warn("TLS files changed but do not load; keeping the ones in use", "what", w.what, "err", err)
		return w.val
	}
	w.val, w.sum = v, sum
	w.log.Info("TLS files reloaded", "what", w.what)
	return w.val
}

func loadKeyPair(cert, key string) func() (*tls.Certificate, error) {
	return func() (*tls.Certificate, error) {
		kp, err := tls.LoadX509KeyPair(cert, key)
		if err != nil {
			return nil, fmt.Errorf("certificate %s with key %s: %w", cert, key, err)
		}
		return &kp, nil
	}
}

// caSet is the CAs of one PEM file.
type caSet struct {
	pool  *x509.CertPool
	certs []*x509.Certificate
}

func (c *caSet) holds(root *x509.Certificate) bool {
	if c == nil {
		return false
	}
	for _, ca := range c.certs {
		if ca.Equal(root) {
			return true
		}
	}
	return false
}

func readCAs(path string) (*caSet, error) {
	if path == "" {
		return nil, nil
	}
	b, err := os.ReadFile(path)
	if err != nil {
		return nil, fmt.Errorf("CA file: %w", err)
	}
	set := &caSet{pool: x509.NewCertPool()}
	for len(b) > 0 {
		var blk *pem.Block
		blk, b = pem.Decode(b)
		if blk == nil {
			break
		}
		if blk.Type != "CERTIFICATE" {
			continue
		}
		c, err := x509.ParseCertificate(blk.Bytes)
		if err != nil {
			return nil, fmt.Errorf("CA file %s: %w", path, err)
		}
		set.pool.AddCert(c)
		set.certs = append(set.certs, c)
	}
	if len(set.certs) == 0 {
		return nil, fmt.Errorf("CA file %s: no PEM certificate in it", path)
	}
	return set, nil
}

// clientCAs are the two CAs a server checks client certificates against.
type clientCAs struct {
	backend, cluster *caSet
	pool             *x509.CertPool // both
}

func loadClientCAs(backend, cluster string) func() (*clientCAs, error) {
	return func() (*clientCAs, error) {
		var c clientCAs
		var err error
		if c.backend, err = readCAs(backend); err != nil {
			return nil, fmt.Errorf("backend %w", err)
		}
		if c.cluster, err = readCAs(cluster); err != nil {
			return nil, fmt.Errorf("cluster %w", err)
		}
		c.pool = x509.NewCertPool()
		for _, s := range []*caSet{c.backend, c.cluster} {
			if s != nil {
				for _, ca := range s.certs {
					c.pool.AddCert(ca)
				}
			}
		}
		return &c, nil
	}
}

// verifyServer checks a server's chain against roots for name, as
// crypto/tls would with RootCAs: used where the roots may be re-read.
func verifyServer(cs tls.ConnectionState, name string, roots *x509.CertPool) error {
	if len(cs.PeerCertificates) == 0 {
		return errors.New("tls: server sent no certificate")
	}
	inter := x509.NewCertPool()
	for _, c := range cs.PeerCertificates[1:] {
		inter.AddCert(c)
	}
	_, err := cs.PeerCertificates[0].Verify(x509.VerifyOptions{
		DNSName: name, Roots: roots, Intermediates: inter,
		KeyUsages: []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth},
	})
	return err
}
