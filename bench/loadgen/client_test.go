package loadgen

import (
	"bufio"
	"fmt"
	"net"
	"net/http"
	"testing"
	"time"
)

// A pool with Config.Query sends that query string instead of uid and
// token, and measures a message whose send time sits deeper in the JSON
// (Centrifugo's {"push":{"pub":{"data":{"t":…}}}}).
func TestPoolQueryAndNestedSendTime(t *testing.T) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	done := make(chan struct{})
	defer close(done)
	got := make(chan string, 1)
	go func() {
		c, err := ln.Accept()
		if err != nil {
			return
		}
		defer c.Close()
		req, err := http.ReadRequest(bufio.NewReader(c))
		if err != nil {
			got <- err.Error()
			return
		}
		got <- req.URL.RequestURI()
		fmt.Fprint(c, "HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\r\n")
		msg := fmt.Sprintf(`{"push":{"channel":"#u1","pub":{"data":{"t":%d}}}}`, time.Now().UnixNano())
		c.Write(append([]byte{0x81, byte(len(msg))}, msg...))
		<-done // hold the connection until the test is done
	}()
	p, err := NewPool(Config{Target: ln.Addr().String(), Path: "/connection/uni_websocket",
		Query: func(uid string) string { return "cf_connect=%7B%22token%22%3A%22x-" + uid + "%22%7D" }})
	if err != nil {
		t.Fatal(err)
	}
	defer p.Close()
	if err := p.Open("u1", 0); err != nil {
		t.Fatal(err)
	}
	select {
	case uri := <-got:
		if want := `/connection/uni_websocket?cf_connect=%7B%22token%22%3A%22x-u1%22%7D`; uri != want {
			t.Fatalf("request %q, want %q", uri, want)
		}
	case <-time.After(5 * time.Second):
		t.Fatal("no request")
	}
	deadline := time.Now().Add(5 * time.Second)
	for p.Received.Load() < 1 && time.Now().Before(deadline) {
		time.Sleep(5 * time.Millisecond)
	}
	if p.Opened.Load() != 1 || p.Received.Load() != 1 {
		t.Fatalf("opened %d received %d, want 1 and 1", p.Opened.Load(), p.Received.Load())
	}
	h, _ := p.Stats.Take()
	if h.N != 1 {
		t.Fatalf("latency samples %d, want 1", h.N)
	}
}
