package main

import (
	"errors"
	"strings"
	"testing"

	"github.com/pushcluster/push/pkg/daemon"
)

// --dev mints tokens for any user: on a non-loopback address it is refused
// (exit 2) unless --dev-public says so.
func TestDevOnAPublicAddressIsRefused(t *testing.T) {
	err := run([]string{"--listen", "0.0.0.0:0", "--dev"})
	var ee *daemon.ExitError
	if !errors.As(err, &ee) || ee.Code != daemon.ExitUsage || !strings.Contains(err.Error(), "not a loopback address") {
		t.Fatalf("--dev on 0.0.0.0: %v, want a usage error naming the address", err)
	}
}
