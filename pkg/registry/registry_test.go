package registry

import (
	"fmt"
	"sync"
	"testing"

	"github.com/pushcluster/push/pkg/mailbox"
)

type conn struct{ id int }

func TestAttachReplaceDetach(t *testing.T) {
	r := New[*conn](4)
	a, b := &conn{1}, &conn{2}
	r.Do("alice", true, func(u *User[*conn]) { u.Conns = append(u.Conns, a) })
	r.Do("alice", true, func(u *User[*conn]) { u.Conns = append(u.Conns, b) })
	var got []*conn
	r.Do("alice", false, func(u *User[*conn]) { got = append(got, u.Conns...) })
	if len(got) != 2 || got[0] != a || got[1] != b {
		t.Fatalf("conns %v", got)
	}
	r.Do("alice", false, func(u *User[*conn]) {
		if !u.Remove(a) || u.Remove(a) {
			t.Fatalf("remove should succeed once")
		}
	})
	r.Do("alice", false, func(u *User[*conn]) { u.Remove(b) })
	if r.Len() != 0 {
		t.Fatalf("empty user not removed, len %d", r.Len())
	}
	r.Do("bob", false, func(u *User[*conn]) {
		if u != nil {
			t.Fatalf("unknown user should give nil")
		}
	})
	if r.Len() != 0 {
		t.Fatalf("lookup without create must not create")
	}
}

func TestMailboxKeepsEntryAlive(t *testing.T) {
	r := New[*conn](1)
	r.Do("carol", true, func(u *User[*conn]) {
		u.Box = mailbox.New(4, "e")
		u.Box.Push([]byte("m"), 10, false)
	})
	if r.Len() != 1 {
		t.Fatalf("user with a stored message must stay")
	}
	r.Sweep(func(uid string, u *User[*conn]) {
		if u.Box != nil {
			u.Box.Expire(10)
			if u.Box.Idle(10, 0) {
				u.Box = nil
			}
		}
	})
	if r.Len() != 0 {
		t.Fatalf("expired mailbox and no conns: entry should be gone")
	}
}

func TestConcurrentUse(t *testing.T) {
	r := New[*conn](16)
	var wg sync.WaitGroup
	for g := 0; g < 8; g++ {
		wg.Add(1)
		go func(g int) {
			defer wg.Done()
			for i := 0; i < 500; i++ {
				uid := fmt.Sprintf("u%d", i%50)
				c := &conn{g*1000 + i}
				r.Do(uid, true, func(u *User[*conn]) { u.Conns = append(u.Conns, c) })
				r.Do(uid, false, func(u *User[*conn]) { u.Remove(c) })
			}
		}(g)
	}
	wg.Wait()
	if r.Len() != 0 {
		t.Fatalf("len %d after balanced attach/detach", r.Len())
	}
}

func BenchmarkDoExisting(b *testing.B) {
	r := New[*conn](256)
	uids := make([]string, 100000)
	for i := range uids {
		uids[i] = fmt.Sprintf("user-%d", i)
		c := &conn{i}
		r.Do(uids[i], true, func(u *User[*conn]) { u.Conns = append(u.Conns, c) })
	}
	b.ReportAllocs()
	b.ResetTimer()
	n := 0
	for i := 0; i < b.N; i++ {
		r.Do(uids[i%len(uids)], false, func(u *User[*conn]) { n += len(u.Conns) })
	}
	if n == 0 {
		b.Fatal("no conns found")
	}
}
