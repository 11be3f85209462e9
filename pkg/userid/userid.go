// Package userid defines what a user id is: the one rule that the edge, the
// router, the SDK and the CLI apply the same way, so every node hashes the
// same bytes for the same user.
package userid

import (
	"errors"
	"fmt"
)

// Limits on ids.
const (
	// MaxLen is the longest user id in bytes.
	MaxLen = 128
	// MaxPerCall bounds the ids of one PublishMulti or Presence call.
	MaxPerCall = 10000
)

// Rule describes valid ids for error messages.
const Rule = "1-128 of A-Z a-z 0-9 - . _ ~ : @"

// Errors callers branch on.
var (
	ErrInvalid = errors.New("invalid user id")
	ErrTooMany = errors.New("too many user ids")
)

// Valid reports whether uid may name a user: 1 to 128 bytes of URL
// unreserved characters plus ':' and '@'. None of them needs
// percent-encoding, so the raw query value the router hashes and the id a
// backend publishes to are the same bytes.
func Valid(uid string) bool {
	if len(uid) == 0 || len(uid) > MaxLen {
		return false
	}
	for i := 0; i < len(uid); i++ {
		b := uid[i]
		if !(b >= 'a' && b <= 'z' || b >= 'A' && b <= 'Z' || b >= '0' && b <= '9' ||
			b == '-' || b == '.' || b == '_' || b == '~' || b == ':' || b == '@') {
			return false
		}
	}
	return true
}

// Check returns an error wrapping ErrInvalid for an invalid uid.
func Check(uid string) error {
	if !Valid(uid) {
		return fmt.Errorf("%w: %q (%s)", ErrInvalid, uid, Rule)
	}
	return nil
}

// CheckAll checks a list: not empty, at most MaxPerCall, every id valid.
func CheckAll(uids []string) error {
	if len(uids) == 0 {
		return fmt.Errorf("%w: the list is empty", ErrInvalid)
	}
	if len(uids) > MaxPerCall {
		return fmt.Errorf("%w: %d, limit %d", ErrTooMany, len(uids), MaxPerCall)
	}
	for _, uid := range uids {
		if err := Check(uid); err != nil {
			return err
		}
	}
	return nil
}
