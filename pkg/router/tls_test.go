package router

import (
	"bufio"
	"bytes"
	"context"
	"crypto/tls"
	"fmt"
	"io"
	"net"
	"net/http"
	"runtime"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/coder/websocket"
	"github.com/prometheus/client_golang/prometheus"
	"golang.org/x/sys/unix"

	"github.com/pushcluster/push/pkg/edge"
	"github.com/pushcluster/push/pkg/edge/edgetest"
)

var clientTLS = &tls.Config{InsecureSkipVerify: true}

var httpClientTLS = http.Client{Transport: &http.Transport{TLSClientConfig: clientTLS}}

// dialTLS opens a TLS connection to the router's TLS listener.
func dialTLS(t *testing.T, r *Router) *tls.Conn {
	t.Helper()
	c, err := tls.DialWithDialer(&net.Dialer{Timeout: 10 * time.Second}, "tcp", r.TLSAddr().String(), clientTLS)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	return c
}

// upgradeTLS sends a WebSocket upgrade for uid over c and reads the 101.
func upgradeTLS(t *testing.T, c io.ReadWriter, uid string) {
	t.Helper()
	fmt.Fprintf(c, "GET /ws?uid=%s&token=%s HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"+
		"Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n", uid, token(uid))
	var head []byte
	one := make([]byte, 1)
	for !bytes.HasSuffix(head, []byte("\r\n\r\n")) {
		if _, err := c.Read(one); err != nil {
			t.Fatalf("%s: read the 101: %v (got %q)", uid, err, head)
		}
		head = append(head, one[0])
	}
	if !bytes.HasPrefix(head, []byte("HTTP/1.1 101")) {
		t.Fatalf("%s: upgrade answered %q", uid, head)
	}
}

// readText reads one unmasked server text frame's payload.
func readText(t *testing.T, br *bufio.Reader) string {
	t.Helper()
	var h [4]byte
	if _, err := io.ReadFull(br, h[:2]); err != nil {
		t.Fatalf("read frame: %v", err)
	}
	n := int(h[1] & 0x7f)
	if n == 126 {
		if _, err := io.ReadFull(br, h[2:4]); err != nil {
			t.Fatal(err)
		}
		n = int(h[2])<<8 | int(h[3])
	}
	p := make([]byte, n)
	if _, err := io.ReadFull(br, p); err != nil {
		t.Fatal(err)
	}
	if h[0] != 0x81 {
		t.Fatalf("frame %#x %q, want text", h[0], p)
	}
	return string(p)
}

func tlsCluster(t *testing.T, cfg Config) (*Router, map[uint32]*testEdge) {
	cfg.TLSListen, cfg.TLS = "127.0.0.1:0", selfSignedTLS(t)
	return cluster(t, cfg)
}

// After the head is relayed a TLS connection is parked in epoll; bytes in
// either direction after a quiet period still move: the edge's pushes
// reach the client, and a ping the client sends reaches the edge (its
// pong comes back).
func TestTLSParkedConnectionRelaysBothWays(t *testing.T) {
	r, edges := tlsCluster(t, Config{})
	const uid = "parked"
	c := dialTLS(t, r)
	upgradeTLS(t, c, uid)
	owner := edges[r.Ring().LookupString(uid)]
	waitFor(t, "the user on its owner", func() bool { return owner.srv.Presence(uid) == 1 })
	waitFor(t, "the handshake goroutine to end", func() bool { return r.handshakes() == 0 })
	c.SetDeadline(time.Now().Add(20 * time.Second))
	br := bufio.NewReader(c)
	for i := 0; i < 3; i++ {
		time.Sleep(200 * time.Millisecond) // idle: nothing moves, nothing runs
		payload := fmt.Sprintf(`"push %d"`, i)
		out, err := owner.srv.Publish(uid, []byte(payload), 0)
		if err != nil || out.Outcome != edge.Delivered {
			t.Fatalf("publish: %v %v", out, err)
		}
		if got := readText(t, br); !strings.Contains(got, `"data":`+payload) {
			t.Fatalf("got %s, want data %s", got, payload)
		}
		time.Sleep(200 * time.Millisecond)
		ping := fmt.Sprintf("ping %d", i)
		c.Write(maskedFrame(0x9, ping))
		var h [2]byte
		if _, err := io.ReadFull(br, h[:]); err != nil {
			t.Fatalf("read pong: %v", err)
		}
		p := make([]byte, h[1]&0x7f)
		io.ReadFull(br, p)
		if h[0] != 0x8a || string(p) != ping {
			t.Fatalf("got frame %#x %q, want the pong for %q", h[0], p, ping)
		}
	}
}

