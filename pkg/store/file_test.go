package store_test

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"github.com/pushcluster/push/pkg/owner"
	"github.com/pushcluster/push/pkg/ring"
	"github.com/pushcluster/push/pkg/store"
)

// bound is the generous limit for anything the watcher should notice.
const bound = 10 * time.Second

func testDoc(version uint64, n int) *ring.Document {
	d := &ring.Document{Version: version}
	for i := 1; i <= n; i++ {
		d.Members = append(d.Members, ring.Member{ID: uint32(i), Name: fmt.Sprintf("e%d", i),
			WS: fmt.Sprintf("127.0.0.1:%d", 8000+i), GRPC: fmt.Sprintf("127.0.0.1:%d", 9000+i), Weight: 1})
	}
	return d
}

func quiet() *slog.Logger { return slog.New(slog.NewTextHandler(io.Discard, nil)) }

func openFile(t *testing.T, path string) *store.File {
	t.Helper()
	f, err := store.OpenFile(path, quiet())
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { f.Close() })
	return f
}

func writeDoc(t *testing.T, path string, d *ring.Document) {
	t.Helper()
	b, err := d.Marshal()
	if err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(path, b, 0o644); err != nil {
		t.Fatal(err)
	}
}

// next receives one document, failing after bound.
func next(t *testing.T, ch <-chan *ring.Document) *ring.Document {
	t.Helper()
	select {
	case d, ok := <-ch:
		if !ok {
			t.Fatal("watch channel closed")
		}
		return d
	case <-time.After(bound):
		t.Fatalf("no document within %v", bound)
		return nil
	}
}

// waitVersion receives until version v arrives; versions must increase.
func waitVersion(t *testing.T, ch <-chan *ring.Document, v uint64) *ring.Document {
	t.Helper()
	var last uint64
	deadline := time.After(bound)
	for {
		select {
		case d, ok := <-ch:
			if !ok {
				t.Fatalf("watch closed before version %d", v)
			}
			if d.Version <= last {
				t.Fatalf("version %d after %d: not increasing", d.Version, last)
			}
			last = d.Version
			if d.Version == v {
				return d
			}
			if d.Version > v {
				t.Fatalf("got version %d, want %d", d.Version, v)
			}
		case <-deadline:
			t.Fatalf("version %d not seen within %v (last %d)", v, bound, last)
		}
	}
}

// noDocument asserts that nothing arrives within a window in which the
// watcher re-reads several times. It can only miss a bug, never fail a
// correct store.
func noDocument(t *testing.T, ch <-chan *ring.Document, within time.Duration) {
	t.Helper()
	select {
	case d := <-ch:
		t.Fatalf("unexpected document version %d", d.Version)
	case <-time.After(within):
	}
}

func TestOpenURLs(t *testing.T) {
	dir := t.TempDir()
	abs := filepath.Join(dir, "ring.json")
	t.Chdir(dir)
	for _, url := range []string{"file:./ring.json", "file:" + abs, "file://" + abs, "./ring.json", "ring.json", abs} {
		st, err := store.Open(url, quiet())
		if err != nil {
			t.Errorf("%s: %v", url, err)
			continue
		}
		if got := st.(*store.File).Path(); got != abs {
			t.Errorf("%s: path %s, want %s", url, got, abs)
		}
		st.Close()
	}
	for url, want := range map[string]string{
		"etcd:///push":                "want etcd://host:port",
		"ftp://x/ring.json":           `unknown scheme "ftp"`,
		"file://otherhost/ring.json":  `cannot name host "otherhost"`,
		"file:":                       "empty path",
		"":                            "empty path",
		"file:/no/such/dir/ring.json": "no such file or directory",
		"file:" + dir:                 "is a directory",
	} {
		st, err := store.Open(url, quiet())
		if err == nil || !strings.Contains(err.Error(), want) {
			t.Errorf("%q: %v, want an error containing %q", url, err, want)
		}
		if st != nil {
			t.Errorf("%q: non-nil store with an error", url)
		}
	}
	if _, err := store.Open("zk://x/y", nil); !errors.Is(err, store.ErrUnsupported) {
		t.Errorf("zk: %v, want ErrUnsupported", err)
	}
}

