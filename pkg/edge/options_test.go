package edge

import (
	"flag"
	"github.com/pushcluster/push/pkg/auth"
	"testing"
	"time"
)

// Every flag's default is Config's default (or 0 where the default is
// derived), so a flag left alone and a field left zero mean the same.
func TestFlagDefaultsAreConfigDefaults(t *testing.T) {
	var o Options
	fs := flag.NewFlagSet("edge", flag.ContinueOnError)
	o.BindFlags(fs)
	if err := fs.Parse(nil); err != nil {
		t.Fatal(err)
	}
	if err := o.Resolve(nil); err != nil {
		t.Fatal(err)
	}
	fromFlags := o.Config
	fromFlags.setDefaults()
	var zero Config
	zero.GuestGrace = fromFlags.GuestGrace // derived from --lease-ttl by Resolve
	zero.Listen, zero.ID, zero.Logger = fromFlags.Listen, fromFlags.ID, fromFlags.Logger
	zero.setDefaults()
	if fromFlags.MaxConns != zero.MaxConns || fromFlags.PingInterval != zero.PingInterval || fromFlags.IdleTimeout != zero.IdleTimeout ||
		fromFlags.MailboxTTL != zero.MailboxTTL || fromFlags.MaxQueueBytes != zero.MaxQueueBytes || fromFlags.Backlog != zero.Backlog ||
		fromFlags.MigrateRate != zero.MigrateRate || fromFlags.MoveWindow != zero.MoveWindow || fromFlags.Loops != zero.Loops {
		t.Fatalf("flag defaults differ from Config's:\nflags  %+v\nconfig %+v", fromFlags, zero)
	}
}

func TestDerivedDefaults(t *testing.T) {
	for _, tc := range []struct {
		args        []string
		idle, grace time.Duration
	}{
		{nil, 75 * time.Second, 11 * time.Second},
		{[]string{"--ping-interval", "100s"}, 250 * time.Second, 11 * time.Second},
		{[]string{"--ping-interval", "100s", "--idle-timeout", "101s"}, 101 * time.Second, 11 * time.Second},
		{[]string{"--lease-ttl", "2s"}, 75 * time.Second, 5 * time.Second},
		{[]string{"--lease-ttl", "2s", "--guest-grace", "1s"}, 75 * time.Second, time.Second},
	} {
		var o Options
		fs := flag.NewFlagSet("edge", flag.ContinueOnError)
		o.BindFlags(fs)
		if err := fs.Parse(tc.args); err != nil {
			t.Fatal(err)
		}
		if err := o.Resolve(nil); err != nil {
			t.Fatal(err)
		}
		c := o.Config
		c.Verifier = noVerifier{}
		c.setDefaults()
		if err := c.validate(); err != nil {
			t.Errorf("%v: %v", tc.args, err)
		}
		if c.IdleTimeout != tc.idle || c.GuestGrace != tc.grace {
			t.Errorf("%v: idle %v grace %v, want %v and %v", tc.args, c.IdleTimeout, c.GuestGrace, tc.idle, tc.grace)
		}
	}
}

type noVerifier struct{}

func (noVerifier) Verify(token, uid string) error { return nil }

func (noVerifier) VerifyClaims(token, uid string) (auth.Claims, error) { return auth.Claims{}, nil }
