// Package rawtcp opens listening sockets as raw non-blocking descriptors for
// the epoll-driven edge and router: the backlog is chosen on purpose,
// SO_REUSEPORT lets several processes share a port, and accepted sockets are
// descriptors, not net.Conns, so an idle connection costs no Go poll
// descriptor.
package rawtcp

import (
	"errors"
	"fmt"
	"net"
	"os"
	"strconv"
	"strings"
	"time"

	"golang.org/x/sys/unix"
)

// Listener is a listening socket.
type Listener struct {
	FD   int
	Addr *net.TCPAddr
}

// Options tune Listen.
type Options struct {
	// Backlog is the accept queue length asked of listen(2); the kernel caps
	// it at net.core.somaxconn.
	Backlog int
	// ReusePort sets SO_REUSEPORT so that several processes can share the
	// address and the kernel spreads connections among them.
	ReusePort bool
	// DeferAccept (TCP_DEFER_ACCEPT) makes the kernel hand over a
	// connection only once its first bytes arrived (or after this long), so
	// the request head can be read right after accept and a silent
	// connection costs no wakeup.
	DeferAccept time.Duration
	// NoDelay sets TCP_NODELAY on the listener; Linux copies it to every
	// accepted socket, which saves a setsockopt per connection.
	NoDelay bool
}

// Listen binds addr ("host:port", port 0 picks one) and listens.
func Listen(addr string, o Options) (*Listener, error) {
	ta, err := net.ResolveTCPAddr("tcp", addr)
	if err != nil {
		return nil, fmt.Errorf("listen %s: %w", addr, err)
	}
	family := unix.AF_INET
	var sa unix.Sockaddr
	if ip4 := ta.IP.To4(); ip4 != nil || ta.IP == nil {
		s := &unix.SockaddrInet4{Port: ta.Port}
		if ip4 != nil {
			copy(s.Addr[:], ip4)
		}
		sa = s
	} else {
		family = unix.AF_INET6
		s := &unix.SockaddrInet6{Port: ta.Port}
		copy(s.Addr[:], ta.IP.To16())
		sa = s
	}
	fd, err := unix.Socket(family, unix.SOCK_STREAM|unix.SOCK_NONBLOCK|unix.SOCK_CLOEXEC, 0)
	if err != nil {
		return nil, fmt.Errorf("listen %s: socket: %w", addr, err)
	}
	fail := func(step string, err error) (*Listener, error) {
		unix.Close(fd)
		return nil, fmt.Errorf("listen %s: %s: %w", addr, step, err)
	}
	if err := unix.SetsockoptInt(fd, unix.SOL_SOCKET, unix.SO_REUSEADDR, 1); err != nil {
		return fail("SO_REUSEADDR", err)
	}
	if o.ReusePort {
		if err := unix.SetsockoptInt(fd, unix.SOL_SOCKET, unix.SO_REUSEPORT, 1); err != nil {
			return fail("SO_REUSEPORT", err)
		}
	}
	if o.DeferAccept > 0 {
		secs := int((o.DeferAccept + time.Second - 1) / time.Second)
		if err := unix.SetsockoptInt(fd, unix.IPPROTO_TCP, unix.TCP_DEFER_ACCEPT, secs); err != nil {
			return fail("TCP_DEFER_ACCEPT", err)
		}
	}
	if o.NoDelay {
		if err := unix.SetsockoptInt(fd, unix.IPPROTO_TCP, unix.TCP_NODELAY, 1); err != nil {
			return fail("TCP_NODELAY", err)
		}
	}
	if err := unix.Bind(fd, sa); err != nil {
		return fail("bind", err)
	}
	backlog := o.Backlog
	if backlog <= 0 {
		backlog = 4096
	}
	if err := unix.Listen(fd, backlog); err != nil {
		return fail("listen", err)
	}
	got, err := unix.Getsockname(fd)
	if err != nil {
		return fail("getsockname", err)
	}
	return &Listener{FD: fd, Addr: SockaddrToTCP(got)}, nil
}

// Close closes the listening socket.
func (l *Listener) Close() error { return unix.Close(l.FD) }

// Accept takes one pending connection as a non-blocking descriptor. It
// returns unix.EAGAIN when none is pending.
func (l *Listener) Accept() (int, unix.Sockaddr, error) {
	return unix.Accept4(l.FD, unix.SOCK_NONBLOCK|unix.SOCK_CLOEXEC)
}

// AcceptFD takes one pending connection without its peer address (no
// allocation). The listener is non-blocking, so the call never sleeps and
// can skip the scheduler's syscall bookkeeping. unix.EAGAIN means none is
// pending.
func (l *Listener) AcceptFD() (int, error) {
	r, _, e := unix.RawSyscall6(unix.SYS_ACCEPT4, uintptr(l.FD), 0, 0, unix.SOCK_NONBLOCK|unix.SOCK_CLOEXEC, 0, 0)
	if e != 0 {
		return -1, e
	}
	return int(r), nil
}

// SockaddrToTCP converts a socket address to a *net.TCPAddr (nil if it is
// not an IP address).
func SockaddrToTCP(sa unix.Sockaddr) *net.TCPAddr {
	switch a := sa.(type) {
	case *unix.SockaddrInet4:
		return &net.TCPAddr{IP: net.IP(append([]byte(nil), a.Addr[:]...)), Port: a.Port}
	case *unix.SockaddrInet6:
		return &net.TCPAddr{IP: net.IP(append([]byte(nil), a.Addr[:]...)), Port: a.Port}
	}
	return nil
}

// Somaxconn reads net.core.somaxconn (0 if it cannot be read).
func Somaxconn() int {
	b, err := os.ReadFile("/proc/sys/net/core/somaxconn")
	if err != nil {
		return 0
	}
	n, _ := strconv.Atoi(strings.TrimSpace(string(b)))
	return n
}

// BacklogWarning returns a warning when the kernel will silently cap the
// asked backlog (LinkedIn's first limit), else "".
func BacklogWarning(backlog int) string {
	if max := Somaxconn(); max > 0 && backlog > max {
		return fmt.Sprintf("--backlog %d is capped by net.core.somaxconn=%d: raise it (sysctl -w net.core.somaxconn=%d) or connections are dropped during reconnect storms", backlog, max, backlog)
	}
	return ""
}

// FDLimit returns the soft and hard RLIMIT_NOFILE. The Go runtime already
// raises the soft limit to the hard one at start.
func FDLimit() (soft, hard uint64) {
	var r unix.Rlimit
	if err := unix.Getrlimit(unix.RLIMIT_NOFILE, &r); err != nil {
		return 0, 0
	}
	return r.Cur, r.Max
}

// IsTemporary reports accept errors after which accepting should resume
// shortly: out of descriptors or memory, or a connection aborted before it
// was taken.
func IsTemporary(err error) bool {
	return errors.Is(err, unix.EMFILE) || errors.Is(err, unix.ENFILE) ||
		errors.Is(err, unix.ENOBUFS) || errors.Is(err, unix.ENOMEM) ||
		errors.Is(err, unix.ECONNABORTED) || errors.Is(err, unix.EINTR)
}
