// Package netpollcheck pins down, on the machine it runs on, the two
// behaviours of github.com/mailru/easygo/netpoll that docs/decisions.md
// gives as the reasons the edge has its own poller.
package netpollcheck

import (
	"net"
	"os"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/mailru/easygo/netpoll"
	"golang.org/x/sys/unix"
)

func threads(t *testing.T) int {
	b, err := os.ReadFile("/proc/self/status")
	if err != nil {
		t.Fatal(err)
	}
	for _, line := range strings.Split(string(b), "\n") {
		if f := strings.Fields(line); len(f) == 2 && f[0] == "Threads:" {
			n, _ := strconv.Atoi(f[1])
			return n
		}
	}
	t.Fatal("no Threads line")
	return 0
}

func fdCount(t *testing.T) int {
	ents, err := os.ReadDir("/proc/self/fd")
	if err != nil {
		t.Fatal(err)
	}
	return len(ents)
}

// pairs returns n connected TCP pairs on loopback (server side first).
func pairs(t *testing.T, n int) (srv, cli []net.Conn) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	for i := 0; i < n; i++ {
		c, err := net.Dial("tcp", ln.Addr().String())
		if err != nil {
			t.Fatal(err)
		}
		s, err := ln.Accept()
		if err != nil {
			t.Fatal(err)
		}
		srv, cli = append(srv, s), append(cli, c)
	}
	t.Cleanup(func() {
		for i := range srv {
			srv[i].Close()
			cli[i].Close()
		}
	})
	return srv, cli
}

// HandleRead dup()s the socket: two descriptors per watched connection.
func TestEasygoDupsEveryDescriptor(t *testing.T) {
	const n = 200
	srv, _ := pairs(t, n)
	p, err := netpoll.New(nil)
	if err != nil {
		t.Fatal(err)
	}
	before := fdCount(t)
	for _, c := range srv {
		d, err := netpoll.HandleRead(c)
		if err != nil {
			t.Fatal(err)
		}
		if err := p.Start(d, func(netpoll.Event) {}); err != nil {
			t.Fatal(err)
		}
	}
	if extra := fdCount(t) - before; extra != n {
		t.Fatalf("watching %d connections added %d descriptors, want %d (one dup each)", n, extra, n)
	}
}

// Every Resume goes through os.File.Fd(), which puts the shared open file
// description in blocking mode, so the net.Conn's own reads then block an
// OS thread each instead of parking in Go's netpoller.
func TestEasygoResumeTurnsBlockingOn(t *testing.T) {
	const n = 50
	srv, cli := pairs(t, n)
	p, err := netpoll.New(nil)
	if err != nil {
		t.Fatal(err)
	}
	for _, c := range srv {
		d, err := netpoll.HandleRead(c)
		if err != nil {
			t.Fatal(err)
		}
		p.Start(d, func(netpoll.Event) {})
		p.Resume(d)
		raw, _ := c.(*net.TCPConn).SyscallConn()
		var flags int
		raw.Control(func(fd uintptr) { flags, _ = unix.FcntlInt(fd, unix.F_GETFL, 0) })
		if flags&unix.O_NONBLOCK != 0 {
			t.Fatalf("after Resume the socket is still non-blocking")
		}
	}
	base := threads(t)
	done := make(chan struct{}, n)
	for _, c := range srv {
		go func() { c.Read(make([]byte, 1)); done <- struct{}{} }() // blocks in read(2) until the byte below
	}
	// A blocked read(2) cannot be interrupted by Close (Close would wait for
	// it forever), so release every reader before the cleanup closes.
	defer func() {
		for _, c := range cli {
			c.Write([]byte{1})
		}
		for range srv {
			<-done
		}
	}()
	deadline := time.Now().Add(20 * time.Second)
	for threads(t) < base+n/2 && time.Now().Before(deadline) {
		time.Sleep(10 * time.Millisecond)
	}
	if got := threads(t) - base; got < n/2 {
		t.Fatalf("%d idle reads added only %d OS threads; expected about one each", n, got)
	} else {
		t.Logf("%d idle reads on easygo-watched connections hold %d extra OS threads", n, got)
	}
}
