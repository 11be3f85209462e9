package store

import "time"

// SetPoll sets f's re-read interval; call it before the first Watch.
func SetPoll(f *File, d time.Duration) { f.poll = d }

// DisableInotify makes f rely on its periodic re-read alone; call it before
// the first Watch.
func DisableInotify(f *File) { f.noInotify = true }
