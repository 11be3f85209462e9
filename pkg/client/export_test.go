package client

import (
	"time"

	"google.golang.org/grpc"
)

// PooledConn returns c's pooled connection to a gRPC address, nil if none.
func PooledConn(c *Client, addr string) *grpc.ClientConn {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.conns[addr]
}

// SetCloseGrace changes how long connections to departed members stay open
// and returns a function that restores it.
func SetCloseGrace(d time.Duration) func() {
	old := closeGrace
	closeGrace = d
	return func() { closeGrace = old }
}

// SetStuckAfter changes how long a PublishStream send may block before the
// stream counts as stuck and returns a function that restores it.
func SetStuckAfter(d time.Duration) func() {
	old := stuckAfter.Swap(int64(d))
	return func() { stuckAfter.Store(old) }
}
