package store

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"time"

	"github.com/pushcluster/push/pkg/owner"
	"github.com/pushcluster/push/pkg/ring"
)

// leaseFile is the JSON of a file lease, <ring file>.live/<id>.json.
type leaseFile struct {
	ID          uint32     `json:"id"`
	State       ring.State `json:"state"`
	Incarnation string     `json:"incarnation,omitempty"`
	Users       int64      `json:"users"`
	Admin       string     `json:"admin,omitempty"`
	// RenewedMS is the wall-clock time of the last renewal in Unix
	// milliseconds and TTLMS the lease in milliseconds: the member is live
	// while now < RenewedMS + TTLMS.
	RenewedMS int64 `json:"renewed_ms"`
	TTLMS     int64 `json:"ttl_ms"`
	PID       int   `json:"pid"`
}

// LeaseDir returns the directory of the file store's leases.
func (f *File) LeaseDir() string { return f.path + ".live" }

var _ Leaser = (*File)(nil)

// ReadLive implements Leaser: the members whose lease file is current by
// this process's wall clock. No lease directory: nil (no liveness).
func (f *File) ReadLive(ctx context.Context) (map[uint32]owner.Live, error) {
	if err := ctx.Err(); err != nil {
		return nil, err
	}
	ents, err := os.ReadDir(f.LeaseDir())
	if errors.Is(err, fs.ErrNotExist) {
		return nil, nil
	}
	if err != nil {
		return nil, fmt.Errorf("read leases %s: %w", f.LeaseDir(), err)
	}
	now := time.Now().UnixMilli()
	out := make(map[uint32]owner.Live, len(ents))
	for _, e := range ents {
		name := e.Name()
		if !strings.HasSuffix(name, ".json") {
			continue
		}
		if _, err := strconv.ParseUint(strings.TrimSuffix(name, ".json"), 10, 32); err != nil {
			continue
		}
		data, err := os.ReadFile(filepath.Join(f.LeaseDir(), name))
		if err != nil {
			continue // removed meanwhile
		}
		var l leaseFile
		if json.Unmarshal(data, &l) != nil || l.ID == 0 {
			continue
		}
		if now >= l.RenewedMS+l.TTLMS {
			continue
		}
		if l.State == "" {
			l.State = ring.StateActive
		}
		out[l.ID] = owner.Live{State: l.State, Incarnation: l.Incarnation, Users: l.Users, Admin: l.Admin}
	}
	return out, nil
}

// Register implements Leaser: it writes the member's lease file now and
// renews it every TTL/3. A renewal that finds the previous one older than
// the TTL (the process was paused or starved) does not renew: others have
// taken the member for dead, so the lease is lost.
func (f *File) Register(ctx context.Context, id uint32, ttl time.Duration, info owner.Live) (Lease, error) {
	if ttl < 100*time.Millisecond {
		return nil, fmt.Errorf("lease ttl %v below 100ms", ttl)
	}
	if err := os.MkdirAll(f.LeaseDir(), 0o755); err != nil {
		return nil, fmt.Errorf("lease directory: %w", err)
	}
	l := &fileLease{f: f, id: id}
	l.init(ttl, info)
	if err := l.write(time.Now()); err != nil {
		return nil, err
	}
	go l.renew()
	return l, nil
}

type fileLease struct {
	leaseCore // mu also serialises writes
	f         *File
	id        uint32
}

func (l *fileLease) path() string {
	return filepath.Join(l.f.LeaseDir(), strconv.FormatUint(uint64(l.id), 10)+".json")
}

// write renews the lease as of start (taken before the write, so that the
// lease never outlives what readers see).
func (l *fileLease) write(start time.Time) error {
	l.mu.Lock()
	defer l.mu.Unlock()
	if l.closed {
		return ErrClosed
	}
	if !l.renewed.IsZero() && start.Sub(l.renewed) >= l.ttl {
		l.markLost()
		return fmt.Errorf("lease of member %d expired %v ago", l.id, start.Sub(l.renewed)-l.ttl)
	}
	data, _ := json.Marshal(leaseFile{ID: l.id, State: l.info.State, Incarnation: l.info.Incarnation, Admin: l.info.Admin,
		Users: l.users.Load(), RenewedMS: start.UnixMilli(), TTLMS: l.ttl.Milliseconds(), PID: os.Getpid()})
	tmp := l.path() + ".tmp"
	if err := os.WriteFile(tmp, data, 0o644); err != nil {
		return fmt.Errorf("write lease: %w", err)
	}
	if err := os.Rename(tmp, l.path()); err != nil {
		return fmt.Errorf("write lease: %w", err)
	}
	l.renewed = start
	return nil
}

func (l *fileLease) renew() {
	defer close(l.done)
	wait := renewEvery(l.ttl)
	for {
		select {
		case <-l.stop:
			return
		case <-l.lost:
			return
		case <-time.After(wait):
		}
		if err := l.write(time.Now()); err != nil {
			select {
			case <-l.lost:
				l.f.log.Error("lease lost: renewed too late", "id", l.id, "err", err)
				return
			default:
			}
			l.f.log.Warn("lease renewal failed", "id", l.id, "err", err)
			wait = retryEvery(l.ttl)
			continue
		}
		wait = renewEvery(l.ttl)
	}
}

// SetState implements Lease: it rewrites the lease file at once.
func (l *fileLease) SetState(ctx context.Context, st ring.State) error {
	l.setState(st)
	return l.write(time.Now())
}

// Close implements Lease: it stops renewing and removes the lease file.
func (l *fileLease) Close() error {
	if !l.shutdown() {
		return nil
	}
	if err := os.Remove(l.path()); err != nil && !errors.Is(err, fs.ErrNotExist) {
		return err
	}
	return nil
}
