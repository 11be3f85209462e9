package router

import (
	"bufio"
	"bytes"
	"fmt"
	"io"
	"net"
	"os"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"golang.org/x/sys/unix"

	"github.com/pushcluster/push/pkg/edge"
	"github.com/pushcluster/push/pkg/edge/edgetest"
)

// tcpQueue is one socket's queues from /proc/net/tcp: tx is what was
// written and not acknowledged by the peer, rx what arrived and was not
// read. Both ends of a loopback connection live here, so every socket of
// a relayed connection can be seen from the test.
type tcpQueue struct{ tx, rx int }

// procTCP returns the queues of the IPv4 socket bound to local port lport
// whose peer port is rport (0: any).
func procTCP(t *testing.T, lport, rport int) (tcpQueue, bool) {
	t.Helper()
	b, err := os.ReadFile("/proc/net/tcp")
	if err != nil {
		t.Fatal(err)
	}
	port := func(addr string) int {
		_, p, _ := strings.Cut(addr, ":")
		n, _ := strconv.ParseUint(p, 16, 16)
		return int(n)
	}
	for _, line := range strings.Split(string(b), "\n")[1:] {
		f := strings.Fields(line)
		if len(f) < 5 || (f[3] != "01" && f[3] != "04") { // ESTABLISHED, FIN_WAIT1 (closed with bytes queued)
			continue
		}
		if port(f[1]) != lport || (rport != 0 && port(f[2]) != rport) {
			continue
		}
		tx, rx, _ := strings.Cut(f[4], ":")
		a, _ := strconv.ParseUint(tx, 16, 32)
		c, _ := strconv.ParseUint(rx, 16, 32)
		return tcpQueue{tx: int(a), rx: int(c)}, true
	}
	return tcpQueue{}, false
}

// stalledClient opens a WebSocket to addr with a small receive buffer,
// reads exactly the 101 answer and then reads nothing more.
func stalledClient(t *testing.T, addr, uid string) *net.TCPConn {
	t.Helper()
	d := net.Dialer{Control: func(_, _ string, rc syscall.RawConn) error {
		var serr error
		rc.Control(func(fd uintptr) {
			// Fixed, so the client's share is the same with and
			// without the router (autotuning would vary it).
			serr = unix.SetsockoptInt(int(fd), unix.SOL_SOCKET, unix.SO_RCVBUF, 64<<10)
		})
		return serr
	}}
	nc, err := d.Dial("tcp", addr)
	if err != nil {
		t.Fatal(err)
	}
	c := nc.(*net.TCPConn)
	t.Cleanup(func() { c.Close() })
	fmt.Fprintf(c, "GET /ws?uid=%s&token=%s HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"+
		"Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n", uid, token(uid))
	c.SetReadDeadline(time.Now().Add(20 * time.Second))
	var head []byte
	one := make([]byte, 1)
	for !bytes.HasSuffix(head, []byte("\r\n\r\n")) {
		if _, err := c.Read(one); err != nil {
			t.Fatalf("read the 101: %v (got %q)", err, head)
		}
		head = append(head, one[0])
	}
	if !bytes.HasPrefix(head, []byte("HTTP/1.1 101")) {
		t.Fatalf("upgrade answered %q", head)
	}
	return c
}

// slowResult is what one run of a client that never reads came to.
type slowResult struct {
	delivered int      // frame bytes of the publishes the edge answered Delivered
	messages  int      // those publishes
	held      tcpQueue // router: client socket tx + edge socket rx at the cut
	inflight  int      // router: bytes in a pipe or copy at the cut
	received  int      // messages the client read once it read again
}

