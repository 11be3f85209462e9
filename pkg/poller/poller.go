// Package poller is a thin epoll wrapper with the shape of easygo's netpoll
// (Start / Resume / Stop with EPOLLONESHOT) that registers a socket's own
// descriptor.
//
// easygo/netpoll is not used directly: it dup()s every descriptor it watches
// (two fds per connection against a per-process ceiling) and its Resume turns
// O_NONBLOCK off (easygo#11). See docs/decisions.md for the measurements.
//
// The poller does not own descriptors and keeps no per-descriptor state: the
// caller keeps its own fd-indexed table and gets (fd, tag, events) back from
// Wait. The 32-bit tag is stored in the epoll event beside the fd so that a
// stale event for a descriptor number that has since been closed and reused
// can be recognised and dropped by the caller.
package poller

import (
	"errors"
	"fmt"
	"os"
	"unsafe"

	"golang.org/x/sys/unix"
)

// Event is a set of readiness conditions.
type Event uint32

// Readiness conditions. Hup and Err are always reported by the kernel, asked
// or not.
const (
	Read  Event = unix.EPOLLIN | unix.EPOLLRDHUP
	Write Event = unix.EPOLLOUT
	Hup   Event = unix.EPOLLHUP | unix.EPOLLRDHUP
	Err   Event = unix.EPOLLERR
)

// Poller is one epoll instance. Start, Resume and Stop may be called from any
// goroutine; Wait from one goroutine at a time.
type Poller struct {
	epfd   int
	events []unix.EpollEvent
	wake   int      // eventfd that interrupts Wait on Close
	file   *os.File // epfd registered with Go's netpoller, for Run
}

// New creates a poller that returns at most batch events per Wait.
func New(batch int) (*Poller, error) {
	if batch <= 0 {
		batch = 256
	}
	epfd, err := unix.EpollCreate1(unix.EPOLL_CLOEXEC)
	if err != nil {
		return nil, fmt.Errorf("epoll_create1: %w", err)
	}
	wake, err := unix.Eventfd(0, unix.EFD_NONBLOCK|unix.EFD_CLOEXEC)
	if err != nil {
		unix.Close(epfd)
		return nil, fmt.Errorf("eventfd: %w", err)
	}
	ev := unix.EpollEvent{Events: unix.EPOLLIN, Fd: int32(wake), Pad: -1}
	if err := unix.EpollCtl(epfd, unix.EPOLL_CTL_ADD, wake, &ev); err != nil {
		unix.Close(epfd)
		unix.Close(wake)
		return nil, fmt.Errorf("epoll_ctl add eventfd: %w", err)
	}
	return &Poller{epfd: epfd, events: make([]unix.EpollEvent, batch), wake: wake}, nil
}

// ErrClosed is returned by Wait after Close.
var ErrClosed = errors.New("poller closed")

// Start begins watching fd for ev, once: after an event is reported the
// descriptor is disarmed until Resume.
func (p *Poller) Start(fd int, tag uint32, ev Event) error {
	e := unix.EpollEvent{Events: uint32(ev) | unix.EPOLLONESHOT, Fd: int32(fd), Pad: int32(tag)}
	return unix.EpollCtl(p.epfd, unix.EPOLL_CTL_ADD, fd, &e)
}

// StartLevel watches fd for ev persistently (level-triggered); used for
// listening sockets that many events should drain.
func (p *Poller) StartLevel(fd int, tag uint32, ev Event) error {
	e := unix.EpollEvent{Events: uint32(ev), Fd: int32(fd), Pad: int32(tag)}
	return unix.EpollCtl(p.epfd, unix.EPOLL_CTL_ADD, fd, &e)
}

// StartExclusive watches a listening socket for readability from several
// pollers at once: level-triggered with EPOLLEXCLUSIVE, so one new
// connection wakes one poller, not all of them.
func (p *Poller) StartExclusive(fd int, tag uint32) error {
	e := unix.EpollEvent{Events: unix.EPOLLIN | unix.EPOLLEXCLUSIVE, Fd: int32(fd), Pad: int32(tag)}
	return unix.EpollCtl(p.epfd, unix.EPOLL_CTL_ADD, fd, &e)
}

