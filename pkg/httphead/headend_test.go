package httphead

import "testing"

func TestHeadEnd(t *testing.T) {
	for _, tc := range []struct {
		in   string
		n    int
		fail bool
	}{
		{"", 0, false},
		{"GET / HTTP/1.1\r\nHost: a\r\n", 0, false},
		{"GET / HTTP/1.1\r\nHost: a\r\n\r", 0, false},
		{"GET / HTTP/1.1\r\nHost: a\r\n\r\n", 27, false},
		{"GET / HTTP/1.1\r\nHost: a\r\n\r\n\x81\x85\n", 27, false}, // bytes after the head are not the head's
		{"GET / HTTP/1.1\nHost: a\n\n", 0, true},
		{"GET / HTTP/1.1\r\nHost: a\n\r\n", 0, true},
		{"\n", 0, true},
		{"GET / HTTP/1.1\r\nHost: a\n", 0, true}, // refused before the head is whole
	} {
		n, err := HeadEnd([]byte(tc.in))
		if n != tc.n || (err != nil) != tc.fail {
			t.Errorf("HeadEnd(%q) = %d, %v; want %d, fail %v", tc.in, n, err, tc.n, tc.fail)
		}
		if err != nil && err.Status != 400 {
			t.Errorf("HeadEnd(%q): status %d", tc.in, err.Status)
		}
	}
}