// runStalled publishes 1 KiB messages to a client that never reads until
// the edge closes it as a slow consumer, then lets the client read what
// reached it. Through the router (r != nil) it also reads the router's
// socket queues at the cut.
func runStalled(t *testing.T, ed *edgetest.Edge, r *Router, uid string) slowResult {
	t.Helper()
	addr := ed.WS()
	if r != nil {
		addr = r.Addr().String()
	}
	c := stalledClient(t, addr, uid)
	defer c.Close()
	waitFor(t, uid+" attached", func() bool { return ed.Srv.Presence(uid) == 1 })
	payload := []byte(`{"pad":"` + strings.Repeat("x", 1000) + `"}`)
	var res slowResult
	for {
		out, err := ed.Srv.Publish(uid, payload, 0)
		if err != nil {
			t.Fatal(err)
		}
		if out.Outcome != edge.Delivered {
			break // the connection is gone: cut as a slow consumer
		}
		res.messages++
		res.delivered += 4 + len(`{"seq":,"epoch":""`) + len(strconv.FormatUint(out.Seq, 10)) + len(out.Epoch) + len(`,"data":}`) + len(payload)
		if res.delivered > 64<<20 {
			t.Fatalf("%d MiB delivered to a client that reads nothing and it was never cut off", res.delivered>>20)
		}
	}
	if r != nil {
		// The client socket's peer is the router's listener; the edge
		// socket is the router's only connection to the edge's port.
		cport := c.LocalAddr().(*net.TCPAddr).Port
		rport := r.Addr().Port
		eport := ed.Srv.Addr().Port
		cq, ok1 := procTCP(t, rport, cport)
		eq, ok2 := findPeerOf(t, eport)
		if !ok1 || !ok2 {
			t.Fatalf("router sockets not found in /proc/net/tcp (client side %v, edge side %v)", ok1, ok2)
		}
		res.held = tcpQueue{tx: cq.tx, rx: eq.rx}
		res.inflight = int(value(r.m.inflight))
	}
	// Reading again, the client gets what was on its way and then the
	// end of the connection (the socket was full, so no close frame).
	c.SetReadDeadline(time.Now().Add(30 * time.Second))
	br := bufio.NewReaderSize(c, 64<<10)
	for {
		var h [4]byte
		// The edge may have written part of a frame and dropped the
		// rest with its queue: the stream can end anywhere.
		if _, err := io.ReadFull(br, h[:2]); err != nil {
			return endOf(t, res, err)
		}
		n := int(h[1] & 0x7f)
		if n == 126 {
			if _, err := io.ReadFull(br, h[2:4]); err != nil {
				return endOf(t, res, err)
			}
			n = int(h[2])<<8 | int(h[3])
		}
		if h[0] != 0x81 {
			t.Fatalf("frame %d: first byte %#x, want a text frame (no close frame fits a full socket)", res.received+1, h[0])
		}
		if _, err := br.Discard(n); err != nil {
			return endOf(t, res, err)
		}
		res.received++
	}
}

// endOf checks that the client's stream ended by the connection closing
// (not by the read deadline).
func endOf(t *testing.T, res slowResult, err error) slowResult {
	t.Helper()
	if err != io.EOF && err != io.ErrUnexpectedEOF && !strings.Contains(err.Error(), "reset") {
		t.Fatalf("after %d messages: %v, want the connection closed", res.received, err)
	}
	return res
}

// findPeerOf returns the queues of the one established socket whose peer
// port is port and whose own port is not (the router's end of its
// connection to the edge).
func findPeerOf(t *testing.T, port int) (tcpQueue, bool) {
	t.Helper()
	b, err := os.ReadFile("/proc/net/tcp")
	if err != nil {
		t.Fatal(err)
	}
	for _, line := range strings.Split(string(b), "\n")[1:] {
		f := strings.Fields(line)
		if len(f) < 5 || f[3] != "01" || !strings.HasSuffix(f[2], fmt.Sprintf(":%04X", port)) {
			continue
		}
		_, lp, _ := strings.Cut(f[1], ":")
		n, _ := strconv.ParseUint(lp, 16, 16)
		return procTCP(t, int(n), port)
	}
	return tcpQueue{}, false
}

// wmemMax is the largest send buffer the kernel autotunes a socket to.
func wmemMax(t *testing.T) int {
	t.Helper()
	b, err := os.ReadFile("/proc/sys/net/ipv4/tcp_wmem")
	if err != nil {
		t.Fatal(err)
	}
	f := strings.Fields(string(b))
	n, err := strconv.Atoi(f[len(f)-1])
	if err != nil {
		t.Fatal(err)
	}
	return n
}

