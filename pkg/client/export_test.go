package client

import "google.golang.org/grpc"

// PooledConn returns c's pooled connection to a gRPC address, nil if none.
func PooledConn(c *Client, addr string) *grpc.ClientConn {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.conns[addr]
}