// Idle TLS connections hold no goroutine in the router: once their
// handshakes are done, the process's goroutine count is back where it was
// before they connected (the clients here hold none either: nobody reads),
// and every one of them still works.
func TestIdleTLSConnectionsHoldNoGoroutine(t *testing.T) {
	r, edges := tlsCluster(t, Config{})
	const n = 200
	runtime.GC()
	before := runtime.NumGoroutine()
	conns := make([]*tls.Conn, n)
	for i := range conns {
		conns[i] = dialTLS(t, r)
		upgradeTLS(t, conns[i], "idle-"+strconv.Itoa(i))
	}
	waitFor(t, "the handshake goroutines to end", func() bool { return r.handshakes() == 0 })
	var now int
	waitFor(t, "goroutines to settle", func() bool {
		now = runtime.NumGoroutine()
		return now <= before+10
	})
	if got := value(r.m.tlsActive); got != n {
		t.Fatalf("tls connections relayed = %v, want %d", got, n)
	}
	t.Logf("%d idle TLS connections: %d goroutines before, %d now", n, before, now)
	for _, i := range []int{0, n / 2, n - 1} {
		uid := "idle-" + strconv.Itoa(i)
		owner := edges[r.Ring().LookupString(uid)]
		out, err := owner.srv.Publish(uid, []byte(`"still there"`), 0)
		if err != nil || out.Outcome != edge.Delivered {
			t.Fatalf("publish to %s: %v %v", uid, out, err)
		}
		conns[i].SetDeadline(time.Now().Add(20 * time.Second))
		if got := readText(t, bufio.NewReader(conns[i])); !strings.Contains(got, `"still there"`) {
			t.Fatalf("%s got %s", uid, got)
		}
	}
}

// A TLS client that never finishes its handshake, one that sends
// plaintext or garbage instead of a ClientHello, and one that finishes
// the handshake but never its head are all closed (within HeadTimeout),
// and a relayed TLS connection beside them is not disturbed.
func TestTLSHandshakeTimeoutAndGarbage(t *testing.T) {
	r, edges := tlsCluster(t, Config{HeadTimeout: 500 * time.Millisecond})
	hc := dialWSS(t, r, "bystander")
	owner := edges[r.Ring().LookupString("bystander")]
	waitFor(t, "bystander on its owner", func() bool { return owner.srv.Presence("bystander") == 1 })

	raw := func(send []byte) net.Conn {
		c, err := net.Dial("tcp", r.TLSAddr().String())
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { c.Close() })
		c.Write(send)
		return c
	}
	silent := raw(nil)
	plain := raw([]byte("GET /ws?uid=x HTTP/1.1\r\nHost: x\r\n\r\n"))
	garbage := raw(bytes.Repeat([]byte{0x16, 0x03, 0x01, 0xff, 0xff, 0x42}, 50))
	noHead := dialTLS(t, r)
	noHead.Write([]byte("GET /ws?uid=x HTTP/1.1\r\n")) // the head never ends
	for name, c := range map[string]net.Conn{"silent": silent, "plaintext": plain, "garbage": garbage, "no head": noHead} {
		c.SetReadDeadline(time.Now().Add(20 * time.Second))
		b, err := io.ReadAll(c)
		if ne, ok := err.(net.Error); ok && ne.Timeout() {
			t.Fatalf("%s: still open after 20 s (read %q)", name, b)
		}
		if name == "no head" && len(b) > 0 {
			t.Fatalf("no head: got %q, want the connection closed", b)
		}
	}
	waitFor(t, "only the bystander left", func() bool { return r.Sessions() == 1 && r.handshakes() == 0 })
	if got := value(r.m.headTimeouts); got < 2 {
		t.Fatalf("head timeouts = %v, want the silent client and the one without a head", got)
	}
	publishAndReceive(t, owner, hc, "bystander", `"undisturbed"`)
}

func dialWSS(t *testing.T, r *Router, uid string) *websocket.Conn {
	t.Helper()
	hc := &httpClientTLS
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	c, _, err := websocket.Dial(ctx, "wss://"+r.TLSAddr().String()+"/ws?uid="+uid+"&token="+token(uid), &websocket.DialOptions{HTTPClient: hc})
	if err != nil {
		t.Fatalf("dial %s: %v", uid, err)
	}
	t.Cleanup(func() { c.CloseNow() })
	return c
}