func edgeCloses(reg *prometheus.Registry, code string) float64 {
	mfs, _ := reg.Gather()
	for _, mf := range mfs {
		if mf.GetName() != "push_edge_closes_total" {
			continue
		}
		for _, m := range mf.GetMetric() {
			for _, l := range m.GetLabel() {
				if l.GetName() == "code" && l.GetValue() == code {
					return m.GetCounter().GetValue()
				}
			}
		}
	}
	return 0
}

// A client that stops reading is cut off by the edge's slow-consumer rule
// (1008) through the router as directly, and the router holds a bounded
// amount for it meanwhile (RelayBuffer: its two sockets and at most one
// in-flight transfer), instead of megabytes the edge counts as delivered.
func TestStalledClientIsCutThroughRouter(t *testing.T) {
	reg := prometheus.NewRegistry()
	ed := edgetest.Start(t, []byte(secret), edge.Config{ID: 1, Loops: 1, Metrics: reg})
	e := &testEdge{Edge: ed, id: 1, srv: ed.Srv}
	r := startRouter(t, Config{Check: CheckNone}, newRing(t, 1, e.member()))

	direct := runStalled(t, ed, nil, "direct")
	if got := edgeCloses(reg, "1008"); got != 1 {
		t.Fatalf("direct: 1008 closes = %v, want 1", got)
	}
	routed := runStalled(t, ed, r, "routed")
	if got := edgeCloses(reg, "1008"); got != 2 {
		t.Fatalf("through the router: 1008 closes = %v, want 2", got)
	}
	t.Logf("direct: %d messages (%d B) delivered before 1008, %d read after", direct.messages, direct.delivered, direct.received)
	held := routed.held.tx + routed.held.rx + routed.inflight
	t.Logf("router: %d messages (%d B) delivered before 1008, %d read after; router held %d B (client socket tx %d + in flight %d + edge socket rx %d)",
		routed.messages, routed.delivered, routed.received, held, routed.held.tx, routed.inflight, routed.held.rx)

	// What the router holds: its two socket queues and what is in flight
	// between them (at most one pipe or copy: pipeSize, copyMax).
	if held > 256<<10 || routed.inflight > max(pipeSize, copyMax) {
		t.Errorf("router holds %d B (%d in flight) for a client that does not read, want <= 256 KiB", held, routed.inflight)
	}
	// The edge counts as delivered what its queue took (max-queue-bytes,
	// 256 KiB), its own socket buffer, and whatever lies beyond: the
	// client's buffer, and through the router the router's share. Before
	// the bound it was megabytes.
	// (The edge's own socket buffer is autotuned by the kernel, up to
	// net.ipv4.tcp_wmem's maximum, alike with and without the router.)
	if routed.delivered > direct.delivered+(256<<10)+(512<<10) {
		t.Errorf("through the router the edge counted %d B delivered before 1008, directly %d B: the router holds too much", routed.delivered, direct.delivered)
	}
	// In absolute terms: the edge's socket buffer (autotuned up to the
	// host's tcp_wmem maximum), its queue (256 KiB), the router's share
	// (256 KiB) and the client's receive buffer (64 KiB, doubled).
	if bound := wmemMax(t) + 256<<10 + 256<<10 + 128<<10 + 64<<10; routed.delivered > bound {
		t.Errorf("through the router the edge counted %d B delivered before 1008, over %d B", routed.delivered, bound)
	}
	// Whatever reached the client is a prefix of what was published: the
	// queue the edge dropped at 1008 never arrives.
	if routed.received > routed.messages || direct.received > direct.messages {
		t.Fatalf("read more than delivered: router %d/%d, direct %d/%d", routed.received, routed.messages, direct.received, direct.messages)
	}
	waitFor(t, "the router to close the session", func() bool { return r.Sessions() == 0 })
}
