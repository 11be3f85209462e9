package store

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"log/slog"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"time"

	"golang.org/x/sys/unix"

	"github.com/pushcluster/push/pkg/ring"
)

// DefaultPollInterval is how often a watched file is re-read even without a
// change notification: a safety net for file systems and setups inotify
// does not cover (network file systems, a symlink to another directory,
// the inotify instance limit reached).
const DefaultPollInterval = time.Second

// settle is how long the watcher lets a burst of directory events (an
// editor's truncate-then-write, a ConfigMap's symlink swap) finish before
// it reads, so that it rarely reads a half-written hand edit.
const settle = 5 * time.Millisecond

// File is the file store: one JSON document (ring.Document.Marshal's
// form) at a path. Create it with OpenFile or Open.
//
// Writers in any process serialise on flock(2) of path+".lock" (beside the
// file that path resolves to); the lock file is never removed, since a
// removed lock file would let two writers lock two different inodes.
// Readers never lock: writes replace the file by rename, so a reader sees
// either the old or the new document, never a mix.
//
// Watch follows the parent directory with inotify and re-reads the file
// every DefaultPollInterval as well; one watcher goroutine serves every
// Watch of a File, from the first Watch until Close. A File is safe for
// concurrent use; mu guards the watch state.
type File struct {
	path      string // absolute; may be a symlink
	dir       string // filepath.Dir(path), the watched directory
	log       *slog.Logger
	poll      time.Duration
	noInotify bool          // tests: rely on polling alone
	stop      chan struct{} // closed by Close

	mu       sync.Mutex
	closed   bool
	loopDone chan struct{}        // closed when the watch loop has exited; nil until the first Watch
	notes    *os.File             // the inotify descriptor, nil if unavailable
	cur      *ring.Document       // newest valid document seen by the watcher
	raw      []byte               // bytes of the last read, valid or not, to skip re-parsing
	problem  string               // last problem logged, so a 1 s re-read logs it once
	subs     map[*sub]func() bool // watcher -> stop of its context.AfterFunc

	revs revCache // the revocations file's last parse
}

// sub is one Watch call. Its channel has room for one document, and the
// watcher replaces an unread document by a newer one.
type sub struct{ ch chan *ring.Document }

var _ Store = (*File)(nil)

// OpenFile opens the file store at path. The file need not exist (Load
// then returns ErrNotFound, and CompareAndSwap with prev 0 creates it),
// but its directory must. log receives warnings (slog.Default() when nil).
func OpenFile(path string, log *slog.Logger) (*File, error) {
	if path == "" {
		return nil, errors.New("store: empty path")
	}
	abs, err := filepath.Abs(path)
	if err != nil {
		return nil, fmt.Errorf("store %s: %w", path, err)
	}
	dir := filepath.Dir(abs)
	st, err := os.Stat(dir)
	if err != nil {
		return nil, fmt.Errorf("store %s: directory: %w", path, err)
	}
	if !st.IsDir() {
		return nil, fmt.Errorf("store %s: %s is not a directory", path, dir)
	}
	if st, err := os.Stat(abs); err == nil && st.IsDir() {
		return nil, fmt.Errorf("store %s: is a directory, want a file", path)
	}
	if log == nil {
		log = slog.Default()
	}
	return &File{path: abs, dir: dir, log: log.With("store", abs), poll: DefaultPollInterval,
		stop: make(chan struct{}), subs: make(map[*sub]func() bool)}, nil
}

// Path returns the absolute path of the document.
func (f *File) Path() string { return f.path }

// Load implements Store.
func (f *File) Load(ctx context.Context) (*ring.Document, error) {
	if err := ctx.Err(); err != nil {
		return nil, err
	}
	if f.isClosed() {
		return nil, ErrClosed
	}
	data, err := readDoc(f.path)
	if errors.Is(err, fs.ErrNotExist) {
		return nil, fmt.Errorf("load %s: %w", f.path, ErrNotFound)
	}
	if err != nil {
		return nil, fmt.Errorf("load %s: %w", f.path, err)
	}
	d, err := ring.Parse(data)
	if err != nil {
		return nil, fmt.Errorf("load %s: %w", f.path, err)
	}
	return d, nil
}