// Half-close and close travel both ways through TLS: the client's
// close_notify reaches the backend as a FIN while the answer still comes
// back, and the backend's FIN reaches the client as close_notify while
// the client can still send.
func TestTLSHalfCloseBothWays(t *testing.T) {
	m := rawBackend(t, func(c net.Conn) {
		br := bufio.NewReader(c)
		head, _ := br.ReadString('\n')
		if strings.HasPrefix(head, "GET /ws?uid=client-first") {
			b, _ := io.ReadAll(br) // until the client's close_notify, relayed as a FIN
			fmt.Fprintf(c, "read %d bytes ending %q", len(b), b[max(len(b)-5, 0):])
			return
		}
		// The backend finishes first: it says bye and shuts down its side,
		// then reads what the client still sends.
		for line := ""; line != "\r\n"; line, _ = br.ReadString('\n') {
		}
		c.Write([]byte("bye"))
		c.(*net.TCPConn).CloseWrite()
		b, _ := io.ReadAll(br)
		if string(b) != "still talking" {
			panic(fmt.Sprintf("backend got %q after its FIN", b))
		}
	})
	r := startRouter(t, Config{Check: CheckNone, TLSListen: "127.0.0.1:0", TLS: selfSignedTLS(t)}, newRing(t, 1, m))

	c := dialTLS(t, r)
	c.SetDeadline(time.Now().Add(20 * time.Second))
	fmt.Fprintf(c, "GET /ws?uid=client-first HTTP/1.1\r\nHost: x\r\n\r\nhello")
	if err := c.CloseWrite(); err != nil {
		t.Fatal(err)
	}
	b, err := io.ReadAll(c)
	if want := `ending "hello"`; !strings.HasSuffix(string(b), want) || err != nil {
		t.Fatalf("client first: got %q %v, want ...%s", b, err, want)
	}

	c2 := dialTLS(t, r)
	c2.SetDeadline(time.Now().Add(20 * time.Second))
	fmt.Fprintf(c2, "GET /ws?uid=backend-first HTTP/1.1\r\nHost: x\r\n\r\n")
	b, err = io.ReadAll(c2) // "bye", then close_notify
	if string(b) != "bye" || err != nil {
		t.Fatalf("backend first: got %q %v, want \"bye\" and a clean end", b, err)
	}
	if _, err := c2.Write([]byte("still talking")); err != nil {
		t.Fatal(err)
	}
	c2.CloseWrite()
	waitFor(t, "both sessions closed", func() bool { return r.Sessions() == 0 })
}

// A client that stops reading, connected over TLS, is cut off by the
// edge's slow-consumer rule (1008) as a direct one is: the router's TLS
// path keeps the plaintext relay's bound (its two sockets and at most one
// in-flight transfer of ciphertext), so the edge's queue fills.
func TestStalledTLSClientIsCutThroughRouter(t *testing.T) {
	reg := prometheus.NewRegistry()
	ed := edgetest.Start(t, []byte(secret), edge.Config{ID: 1, Loops: 1, Metrics: reg})
	e := &testEdge{Edge: ed, id: 1, srv: ed.Srv}
	r := startRouter(t, Config{Check: CheckNone, TLSListen: "127.0.0.1:0", TLS: selfSignedTLS(t)}, newRing(t, 1, e.member()))

	d := net.Dialer{Control: func(_, _ string, rc syscall.RawConn) error {
		var serr error
		rc.Control(func(fd uintptr) { serr = unix.SetsockoptInt(int(fd), unix.SOL_SOCKET, unix.SO_RCVBUF, 64<<10) })
		return serr
	}}
	const uid = "stalled-tls"
	c, err := tls.DialWithDialer(&d, "tcp", r.TLSAddr().String(), clientTLS)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	c.SetDeadline(time.Now().Add(30 * time.Second))
	upgradeTLS(t, c, uid)
	waitFor(t, uid+" attached", func() bool { return ed.Srv.Presence(uid) == 1 })
	payload := []byte(`{"pad":"` + strings.Repeat("x", 1000) + `"}`)
	delivered, messages := 0, 0
	for {
		out, err := ed.Srv.Publish(uid, payload, 0)
		if err != nil {
			t.Fatal(err)
		}
		if out.Outcome != edge.Delivered {
			break
		}
		messages++
		delivered += 4 + len(payload) + 40
		if delivered > 64<<20 {
			t.Fatalf("%d MiB delivered to a TLS client that reads nothing and it was never cut off", delivered>>20)
		}
	}
	if got := edgeCloses(reg, "1008"); got != 1 {
		t.Fatalf("1008 closes = %v, want 1", got)
	}
	// The same absolute bound as the plaintext test: the edge's socket
	// buffer, its queue, the router's share and the client's buffer.
	if bound := wmemMax(t) + 256<<10 + 256<<10 + 128<<10 + 64<<10; delivered > bound {
		t.Errorf("through the TLS router the edge counted %d B delivered before 1008, over %d B", delivered, bound)
	}
	if in := int(value(r.m.inflight)); in > copyMax+(copyMax/16) {
		t.Errorf("%d B in flight at the cut, want at most one read's ciphertext", in)
	}
	// Reading again, the client gets a prefix of what was published and
	// then the end of the connection.
	br := bufio.NewReaderSize(c, 64<<10)
	received := 0
	for {
		var h [4]byte
		if _, err := io.ReadFull(br, h[:2]); err != nil {
			break
		}
		n := int(h[1] & 0x7f)
		if n == 126 {
			if _, err := io.ReadFull(br, h[2:4]); err != nil {
				break
			}
			n = int(h[2])<<8 | int(h[3])
		}
		if h[0] != 0x81 {
			t.Fatalf("frame %d: first byte %#x", received+1, h[0])
		}
		if _, err := br.Discard(n); err != nil {
			break
		}
		received++
	}
	if received > messages {
		t.Fatalf("read %d messages, %d were delivered", received, messages)
	}
	t.Logf("TLS: %d messages (%d B) delivered before 1008, %d read after", messages, delivered, received)
	c.Close()
	waitFor(t, "the router to close the session", func() bool { return r.Sessions() == 0 })
}
