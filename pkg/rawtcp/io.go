package rawtcp

import (
	"unsafe"

	"golang.org/x/sys/unix"
)

// Reads and writes on the non-blocking sockets of the edge and the router
// never sleep in the kernel, so they use RawSyscall, which skips the
// scheduler's entersyscall/exitsyscall bookkeeping (and the P hand-off
// sysmon would do for a syscall that runs long): a measurable share of the
// per-delivery cost. Never call these on a blocking descriptor.

// Read reads from a non-blocking descriptor; -1 and the errno on failure.
func Read(fd int, p []byte) (int, error) {
	if len(p) == 0 {
		return 0, nil
	}
	r, _, e := unix.RawSyscall(unix.SYS_READ, uintptr(fd), uintptr(unsafe.Pointer(&p[0])), uintptr(len(p)))
	if e != 0 {
		return -1, e
	}
	return int(r), nil
}

// Write writes to a non-blocking descriptor; -1 and the errno on failure.
func Write(fd int, p []byte) (int, error) {
	if len(p) == 0 {
		return 0, nil
	}
	r, _, e := unix.RawSyscall(unix.SYS_WRITE, uintptr(fd), uintptr(unsafe.Pointer(&p[0])), uintptr(len(p)))
	if e != 0 {
		return -1, e
	}
	return int(r), nil
}

// Writev2 writes a then b with one system call; the iovecs live on the
// stack (unix.Writev allocates them).
func Writev2(fd int, a, b []byte) (int, error) {
	var iov [2]unix.Iovec
	n := 0
	if len(a) > 0 {
		iov[n].Base = &a[0]
		iov[n].SetLen(len(a))
		n++
	}
	if len(b) > 0 {
		iov[n].Base = &b[0]
		iov[n].SetLen(len(b))
		n++
	}
	if n == 0 {
		return 0, nil
	}
	r, _, e := unix.RawSyscall(unix.SYS_WRITEV, uintptr(fd), uintptr(unsafe.Pointer(&iov[0])), uintptr(n))
	if e != 0 {
		return -1, e
	}
	return int(r), nil
}
