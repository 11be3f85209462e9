package store

import (
	"encoding/binary"
	"fmt"
	"os"

	"golang.org/x/sys/unix"
)

// dirEvents are the directory changes that can change what the document
// path reads: a file written in place, renamed over, created, removed, or
// a symlink (the ConfigMap "..data" link) replaced.
const dirEvents = unix.IN_CREATE | unix.IN_DELETE | unix.IN_MODIFY | unix.IN_CLOSE_WRITE |
	unix.IN_MOVED_FROM | unix.IN_MOVED_TO | unix.IN_ATTRIB | unix.IN_DELETE_SELF | unix.IN_MOVE_SELF

// watchDir returns a non-blocking inotify descriptor watching dir, wrapped
// in an os.File so that reads park in the runtime poller and Close wakes
// them.
func watchDir(dir string) (*os.File, error) {
	fd, err := unix.InotifyInit1(unix.IN_CLOEXEC | unix.IN_NONBLOCK)
	if err != nil {
		return nil, fmt.Errorf("inotify_init1: %w", err)
	}
	if _, err := unix.InotifyAddWatch(fd, dir, dirEvents); err != nil {
		unix.Close(fd)
		return nil, fmt.Errorf("inotify_add_watch %s: %w", dir, err)
	}
	return os.NewFile(uintptr(fd), "inotify:"+dir), nil
}

// readEvents reads events until notes is closed and signals events (without
// blocking: one pending signal is enough) for every batch holding an event
// that ignore does not dismiss. A queue overflow always signals.
func readEvents(notes *os.File, ignore func(name string) bool, events chan<- struct{}) {
	buf := make([]byte, 64*(unix.SizeofInotifyEvent+unix.NAME_MAX+1))
	for {
		n, err := notes.Read(buf)
		if err != nil {
			return
		}
		relevant := false
		for off := 0; off+unix.SizeofInotifyEvent <= n; {
			// struct inotify_event: wd int32, mask, cookie, len uint32, name.
			mask := binary.NativeEndian.Uint32(buf[off+4:])
			nameLen := int(binary.NativeEndian.Uint32(buf[off+12:]))
			name := buf[off+unix.SizeofInotifyEvent : min(n, off+unix.SizeofInotifyEvent+nameLen)]
			for len(name) > 0 && name[len(name)-1] == 0 {
				name = name[:len(name)-1]
			}
			if mask&unix.IN_Q_OVERFLOW != 0 || !ignore(string(name)) {
				relevant = true
			}
			off += unix.SizeofInotifyEvent + nameLen
		}
		if relevant {
			select {
			case events <- struct{}{}:
			default:
			}
		}
	}
}
