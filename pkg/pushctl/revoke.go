package pushctl

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"text/tabwriter"
	"time"

	"github.com/pushcluster/push/pkg/flagenv"
	"github.com/pushcluster/push/pkg/store"
	"github.com/pushcluster/push/pkg/userid"
)

// DefaultMaxTokenLifetime is how long a revocation is kept when
// --max-token-lifetime is not given: it must cover the longest exp - iat
// the identity provider issues, or a revocation could end while a token it
// covers is still valid.
const DefaultMaxTokenLifetime = 24 * time.Hour

// revoke runs "pushctl revoke": store a revocation of a user's tokens, or
// list those in force.
// maxRevokeAhead is how far in the future --before may lie (clock skew).
const maxRevokeAhead = time.Minute

func (a *App) revoke(args []string) error {
	fs := flag.NewFlagSet("pushctl revoke", flag.ContinueOnError)
	fs.SetOutput(a.Stderr)
	url := fs.String("ring", "", "ring store URL (file:./ring.json, a path, or etcd://host:2379/prefix); revocations are kept beside the ring")
	timeout := fs.Duration("timeout", 5*time.Second, "deadline for reading and writing the store")
	user := fs.String("user", "", "user whose tokens are revoked")
	before := fs.String("before", "", "revoke the tokens issued (iat) before this RFC 3339 time (default now)")
	lifetime := fs.Duration("max-token-lifetime", DefaultMaxTokenLifetime, "longest token lifetime (exp - iat) issued: the revocation is kept until --before plus this")
	list := fs.Bool("list", false, "list the revocations in force instead")
	a.etcd.RegisterFlags(fs)
	flagenv.SetUsage(fs, "PUSH", "pushctl revoke --user U [--before TIME] | --list",
		"Refuses the user's tokens issued before TIME at every edge's handshake (401) and closes the user's connections holding one (4001), within the store's propagation time (250 ms).")
	if _, err := a.parse(fs, args); err != nil {
		return err
	}
	if *list {
		if *user != "" || *before != "" {
			return usageError{errors.New("--list takes no --user or --before")}
		}
		return a.listRevocations(*url, *timeout)
	}
	if err := userid.Check(*user); err != nil {
		return usageError{fmt.Errorf("--user: %w", err)}
	}
	if *lifetime <= 0 {
		return usageError{fmt.Errorf("--max-token-lifetime %v must be positive", *lifetime)}
	}
	at := time.Now()
	if *before != "" {
		t, err := time.Parse(time.RFC3339Nano, *before)
		if err != nil {
			return usageError{fmt.Errorf("--before %q: want an RFC 3339 time such as 2026-01-02T15:04:05Z", *before)}
		}
		// A revocation of tokens not issued yet would refuse every token
		// of the user until then, with nothing to undo it: the clock
		// skew between hosts is all that is allowed.
		if t.After(at.Add(maxRevokeAhead)) {
			return usageError{fmt.Errorf("--before %s is in the future: a revocation covers tokens already issued (at most %v ahead of now, for clock skew)", *before, maxRevokeAhead)}
		}
		at = t
	}
	rv, closeStore, err := a.revoker(*url)
	if err != nil {
		return err
	}
	defer closeStore()
	r := store.Revocation{User: *user, Before: at.UTC(), Expires: at.Add(*lifetime).UTC()}
	if !r.Expires.After(time.Now()) {
		return usageError{fmt.Errorf("every token issued before %s has expired by now (--max-token-lifetime %v): nothing to revoke",
			r.Before.Format(time.RFC3339), *lifetime)}
	}
	ctx, cancel := context.WithTimeout(context.Background(), *timeout)
	defer cancel()
	if err := rv.Revoke(ctx, r); err != nil {
		return err
	}
	fmt.Fprintf(a.Stdout, "revoked %s: tokens issued before %s, kept until %s\n", r.User,
		r.Before.Format(time.RFC3339Nano), r.Expires.Format(time.RFC3339))
	return nil
}

func (a *App) listRevocations(url string, timeout time.Duration) error {
	rv, closeStore, err := a.revoker(url)
	if err != nil {
		return err
	}
	defer closeStore()
	ctx, cancel := context.WithTimeout(context.Background(), timeout)
	defer cancel()
	list, err := rv.Revocations(ctx, time.Now())
	if err != nil {
		return err
	}
	w := tabwriter.NewWriter(a.Stdout, 0, 4, 2, ' ', 0)
	fmt.Fprintln(w, "USER\tBEFORE\tEXPIRES")
	for _, r := range list {
		fmt.Fprintf(w, "%s\t%s\t%s\n", r.User, r.Before.UTC().Format(time.RFC3339Nano), r.Expires.UTC().Format(time.RFC3339))
	}
	return w.Flush()
}

// revoker opens the store url names as a store.Revoker.
func (a *App) revoker(url string) (store.Revoker, func(), error) {
	st, err := a.openStore(url)
	if err != nil {
		return nil, nil, err
	}
	rv, ok := st.(store.Revoker)
	if !ok {
		st.Close()
		return nil, nil, usageError{fmt.Errorf("--ring %s: this store keeps no revocations", url)}
	}
	return rv, func() { st.Close() }, nil
}
