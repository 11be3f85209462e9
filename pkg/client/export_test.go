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