// CompareAndSwap implements Store. It writes through a symlink to the file
// the link names, so a link to a shared document stays a link. A stored
// document that does not validate (written by hand) counts as the version
// its "version" field says (0 if unreadable) and is replaced only with
// force.
func (f *File) CompareAndSwap(ctx context.Context, prev uint64, next *ring.Document, force bool) error {
	if f.isClosed() {
		return ErrClosed
	}
	if next == nil {
		return fmt.Errorf("store %s: %w: nil document", f.path, ring.ErrInvalid)
	}
	if next.Version <= prev {
		return fmt.Errorf("store %s: %w: next version %d must be greater than %d", f.path, ring.ErrInvalid, next.Version, prev)
	}
	data, err := next.Marshal()
	if err != nil {
		return fmt.Errorf("store %s: %w", f.path, err)
	}
	if len(data) > ring.MaxDocumentSize {
		return fmt.Errorf("store %s: %w: document is %d bytes, more than %d", f.path, ring.ErrInvalid, len(data), ring.MaxDocumentSize)
	}
	target := f.path
	if t, err := filepath.EvalSymlinks(f.path); err == nil {
		target = t
	}
	unlock, err := lockFile(ctx, target+".lock")
	if err != nil {
		return fmt.Errorf("store %s: %w", f.path, err)
	}
	defer unlock()

	// stored is the version on disk: 0 when nothing is, and for a
	// hand-written document that does not validate, the version it claims,
	// so that the operator can replace it knowingly (with force).
	var cur *ring.Document
	var stored uint64
	var invalid error
	raw, err := readDoc(target)
	switch {
	case errors.Is(err, fs.ErrNotExist):
	case err != nil && !errors.Is(err, ring.ErrInvalid):
		return fmt.Errorf("store %s: read: %w", f.path, err)
	default:
		if err == nil {
			cur, err = ring.Parse(raw)
		}
		if err != nil {
			var v struct{ Version uint64 }
			_ = json.Unmarshal(raw, &v)
			stored, invalid = v.Version, err
		} else {
			stored = cur.Version
		}
	}
	if stored != prev {
		return fmt.Errorf("store %s: %w: stored version is %d, not %d", f.path, ErrVersionConflict, stored, prev)
	}
	if invalid != nil && !force {
		return fmt.Errorf("store %s: the stored document is invalid, pass force to replace it: %w", f.path, invalid)
	}
	if err := ring.CheckTransition(cur, next, force); err != nil {
		return fmt.Errorf("store %s: %w", f.path, err)
	}
	if err := writeAtomic(target, data); err != nil {
		return fmt.Errorf("store %s: %w", f.path, err)
	}
	return nil
}

// Watch implements Store.
func (f *File) Watch(ctx context.Context) (<-chan *ring.Document, error) {
	if err := ctx.Err(); err != nil {
		return nil, err
	}
	f.mu.Lock()
	defer f.mu.Unlock()
	if f.closed {
		return nil, ErrClosed
	}
	if f.loopDone == nil {
		f.startLocked()
	}
	// Read now, so that a new watcher starts from what is on disk rather
	// than from what the loop saw up to a poll interval ago.
	f.refreshLocked()
	s := &sub{ch: make(chan *ring.Document, 1)}
	if f.cur != nil {
		s.ch <- clone(f.cur)
	}
	f.subs[s] = context.AfterFunc(ctx, func() {
		f.mu.Lock()
		defer f.mu.Unlock()
		if _, ok := f.subs[s]; ok {
			delete(f.subs, s)
			close(s.ch)
		}
	})
	return s.ch, nil
}

// Close implements Store.
func (f *File) Close() error {
	f.mu.Lock()
	if f.closed {
		f.mu.Unlock()
		return nil
	}
	f.closed = true
	close(f.stop)
	if f.notes != nil {
		f.notes.Close() // unblocks the event reader
	}
	for s, stop := range f.subs {
		stop()
		delete(f.subs, s)
		close(s.ch)
	}
	done := f.loopDone
	f.mu.Unlock()
	if done != nil {
		<-done
	}
	return nil
}

func (f *File) isClosed() bool {
	f.mu.Lock()
	defer f.mu.Unlock()
	return f.closed
}

// startLocked sets up the directory watch and starts the loop. Without
// inotify (limit reached, tests) the loop still polls.
func (f *File) startLocked() {
	f.loopDone = make(chan struct{})
	events := make(chan struct{}, 1)
	if !f.noInotify {
		notes, err := watchDir(f.dir)
		if err != nil {
			f.log.Warn("ring store: no inotify, re-reading every poll interval only", "dir", f.dir, "poll", f.poll, "err", err)
		} else {
			f.notes = notes
			base := filepath.Base(f.path)
			go readEvents(notes, func(name string) bool {
				// Our own temporary files and lock file say nothing new;
				// the rename that publishes a write is an event on base.
				return strings.HasPrefix(name, tempPrefix(base)) || name == base+".lock"
			}, events)
		}
	}
	go f.loop(events)
}

// loop re-reads the file on directory events and every poll interval.
func (f *File) loop(events <-chan struct{}) {
	defer close(f.loopDone)
	t := time.NewTicker(f.poll)
	defer t.Stop()
	for {
		select {
		case <-f.stop:
			return
		case <-t.C:
		case <-events:
			select {
			case <-f.stop:
				return
			case <-time.After(settle):
			}
		}
		f.mu.Lock()
		if !f.closed {
			f.refreshLocked()
		}
		f.mu.Unlock()
	}
}

