package client

import (
	"context"
	"crypto/rand"
	"encoding/base64"
	"unicode/utf8"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
)

// MaxIdempotencyKeyLen is the longest idempotency key an edge takes, in
// bytes.
const MaxIdempotencyKeyLen = 64

type keyCtx struct{}

// WithIdempotencyKey returns a context whose Publish and PublishMulti calls
// carry key as their idempotency key instead of a new random one. An edge
// applies a key once per user, for as long as it remembers it (the user's
// mailbox TTL, moving with the user's stream to a new owner): a second
// publish with the same key for the same user is not applied again and is
// answered with the first one's seq and epoch and duplicate=true.
//
// key must be at most MaxIdempotencyKeyLen bytes of valid UTF-8 (calls
// with a longer one fail with INVALID_ARGUMENT without a network call),
// unique per logical message, and reused only to retry that same message
// (with the same users and payload): a key reused for another message
// makes the edge drop that message as a duplicate. An empty key means the
// SDK's own random key. NewIdempotencyKey makes a suitable one.
func WithIdempotencyKey(ctx context.Context, key string) context.Context {
	return context.WithValue(ctx, keyCtx{}, key)
}

// NewIdempotencyKey returns a new random idempotency key: 16 bytes from
// crypto/rand, base64url without padding (22 characters). It is what the
// SDK uses for a call whose context has none.
func NewIdempotencyKey() string {
	var b [16]byte
	rand.Read(b[:]) // never fails (crypto/rand)
	return base64.RawURLEncoding.EncodeToString(b[:])
}

// keyFor returns the key of ctx's calls: the caller's, checked, or a new
// one.
func keyFor(ctx context.Context) (string, error) {
	key, _ := ctx.Value(keyCtx{}).(string)
	if key == "" {
		return NewIdempotencyKey(), nil
	}
	if len(key) > MaxIdempotencyKeyLen {
		return "", status.Errorf(codes.InvalidArgument, "idempotency key of %d bytes, limit %d", len(key), MaxIdempotencyKeyLen)
	}
	if !utf8.ValidString(key) {
		return "", status.Error(codes.InvalidArgument, "idempotency key is not valid UTF-8")
	}
	return key, nil
}
