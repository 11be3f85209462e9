package grpcauth

import (
	"sync"
	"time"
)

// tokenCacheTTL bounds how long a verified bearer token is trusted without
// checking it again: a key removed from the key files stops accepting the
// tokens it signed within this long (and a token never outlives its exp).
const tokenCacheTTL = 10 * time.Second

// maxCachedTokens bounds the cache; past it, it starts empty again.
const maxCachedTokens = 4096

// tokenCache remembers verified tokens: a backend sends the same token
// with every call, and its signature and claims need checking once, not
// per publish (an HMAC and a JSON decode, a third of an authenticated
// publish's CPU).
type tokenCache struct {
	mu sync.Mutex // guards m
	m  map[string]cachedToken
}

type cachedToken struct {
	id    *Identity
	until time.Time
}

func (c *tokenCache) get(tok string, now time.Time) *Identity {
	c.mu.Lock()
	defer c.mu.Unlock()
	e, ok := c.m[tok]
	if !ok {
		return nil
	}
	if !now.Before(e.until) {
		delete(c.m, tok)
		return nil
	}
	return e.id
}

func (c *tokenCache) put(tok string, id *Identity, exp, now time.Time) {
	until := now.Add(tokenCacheTTL)
	if exp.Before(until) {
		until = exp
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.m == nil || len(c.m) >= maxCachedTokens {
		c.m = make(map[string]cachedToken)
	}
	c.m[tok] = cachedToken{id, until}
}