// refreshLocked reads the file and hands a newer valid document to every
// watcher. Problems are logged once each, not on every poll.
func (f *File) refreshLocked() {
	data, err := readDoc(f.path)
	if err != nil && !errors.Is(err, ring.ErrInvalid) {
		if errors.Is(err, fs.ErrNotExist) && f.cur == nil {
			return // nothing written yet: not a problem
		}
		f.report("ring store: cannot read the document, keeping the last good one", err)
		f.raw = nil
		return
	}
	if err == nil && f.raw != nil && bytes.Equal(data, f.raw) {
		return
	}
	f.raw = data
	var d *ring.Document
	if err == nil {
		d, err = ring.Parse(data)
	}
	if err != nil {
		f.report("ring store: invalid document skipped, keeping the last good one", err)
		return
	}
	if f.cur != nil && d.Version <= f.cur.Version {
		if d.Version < f.cur.Version || !sameDocument(d, f.cur) {
			f.report("ring store: document changed without a higher version, ignored",
				fmt.Errorf("version %d, in force %d", d.Version, f.cur.Version))
		}
		return
	}
	f.problem = ""
	f.cur = d
	for s := range f.subs {
		select { // drop the unread older version: the newest wins
		case <-s.ch:
		default:
		}
		s.ch <- clone(d)
	}
}

func (f *File) report(msg string, err error) {
	if p := msg + err.Error(); p != f.problem {
		f.problem = p
		version := uint64(0)
		if f.cur != nil {
			version = f.cur.Version
		}
		f.log.Warn(msg, "err", err, "version_in_force", version)
	}
}

func sameDocument(a, b *ring.Document) bool {
	x, err1 := a.Marshal()
	y, err2 := b.Marshal()
	return err1 == nil && err2 == nil && bytes.Equal(x, y)
}

// readDoc reads at most ring.MaxDocumentSize bytes of path; a larger file
// is an error wrapping ring.ErrInvalid, read no further.
func readDoc(path string) ([]byte, error) {
	fh, err := os.Open(path)
	if err != nil {
		return nil, err
	}
	defer fh.Close()
	data, err := io.ReadAll(io.LimitReader(fh, ring.MaxDocumentSize+1))
	if err != nil {
		return nil, err
	}
	if len(data) > ring.MaxDocumentSize {
		return nil, fmt.Errorf("%w: document is more than %d bytes", ring.ErrInvalid, ring.MaxDocumentSize)
	}
	return data, nil
}

func tempPrefix(base string) string { return "." + base + ".tmp-" }

// writeAtomic replaces path with data so that no reader ever sees a partial
// document and a crash leaves either the old or the new one: write a
// temporary file in the same directory, fsync it, rename it over path,
// fsync the directory (which makes the rename durable).
func writeAtomic(path string, data []byte) (err error) {
	dir, base := filepath.Split(path)
	tmp, err := os.CreateTemp(dir, tempPrefix(base)+"*")
	if err != nil {
		return fmt.Errorf("write: %w", err)
	}
	defer func() {
		if err != nil {
			tmp.Close()
			os.Remove(tmp.Name())
		}
	}()
	mode := fs.FileMode(0o644) // every process of the cluster may read the ring
	if st, err := os.Stat(path); err == nil {
		mode = st.Mode().Perm()
	}
	if err := tmp.Chmod(mode); err != nil {
		return fmt.Errorf("write: %w", err)
	}
	if _, err := tmp.Write(data); err != nil {
		return fmt.Errorf("write: %w", err)
	}
	if err := tmp.Sync(); err != nil {
		return fmt.Errorf("write: fsync: %w", err)
	}
	if err := tmp.Close(); err != nil {
		return fmt.Errorf("write: %w", err)
	}
	if err := os.Rename(tmp.Name(), path); err != nil {
		return fmt.Errorf("write: %w", err)
	}
	if d, err := os.Open(filepath.Clean(dir)); err == nil {
		err = d.Sync()
		d.Close()
		if err != nil {
			return fmt.Errorf("write: fsync directory: %w", err)
		}
	}
	return nil
}

// lockFile takes an exclusive flock(2) on path, creating it if needed, and
// returns the release. flock locks belong to the open file description, so
// two Stores in one process exclude each other as two processes do. The
// wait polls with LOCK_NB so that ctx can end it; holders keep the lock
// only for one read and one write.
func lockFile(ctx context.Context, path string) (func(), error) {
	fh, err := os.OpenFile(path, os.O_RDWR|os.O_CREATE, 0o644)
	if err != nil {
		return nil, fmt.Errorf("lock: %w", err)
	}
	fd := int(fh.Fd())
	delay := time.Millisecond
	for {
		err := unix.Flock(fd, unix.LOCK_EX|unix.LOCK_NB)
		if err == nil {
			return func() {
				unix.Flock(fd, unix.LOCK_UN)
				fh.Close()
			}, nil
		}
		if !errors.Is(err, unix.EWOULDBLOCK) && !errors.Is(err, unix.EINTR) {
			fh.Close()
			return nil, fmt.Errorf("lock %s: %w", path, err)
		}
		t := time.NewTimer(delay)
		select {
		case <-ctx.Done():
			t.Stop()
			fh.Close()
			return nil, fmt.Errorf("lock %s: %w", path, ctx.Err())
		case <-t.C:
		}
		delay = min(2*delay, 50*time.Millisecond)
	}
}