func TestCompareAndSwap(t *testing.T) {
	ctx := context.Background()
	path := filepath.Join(t.TempDir(), "ring.json")
	f := openFile(t, path)

	if _, err := f.Load(ctx); !errors.Is(err, store.ErrNotFound) {
		t.Fatalf("Load of nothing: %v, want ErrNotFound", err)
	}
	if err := f.CompareAndSwap(ctx, 1, testDoc(2, 3), false); !errors.Is(err, store.ErrVersionConflict) {
		t.Fatalf("CAS prev 1 on nothing: %v, want a version conflict", err)
	}
	if err := f.CompareAndSwap(ctx, 0, testDoc(1, 3), false); err != nil {
		t.Fatal(err)
	}
	d, err := f.Load(ctx)
	if err != nil || d.Version != 1 || len(d.Members) != 3 || d.Params.Partitions != ring.DefaultPartitions {
		t.Fatalf("Load: %+v, %v", d, err)
	}
	if err := f.CompareAndSwap(ctx, 0, testDoc(2, 3), false); !errors.Is(err, store.ErrVersionConflict) ||
		!strings.Contains(err.Error(), "version conflict") || !strings.Contains(err.Error(), "stored version is 1, not 0") {
		t.Fatalf("stale CAS: %v, want a version conflict naming both versions", err)
	}
	if err := f.CompareAndSwap(ctx, 1, testDoc(1, 3), false); !errors.Is(err, ring.ErrInvalid) {
		t.Fatalf("CAS to the same version: %v, want ErrInvalid", err)
	}
	bad := testDoc(2, 3)
	bad.Members[1].Name = "e1"
	if err := f.CompareAndSwap(ctx, 1, bad, false); !errors.Is(err, ring.ErrInvalid) || !strings.Contains(err.Error(), "duplicate name") {
		t.Fatalf("CAS of an invalid document: %v", err)
	}
	haproxy := testDoc(2, 3)
	haproxy.Algorithm = ring.AlgorithmHAProxy
	if err := f.CompareAndSwap(ctx, 1, haproxy, false); !errors.Is(err, ring.ErrInvalid) || !strings.Contains(err.Error(), "pass force") {
		t.Fatalf("CAS changing the algorithm without force: %v", err)
	}
	if err := f.CompareAndSwap(ctx, 1, haproxy, true); err != nil {
		t.Fatalf("CAS changing the algorithm with force: %v", err)
	}
	if d, _ := f.Load(ctx); d.Version != 2 || d.Algorithm != ring.AlgorithmHAProxy {
		t.Fatalf("after forced CAS: %+v", d)
	}
	if st, err := os.Stat(path); err != nil || st.Mode().Perm() != 0o644 {
		t.Fatalf("mode: %v %v", st.Mode(), err)
	}
	// Nothing but the document and its lock file is left behind.
	entries, _ := os.ReadDir(filepath.Dir(path))
	var names []string
	for _, e := range entries {
		names = append(names, e.Name())
	}
	if strings.Join(names, " ") != "ring.json ring.json.lock" {
		t.Fatalf("directory holds %v", names)
	}
}

func TestCompareAndSwapOverInvalidDocumentNeedsForce(t *testing.T) {
	ctx := context.Background()
	path := filepath.Join(t.TempDir(), "ring.json")
	f := openFile(t, path)
	os.WriteFile(path, []byte(`{"version": 7, "members": []}`), 0o644)
	if _, err := f.Load(ctx); !errors.Is(err, ring.ErrInvalid) {
		t.Fatalf("Load of an invalid document: %v", err)
	}
	if err := f.CompareAndSwap(ctx, 7, testDoc(8, 2), false); err == nil || !strings.Contains(err.Error(), "pass force") {
		t.Fatalf("CAS over an invalid document without force: %v", err)
	}
	if err := f.CompareAndSwap(ctx, 6, testDoc(8, 2), true); !errors.Is(err, store.ErrVersionConflict) {
		t.Fatalf("CAS with the wrong prev: %v", err)
	}
	if err := f.CompareAndSwap(ctx, 7, testDoc(8, 2), true); err != nil {
		t.Fatal(err)
	}
	if d, err := f.Load(ctx); err != nil || d.Version != 8 {
		t.Fatalf("Load: %v %v", d, err)
	}
}

