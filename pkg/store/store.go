// Package store keeps the ring document (package ring) that every router,
// edge, SDK and pushctl follows, and tells them when it changes.
//
// A Store is a versioned register with optimistic concurrency: Load reads
// the document, CompareAndSwap replaces it only if its version is still the
// one the caller read (so two operators editing at once cannot silently
// overwrite each other), and Watch streams every newer version. The
// contract is deliberately small so that it maps one to one onto etcd: a
// compare-and-swap is a transaction on the key, a watch is an etcd watch,
// and liveness can later ride on leases without changing callers.
//
// The file store (OpenFile) is the embedded default. It is written
// atomically (temporary file, fsync, rename), serialises writers of every
// process with flock(2) on a lock file beside the document, and watches the
// document's directory, not its inode, so that a Kubernetes ConfigMap that
// swaps its "..data" symlink is followed too.
package store

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"strings"

	"github.com/pushcluster/push/pkg/ring"
)

// Store holds the desired ring document. Every router, edge and SDK follows
// the same store. Implementations are safe for concurrent use.
type Store interface {
	// Load returns the current document; an error wrapping ErrNotFound if
	// none was ever written, one wrapping ring.ErrInvalid if the stored
	// document does not validate.
	Load(ctx context.Context) (*ring.Document, error)
	// CompareAndSwap writes next only if the stored document's version
	// equals prev (prev 0: nothing stored yet). next must validate
	// (ring.Document.Validate) and pass ring.CheckTransition(current, next,
	// force); next.Version must be greater than prev. A concurrent change
	// yields an error wrapping ErrVersionConflict; reload and retry.
	CompareAndSwap(ctx context.Context, prev uint64, next *ring.Document, force bool) error
	// Watch sends the current document (if any) at once, then every newer
	// version, until ctx ends or the store is closed; then the channel is
	// closed. A slow reader misses only intermediate versions, never the
	// newest. A stored document that does not validate is logged and
	// skipped, and the last good one stays in force. Each document
	// received is the reader's own copy.
	Watch(ctx context.Context) (<-chan *ring.Document, error)
	// Close stops every watch and releases the store's resources.
	Close() error
}

// Errors callers branch on with errors.Is.
var (
	// ErrNotFound: no document was ever written.
	ErrNotFound = errors.New("ring document not found")
	// ErrVersionConflict: the stored version is not the one the
	// caller's compare-and-swap expected.
	ErrVersionConflict = errors.New("version conflict")
	// ErrClosed: the store was closed.
	ErrClosed = errors.New("store closed")
	// ErrUnsupported: the store URL names a backend this build lacks.
	ErrUnsupported = errors.New("unsupported store")
)

// Open opens the store a URL names:
//
//	file:./ring.json, file:/abs/ring.json, file:///abs/ring.json, ./ring.json
//	    the file store (OpenFile); a bare path means a file
//	etcd://host:2379[,host:2379...][/prefix]
//	    the etcd store (see Etcd): desired document, leases for liveness
//
// log receives the store's warnings (slog.Default() when nil); opts set
// the etcd store's TLS and credentials (WithEtcdSecurity).
func Open(url string, log *slog.Logger, opts ...Option) (Store, error) {
	scheme, rest, hasScheme := strings.Cut(url, ":")
	if !hasScheme || !isScheme(scheme) {
		scheme, rest = "file", url
	}
	switch scheme {
	case "file":
		path := rest
		if strings.HasPrefix(rest, "//") {
			// file:///abs/path: only the empty (local) host is meaningful.
			host, p, _ := strings.Cut(strings.TrimPrefix(rest, "//"), "/")
			if host != "" && host != "localhost" {
				return nil, fmt.Errorf("store %q: a file URL cannot name host %q", url, host)
			}
			path = "/" + p
		}
		if path == "" {
			return nil, fmt.Errorf("store %q: empty path", url)
		}
		f, err := OpenFile(path, log)
		if err != nil {
			return nil, err
		}
		return f, nil
	case "etcd":
		e, err := OpenEtcd(url, log, opts...)
		if err != nil {
			return nil, err // not a typed nil in the interface
		}
		return e, nil
	}
	return nil, fmt.Errorf("store %q: unknown scheme %q (want file: or etcd://): %w", url, scheme, ErrUnsupported)
}

// isScheme reports whether s looks like a URL scheme (RFC 3986), so that a
// bare path with a colon further on is still taken as a path. A single
// letter is not taken as a scheme, to keep "C:..."-style names paths.
func isScheme(s string) bool {
	if len(s) < 2 {
		return false
	}
	for i := 0; i < len(s); i++ {
		c := s[i]
		switch {
		case c >= 'a' && c <= 'z', c >= 'A' && c <= 'Z':
		case i > 0 && (c >= '0' && c <= '9' || c == '+' || c == '-' || c == '.'):
		default:
			return false
		}
	}
	return true
}

// clone returns a deep copy of d, so that every reader owns what it gets.
func clone(d *ring.Document) *ring.Document {
	c := *d
	c.Members = append([]ring.Member(nil), d.Members...)
	if d.Params.Avalanche != nil {
		a := *d.Params.Avalanche
		c.Params.Avalanche = &a
	}
	return &c
}