// Resume re-arms fd for ev after an event disarmed it.
func (p *Poller) Resume(fd int, tag uint32, ev Event) error {
	e := unix.EpollEvent{Events: uint32(ev) | unix.EPOLLONESHOT, Fd: int32(fd), Pad: int32(tag)}
	return unix.EpollCtl(p.epfd, unix.EPOLL_CTL_MOD, fd, &e)
}

// ModifyLevel switches fd to persistent level-triggered watching of ev
// (no Resume needed after each event).
func (p *Poller) ModifyLevel(fd int, tag uint32, ev Event) error {
	e := unix.EpollEvent{Events: uint32(ev), Fd: int32(fd), Pad: int32(tag)}
	return unix.EpollCtl(p.epfd, unix.EPOLL_CTL_MOD, fd, &e)
}

// Stop stops watching fd. Closing a descriptor also removes it from epoll,
// so Stop is only needed for a descriptor that stays open.
func (p *Poller) Stop(fd int) error {
	return unix.EpollCtl(p.epfd, unix.EPOLL_CTL_DEL, fd, nil)
}

// Wait blocks up to timeoutMs (-1: forever; 0: poll without sleeping) and
// calls fn for every ready descriptor in this goroutine. It returns how many
// events it handled, and ErrClosed once Close was called.
func (p *Poller) Wait(timeoutMs int, fn func(fd int, tag uint32, ev Event)) (int, error) {
	var n int
	var err error
	if timeoutMs == 0 {
		// A non-blocking poll never sleeps: skip the scheduler hand-off.
		r, _, e := unix.RawSyscall6(unix.SYS_EPOLL_WAIT, uintptr(p.epfd), uintptr(unsafe.Pointer(&p.events[0])), uintptr(len(p.events)), 0, 0, 0)
		n = int(r)
		if e != 0 {
			n, err = 0, e
		}
	} else {
		n, err = unix.EpollWait(p.epfd, p.events, timeoutMs)
	}
	if err != nil {
		if err == unix.EINTR {
			return 0, nil
		}
		return 0, fmt.Errorf("epoll_wait: %w", err)
	}
	closed := false
	for i := 0; i < n; i++ {
		e := &p.events[i]
		if int(e.Fd) == p.wake && e.Pad == -1 {
			closed = true
			continue
		}
		fn(int(e.Fd), uint32(e.Pad), Event(e.Events))
	}
	if closed {
		return n, ErrClosed
	}
	return n, nil
}

// Run handles events until Close, calling fn for each in this goroutine.
// It parks the goroutine in Go's own netpoller while nothing is ready
// (an epoll descriptor is itself pollable) and collects events with a
// zero timeout, instead of sleeping in epoll_wait: with every P's loop
// blocked in a system call the runtime keeps retaking Ps and waking
// threads, which measured as ~40% of a router's CPU in context switches.
func (p *Poller) Run(fn func(fd int, tag uint32, ev Event)) error {
	if p.file == nil {
		if err := unix.SetNonblock(p.epfd, true); err != nil {
			return fmt.Errorf("epoll fd non-blocking: %w", err)
		}
		p.file = os.NewFile(uintptr(p.epfd), "epoll")
	}
	rc, err := p.file.SyscallConn()
	if err != nil {
		return fmt.Errorf("epoll fd: %w", err)
	}
	var werr error
	for werr == nil {
		err := rc.Read(func(uintptr) bool {
			n, err := p.Wait(0, fn)
			if err != nil {
				werr = err
				return true
			}
			return n > 0 // nothing ready: park until epfd is readable
		})
		if err != nil && werr == nil {
			return fmt.Errorf("wait for epoll: %w", err)
		}
	}
	return werr
}

// Close wakes Wait with ErrClosed and releases the epoll descriptor after the
// caller's Wait loop has returned; call it once.
func (p *Poller) Close() error {
	var one = [8]byte{1}
	_, err := unix.Write(p.wake, one[:])
	return err
}

// Release frees the descriptors; call after the Wait or Run loop has
// ended.
func (p *Poller) Release() {
	unix.Close(p.wake)
	if p.file != nil {
		p.file.Close() // also leaves Go's netpoller
		return
	}
	unix.Close(p.epfd)
}