func TestCompareAndSwapWritesThroughSymlink(t *testing.T) {
	ctx := context.Background()
	dir := t.TempDir()
	os.Mkdir(filepath.Join(dir, "shared"), 0o755)
	real := filepath.Join(dir, "shared", "ring.json")
	writeDoc(t, real, testDoc(1, 2))
	link := filepath.Join(dir, "ring.json")
	if err := os.Symlink("shared/ring.json", link); err != nil {
		t.Fatal(err)
	}
	f := openFile(t, link)
	if err := f.CompareAndSwap(ctx, 1, testDoc(2, 2), false); err != nil {
		t.Fatal(err)
	}
	if target, err := os.Readlink(link); err != nil || target != "shared/ring.json" {
		t.Fatalf("the link was replaced: %q %v", target, err)
	}
	if d, err := ring.Parse(mustRead(t, real)); err != nil || d.Version != 2 {
		t.Fatalf("the linked file: %v %v", d, err)
	}
}

func mustRead(t *testing.T, path string) []byte {
	t.Helper()
	b, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	return b
}

func TestLoadRefusesOversizedFile(t *testing.T) {
	path := filepath.Join(t.TempDir(), "ring.json")
	os.WriteFile(path, bytes.Repeat([]byte(" "), ring.MaxDocumentSize+1), 0o644)
	f := openFile(t, path)
	if _, err := f.Load(context.Background()); !errors.Is(err, ring.ErrInvalid) || !strings.Contains(err.Error(), "more than") {
		t.Fatalf("Load: %v", err)
	}
}

// TestRacingCompareAndSwap races writers on one version from several Store
// instances (each with its own lock descriptor, as separate processes have)
// while readers parse the file in a loop: each round exactly one writer
// wins, and no reader ever sees a partial document.
func TestRacingCompareAndSwap(t *testing.T) {
	ctx := context.Background()
	path := filepath.Join(t.TempDir(), "ring.json")
	stores := []*store.File{openFile(t, path), openFile(t, path), openFile(t, path)}
	if err := stores[0].CompareAndSwap(ctx, 0, testDoc(1, 3), false); err != nil {
		t.Fatal(err)
	}

	stopReaders := make(chan struct{})
	var readers sync.WaitGroup
	var reads atomic.Int64
	defer func() { // also when a round fails: no reader may outlive the test
		close(stopReaders)
		readers.Wait()
	}()
	for range 2 {
		readers.Add(1)
		go func() {
			defer readers.Done()
			for {
				select {
				case <-stopReaders:
					return
				default:
				}
				b, err := os.ReadFile(path)
				if err != nil {
					t.Errorf("read: %v", err)
					return
				}
				if _, err := ring.Parse(b); err != nil {
					t.Errorf("a reader saw a broken document: %v\n%s", err, b)
					return
				}
				reads.Add(1)
			}
		}()
	}

	const rounds, writersPerStore = 15, 3
	for round := uint64(1); round <= rounds; round++ {
		var wins, conflicts atomic.Int32
		var wg sync.WaitGroup
		for si, st := range stores {
			for w := range writersPerStore {
				wg.Add(1)
				go func() {
					defer wg.Done()
					d := testDoc(round+1, 3)
					d.Members[0].Weight = 1 + si*writersPerStore + w // who wrote it
					switch err := st.CompareAndSwap(ctx, round, d, false); {
					case err == nil:
						wins.Add(1)
					case errors.Is(err, store.ErrVersionConflict):
						conflicts.Add(1)
					default:
						t.Errorf("round %d: %v", round, err)
					}
				}()
			}
		}
		wg.Wait()
		if wins.Load() != 1 || conflicts.Load() != int32(len(stores)*writersPerStore-1) {
			t.Fatalf("round %d: %d wins, %d conflicts; want exactly one winner", round, wins.Load(), conflicts.Load())
		}
		if d, err := stores[1].Load(ctx); err != nil || d.Version != round+1 {
			t.Fatalf("round %d: stored %v, %v", round, d, err)
		}
	}
	if reads.Load() == 0 {
		t.Fatal("the readers never read")
	}
}

