package router

import (
	"bufio"
	"context"
	"fmt"
	"io"
	"log/slog"
	"net"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"github.com/pushcluster/push/pkg/rawtcp"
	"github.com/pushcluster/push/pkg/ring"
)

// tcpPair returns both ends of a loopback TCP connection: the writer as a
// net.Conn and the reader as a non-blocking raw descriptor (a dup).
func tcpPair(b *testing.B) (net.Conn, int) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		b.Fatal(err)
	}
	defer ln.Close()
	c, err := net.Dial("tcp", ln.Addr().String())
	if err != nil {
		b.Fatal(err)
	}
	s, err := ln.Accept()
	if err != nil {
		b.Fatal(err)
	}
	f, err := s.(*net.TCPConn).File()
	if err != nil {
		b.Fatal(err)
	}
	s.Close()
	fd := int(f.Fd())
	unix.SetNonblock(fd, true)
	b.Cleanup(func() { c.Close(); f.Close() })
	return c, fd
}

// BenchmarkRelay moves one message of each size from one loopback TCP
// connection to another, through a user-space buffer (read + write) or a
// pipeSize pipe (splice twice), as the relay does. It measures the crossover
// that copyMax encodes (see there for the figures).
func BenchmarkRelay(b *testing.B) {
	for _, size := range []int{64, 1 << 10, 16 << 10, 64 << 10, 256 << 10} {
		for _, mode := range []string{"copy", "splice"} {
			b.Run(fmt.Sprintf("%s/%d", mode, size), func(b *testing.B) {
				in, src := tcpPair(b)   // the test writes in, the relay reads src
				peer, dst := tcpPair(b) // the relay writes dst, the test reads peer
				out := make([]byte, size)
				sink := make([]byte, size)
				buf := make([]byte, 256<<10)
				var fds [2]int
				unix.Pipe2(fds[:], unix.O_NONBLOCK|unix.O_CLOEXEC)
				unix.FcntlInt(uintptr(fds[1]), unix.F_SETPIPE_SZ, pipeSize)
				defer unix.Close(fds[0])
				defer unix.Close(fds[1])
				b.SetBytes(int64(size))
				b.ResetTimer()
				for i := 0; i < b.N; i++ {
					if _, err := in.Write(out); err != nil {
						b.Fatal(err)
					}
					moved := 0
					for moved < size {
						if mode == "copy" {
							n, err := rawtcp.Read(src, buf)
							if err != nil {
								continue // not arrived yet
							}
							for w := 0; w < n; {
								m, err := rawtcp.Write(dst, buf[w:n])
								if err == nil {
									w += m
								}
							}
							moved += n
						} else {
							n, err := spliceMove(src, fds[1], spliceMax)
							if err != nil {
								continue
							}
							for left := n; left > 0; {
								m, err := spliceMove(fds[0], dst, left)
								if err == nil {
									left -= m
								}
							}
							moved += n
						}
					}
					if _, err := io.ReadFull(peer, sink); err != nil {
						b.Fatal(err)
					}
				}
			})
		}
	}
}

// BenchmarkRouterStream measures edge→client throughput through a real
// Router (one loop) with bounded socket buffers (Config.RelayBuffer's
// default) and with the kernel's autotuned ones: a backend writes b.N
// messages of each size as fast as the relay takes them and the client
// reads them all.
func BenchmarkRouterStream(b *testing.B) {
	for _, size := range []int{1 << 10, 16 << 10} {
		for _, rb := range []struct {
			name string
			n    int
		}{{"bounded", 0}, {"autotuned", -1}} {
			b.Run(fmt.Sprintf("%s/%d", rb.name, size), func(b *testing.B) { routerStream(b, rb.n, size) })
		}
	}
}

func routerStream(b *testing.B, relayBuffer, size int) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		b.Fatal(err)
	}
	defer ln.Close()
	msgs := b.N
	go func() {
		c, err := ln.Accept()
		if err != nil {
			return
		}
		defer c.Close()
		br := bufio.NewReader(c)
		for {
			line, err := br.ReadString('\n')
			if err != nil || line == "\r\n" {
				break
			}
		}
		msg := make([]byte, size)
		for i := 0; i < msgs; i++ {
			if _, err := c.Write(msg); err != nil {
				return
			}
		}
	}()
	r, err := New(Config{Listen: "127.0.0.1:0", Check: CheckNone, RelayBuffer: relayBuffer, Loops: 1,
		Logger: slog.New(slog.NewTextHandler(io.Discard, nil))})
	if err != nil {
		b.Fatal(err)
	}
	rg, err := ring.New(&ring.Document{Version: 1, Algorithm: ring.AlgorithmHAProxy,
		Members: []ring.Member{{ID: 1, Name: "sink", WS: ln.Addr().String(), GRPC: ln.Addr().String(), Weight: 1}}})
	if err != nil {
		b.Fatal(err)
	}
	if err := r.SetRing(rg); err != nil {
		b.Fatal(err)
	}
	if err := r.Start(); err != nil {
		b.Fatal(err)
	}
	defer func() {
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		r.Shutdown(ctx)
	}()
	c, err := net.Dial("tcp", r.Addr().String())
	if err != nil {
		b.Fatal(err)
	}
	defer c.Close()
	c.SetDeadline(time.Now().Add(5 * time.Minute))
	b.SetBytes(int64(size))
	b.ResetTimer()
	if _, err := c.Write([]byte("GET /ws?uid=bench HTTP/1.1\r\n\r\n")); err != nil {
		b.Fatal(err)
	}
	if _, err := io.CopyN(io.Discard, c, int64(msgs)*int64(size)); err != nil {
		b.Fatal(err)
	}
}
