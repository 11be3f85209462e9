package store

import (
	"context"
	"strings"
	"time"

	clientv3 "go.etcd.io/etcd/client/v3"
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

// RawRevocations lists the users with a revocation key in etcd, expired or
// not (what etcd itself keeps).
func (e *Etcd) RawRevocations(ctx context.Context) ([]string, error) {
	r, err := e.cli.Get(ctx, e.revokedPrefix(), clientv3.WithPrefix(), clientv3.WithKeysOnly())
	if err != nil {
		return nil, err
	}
	var users []string
	for _, kv := range r.Kvs {
		users = append(users, strings.TrimPrefix(string(kv.Key), e.revokedPrefix()))
	}
	return users, nil
}