// TestCompareAndSwapAcrossProcesses runs read-increment-CAS loops in two
// child processes and this one: no increment may be lost, so the final
// version counts every one.
func TestCompareAndSwapAcrossProcesses(t *testing.T) {
	const perProcess = 20
	if path := os.Getenv("STORE_TEST_CHILD_PATH"); path != "" {
		increment(t, path, perProcess)
		return
	}
	path := filepath.Join(t.TempDir(), "ring.json")
	f := openFile(t, path)
	if err := f.CompareAndSwap(context.Background(), 0, testDoc(1, 2), false); err != nil {
		t.Fatal(err)
	}
	var children []*exec.Cmd
	var outs []*bytes.Buffer
	for range 2 {
		cmd := exec.Command(os.Args[0], "-test.run=^TestCompareAndSwapAcrossProcesses$", "-test.count=1")
		cmd.Env = append(os.Environ(), "STORE_TEST_CHILD_PATH="+path)
		out := new(bytes.Buffer)
		cmd.Stdout, cmd.Stderr = out, out
		if err := cmd.Start(); err != nil {
			t.Fatal(err)
		}
		children, outs = append(children, cmd), append(outs, out)
	}
	increment(t, path, perProcess)
	for i, c := range children {
		if err := c.Wait(); err != nil {
			t.Fatalf("child %d: %v\n%s", i, err, outs[i])
		}
	}
	d, err := f.Load(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	if want := uint64(1 + 3*perProcess); d.Version != want {
		t.Fatalf("version %d after %d increments from 3 processes, want %d: updates were lost", d.Version, 3*perProcess, want)
	}
}

func increment(t *testing.T, path string, n int) {
	f := openFile(t, path)
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	for done := 0; done < n; {
		d, err := f.Load(ctx)
		if err != nil {
			t.Fatal(err)
		}
		prev := d.Version
		d.Version++
		switch err := f.CompareAndSwap(ctx, prev, d, false); {
		case err == nil:
			done++
		case errors.Is(err, store.ErrVersionConflict):
		default:
			t.Fatal(err)
		}
	}
}

func TestWatchSeesAnotherInstancesWrite(t *testing.T) {
	ctx := t.Context()
	path := filepath.Join(t.TempDir(), "ring.json")
	reader, writer := openFile(t, path), openFile(t, path)
	store.SetPoll(reader, time.Hour) // inotify alone must be enough

	ch, err := reader.Watch(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if err := writer.CompareAndSwap(ctx, 0, testDoc(1, 3), false); err != nil {
		t.Fatal(err)
	}
	if d := next(t, ch); d.Version != 1 || len(d.Members) != 3 {
		t.Fatalf("first document: %+v", d)
	}
	if err := writer.CompareAndSwap(ctx, 1, testDoc(2, 4), false); err != nil {
		t.Fatal(err)
	}
	if d := next(t, ch); d.Version != 2 || len(d.Members) != 4 {
		t.Fatalf("second document: %+v", d)
	}
	// A second watcher starts from the current document.
	ch2, err := reader.Watch(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if d := next(t, ch2); d.Version != 2 {
		t.Fatalf("new watcher got version %d first", d.Version)
	}
	// Every reader owns its copy.
	writer.CompareAndSwap(ctx, 2, testDoc(3, 4), false)
	a, b := next(t, ch), next(t, ch2)
	a.Members[0].Name = "changed"
	if b.Members[0].Name != "e1" {
		t.Fatal("watchers share one document")
	}
}

func TestWatchPollsWithoutInotify(t *testing.T) {
	path := filepath.Join(t.TempDir(), "ring.json")
	writeDoc(t, path, testDoc(1, 2))
	f := openFile(t, path)
	store.DisableInotify(f)
	store.SetPoll(f, 20*time.Millisecond)
	ch, err := f.Watch(t.Context())
	if err != nil {
		t.Fatal(err)
	}
	waitVersion(t, ch, 1)
	writeDoc(t, path, testDoc(2, 2))
	waitVersion(t, ch, 2)
}

// TestWatchFollowsConfigMapSymlinkSwap lays files out as the kubelet does
// for a ConfigMap volume and swaps the "..data" link as it does on update.
func TestWatchFollowsConfigMapSymlinkSwap(t *testing.T) {
	dir := t.TempDir()
	mkVersion := func(name string, d *ring.Document) {
		os.Mkdir(filepath.Join(dir, name), 0o755)
		writeDoc(t, filepath.Join(dir, name, "ring.json"), d)
	}
	mkVersion("..2026_01_01_00_00_00.1", testDoc(1, 2))
	must(t, os.Symlink("..2026_01_01_00_00_00.1", filepath.Join(dir, "..data")))
	must(t, os.Symlink("..data/ring.json", filepath.Join(dir, "ring.json")))

	f := openFile(t, filepath.Join(dir, "ring.json"))
	store.SetPoll(f, time.Hour) // the directory watch alone must see the swap
	ch, err := f.Watch(t.Context())
	if err != nil {
		t.Fatal(err)
	}
	waitVersion(t, ch, 1)

	mkVersion("..2026_01_01_00_01_00.2", testDoc(2, 3))
	must(t, os.Symlink("..2026_01_01_00_01_00.2", filepath.Join(dir, "..data_tmp")))
	must(t, os.Rename(filepath.Join(dir, "..data_tmp"), filepath.Join(dir, "..data")))
	must(t, os.RemoveAll(filepath.Join(dir, "..2026_01_01_00_00_00.1")))
	if d := waitVersion(t, ch, 2); len(d.Members) != 3 {
		t.Fatalf("after the swap: %+v", d)
	}
}

func must(t *testing.T, err error) {
	t.Helper()
	if err != nil {
		t.Fatal(err)
	}
}

// logBuffer is a concurrency-safe log sink.
type logBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (l *logBuffer) Write(p []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.Write(p)
}

func (l *logBuffer) String() string {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.String()
}

func TestWatchSkipsInvalidAndOlderDocuments(t *testing.T) {
	path := filepath.Join(t.TempDir(), "ring.json")
	writeDoc(t, path, testDoc(5, 2))
	logs := new(logBuffer)
	f, err := store.OpenFile(path, slog.New(slog.NewTextHandler(logs, nil)))
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	store.SetPoll(f, 10*time.Millisecond)
	ch, err := f.Watch(t.Context())
	if err != nil {
		t.Fatal(err)
	}
	waitVersion(t, ch, 5)

	// Hand-written mistakes: broken JSON, a document that does not
	// validate, an older version. None is delivered.
	os.WriteFile(path, []byte(`{"version": 6, "members": [`), 0o644)
	pollLog(t, logs, "invalid document skipped")
	os.WriteFile(path, []byte(`{"version": 6, "members": []}`), 0o644)
	pollLog(t, logs, "no active members")
	writeDoc(t, path, testDoc(4, 3))
	pollLog(t, logs, "without a higher version")
	noDocument(t, ch, 100*time.Millisecond) // ten re-reads

	if n := strings.Count(logs.String(), "no active members"); n != 1 {
		t.Errorf("the same problem was logged %d times, want once:\n%s", n, logs)
	}
	// The last good document stays in force for new watchers.
	ch2, _ := f.Watch(t.Context())
	if d := next(t, ch2); d.Version != 5 || len(d.Members) != 2 {
		t.Fatalf("a new watcher got %+v, want the last good version 5", d)
	}
	writeDoc(t, path, testDoc(6, 3))
	if d := waitVersion(t, ch, 6); len(d.Members) != 3 {
		t.Fatalf("after the fix: %+v", d)
	}
}

func pollLog(t *testing.T, logs *logBuffer, want string) {
	t.Helper()
	deadline := time.Now().Add(bound)
	for !strings.Contains(logs.String(), want) {
		if time.Now().After(deadline) {
			t.Fatalf("log never said %q:\n%s", want, logs)
		}
		time.Sleep(5 * time.Millisecond)
	}
}

func TestSlowWatcherGetsTheNewest(t *testing.T) {
	ctx := t.Context()
	path := filepath.Join(t.TempDir(), "ring.json")
	f := openFile(t, path)
	ch, err := f.Watch(ctx)
	if err != nil {
		t.Fatal(err)
	}
	for v := uint64(1); v <= 20; v++ {
		if err := f.CompareAndSwap(ctx, v-1, testDoc(v, 2), false); err != nil {
			t.Fatal(err)
		}
	}
	// Nobody read meanwhile: what arrives increases and ends at 20.
	waitVersion(t, ch, 20)
}

func TestWatchEnds(t *testing.T) {
	path := filepath.Join(t.TempDir(), "ring.json")
	writeDoc(t, path, testDoc(1, 2))
	f, _ := store.OpenFile(path, quiet())
	ctx, cancel := context.WithCancel(context.Background())
	ch1, _ := f.Watch(ctx)
	ch2, _ := f.Watch(context.Background())
	next(t, ch1)
	next(t, ch2)
	cancel()
	waitClosed(t, ch1)
	f.Close()
	waitClosed(t, ch2)
	if _, err := f.Watch(context.Background()); !errors.Is(err, store.ErrClosed) {
		t.Fatalf("Watch after Close: %v", err)
	}
	if err := f.CompareAndSwap(context.Background(), 1, testDoc(2, 2), false); !errors.Is(err, store.ErrClosed) {
		t.Fatalf("CAS after Close: %v", err)
	}
	if err := f.Close(); err != nil {
		t.Fatalf("second Close: %v", err)
	}
}

func waitClosed(t *testing.T, ch <-chan *ring.Document) {
	t.Helper()
	deadline := time.After(bound)
	for {
		select {
		case _, ok := <-ch:
			if !ok {
				return
			}
		case <-deadline:
			t.Fatal("watch channel not closed")
		}
	}
}

func TestCompareAndSwapWaitsForTheLockWithinContext(t *testing.T) {
	path := filepath.Join(t.TempDir(), "ring.json")
	f := openFile(t, path)
	// Hold the lock as another process would.
	lock, err := os.OpenFile(path+".lock", os.O_RDWR|os.O_CREATE, 0o644)
	if err != nil {
		t.Fatal(err)
	}
	defer lock.Close()
	holdLock(t, lock)
	ctx, cancel := context.WithTimeout(context.Background(), 50*time.Millisecond)
	defer cancel()
	if err := f.CompareAndSwap(ctx, 0, testDoc(1, 2), false); !errors.Is(err, context.DeadlineExceeded) {
		t.Fatalf("CAS while locked: %v, want the context's deadline", err)
	}
	if _, err := os.Stat(path); !errors.Is(err, os.ErrNotExist) {
		t.Fatal("written while another holder had the lock")
	}
}

func holdLock(t *testing.T, f *os.File) {
	t.Helper()
	if err := unix.Flock(int(f.Fd()), unix.LOCK_EX); err != nil {
		t.Fatal(err)
	}
}

// File leases: a registered member is live for every reader, a draining
// one is alive but draining, a closed one is gone at once, and a lease
// that nobody renews is gone after its TTL. A ring file without a lease
// directory keeps no liveness.
func TestFileLeases(t *testing.T) {
	dir := t.TempDir()
	f, err := store.OpenFile(filepath.Join(dir, "ring.json"), quiet())
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	ctx := context.Background()
	if live, err := f.ReadLive(ctx); live != nil || err != nil {
		t.Fatalf("no lease directory: %v %v", live, err)
	}
	l1, err := f.Register(ctx, 1, 600*time.Millisecond, owner.Live{Incarnation: "a", Admin: "127.0.0.1:9101"})
	if err != nil {
		t.Fatal(err)
	}
	l2, err := f.Register(ctx, 2, 600*time.Millisecond, owner.Live{})
	if err != nil {
		t.Fatal(err)
	}
	l2.SetUsers(42)
	if err := l2.SetState(ctx, ring.StateDraining); err != nil {
		t.Fatal(err)
	}
	live, err := f.ReadLive(ctx)
	if err != nil || len(live) != 2 || live[1].Incarnation != "a" || live[1].Admin != "127.0.0.1:9101" || live[2].State != ring.StateDraining || live[2].Users != 42 {
		t.Fatalf("live %+v %v", live, err)
	}
	time.Sleep(time.Second) // past the TTL: renewals keep both live
	if live, _ := f.ReadLive(ctx); len(live) != 2 {
		t.Fatalf("renewed leases expired: %+v", live)
	}
	if err := l2.Close(); err != nil {
		t.Fatal(err)
	}
	if live, _ := f.ReadLive(ctx); len(live) != 1 {
		t.Fatalf("closed lease still live: %+v", live)
	}
	// A lease file nobody renews (its process died) expires by its TTL.
	stale := `{"id":3,"state":"active","renewed_ms":` + strconv.FormatInt(time.Now().Add(-time.Second).UnixMilli(), 10) + `,"ttl_ms":500}`
	if err := os.WriteFile(filepath.Join(f.LeaseDir(), "3.json"), []byte(stale), 0o644); err != nil {
		t.Fatal(err)
	}
	if live, _ := f.ReadLive(ctx); len(live) != 1 {
		t.Fatalf("stale lease counted live: %+v", live)
	}
	l1.Close()
}
