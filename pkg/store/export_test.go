package store

import (
	"context"
	"time"
)

// SetPoll sets f's re-read interval; call it before the first Watch.
func SetPoll(f *File, d time.Duration) { f.poll = d }

// DisableInotify makes f rely on its periodic re-read alone; call it before
// the first Watch.
func DisableInotify(f *File) { f.noInotify = true }

// RevokeAll revokes every lease in etcd, what expiry does to them.
func (e *Etcd) RevokeAll(ctx context.Context) error {
	ls, err := e.cli.Leases(ctx)
	if err != nil {
		return err
	}
	for _, l := range ls.Leases {
		if _, err := e.cli.Revoke(ctx, l.ID); err != nil {
			return err
		}
	}
	return nil
}
