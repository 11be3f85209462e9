package proxyproto

import (
	"bufio"
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"hash/crc32"
	"io"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

// receiverCase is one header, whether Parse accepts it (and with which
// addresses, "" for the socket's own), and whether HAProxy 2.6's receiver
// (bind ... accept-proxy) does. They differ only where the header is
// outside the specification or the specification orders it accepted (see
// the package comment).
type receiverCase struct {
	name    string
	hdr     []byte
	src     string // Source:port Parse gives, "" for none (LOCAL, UNKNOWN)
	err     string // part of Parse's error, "" when it accepts
	haproxy bool   // HAProxy 2.6 accepts it
}

func v2(verCmd, fam byte, body []byte) []byte {
	b := append(append([]byte{}, Signature[:]...), verCmd, fam)
	b = binary.BigEndian.AppendUint16(b, uint16(len(body)))
	return append(b, body...)
}

var tcp4Addrs = []byte{1, 2, 3, 4, 5, 6, 7, 8, 0, 1, 0, 2}

func tlv(typ byte, n int) []byte {
	b := []byte{typ, byte(n >> 8), byte(n)}
	return append(b, strings.Repeat("a", n)...)
}

func withCRC(right bool) []byte {
	h := v2(0x21, 0x11, append(append([]byte{}, tcp4Addrs...), 0x03, 0, 4, 0, 0, 0, 0))
	c := crc32.Checksum(h, crc32.MakeTable(crc32.Castagnoli))
	if !right {
		c++
	}
	binary.BigEndian.PutUint32(h[len(h)-4:], c)
	return h
}

func receiverCases() []receiverCase {
	b := func(s string) []byte { return []byte(s) }
	tcp6 := append(append(append(make([]byte, 15), 1), append(make([]byte, 15), 2)...), 0, 1, 0, 2)
	return []receiverCase{
		// v1
		{"v1 tcp4", b("PROXY TCP4 1.2.3.4 5.6.7.8 1 2\r\n"), "1.2.3.4:1", "", true},
		{"v1 tcp4 port with leading zeros", b("PROXY TCP4 1.2.3.4 5.6.7.8 01 0002\r\n"), "1.2.3.4:1", "", true},
		{"v1 tcp4 octet with a leading zero", b("PROXY TCP4 01.2.3.4 5.6.7.8 1 2\r\n"), "1.2.3.4:1", "", true},
		{"v1 tcp4 largest", b("PROXY TCP4 255.255.255.255 255.255.255.255 65535 65535\r\n"), "255.255.255.255:65535", "", true},
		{"v1 tcp4 port 65536", b("PROXY TCP4 1.2.3.4 5.6.7.8 65536 2\r\n"), "", "over 65535", true},
		{"v1 tcp4 empty port", b("PROXY TCP4 1.2.3.4 5.6.7.8  2\r\n"), "", "source port: empty", true},
		{"v1 tcp4 three octets", b("PROXY TCP4 1.2.3 5.6.7.8 1 2\r\n"), "", "four dotted decimal octets", true},
		{"v1 tcp4 octet 256", b("PROXY TCP4 1.2.3.256 5.6.7.8 1 2\r\n"), "", "over 255", true},
		{"v1 tcp4 IPv6 address", b("PROXY TCP4 ::1 5.6.7.8 1 2\r\n"), "", "four dotted decimal octets", false},
		{"v1 tcp4 two spaces", b("PROXY TCP4 1.2.3.4  5.6.7.8 1 2\r\n"), "", "6 fields", false},
		{"v1 tcp4 trailing space", b("PROXY TCP4 1.2.3.4 5.6.7.8 1 2 \r\n"), "", "6 fields", false},
		{"v1 tcp4 LF only", b("PROXY TCP4 1.2.3.4 5.6.7.8 1 2\n"), "", "LF without CR", false},
		{"v1 lowercase protocol", b("PROXY tcp4 1.2.3.4 5.6.7.8 1 2\r\n"), "", "not TCP4, TCP6 or UNKNOWN", false},
		{"v1 udp4", b("PROXY UDP4 1.2.3.4 5.6.7.8 1 2\r\n"), "", "not TCP4, TCP6 or UNKNOWN", false},
		{"v1 tcp6", b("PROXY TCP6 ::1 ::2 1 2\r\n"), "[::1]:1", "", true},
		{"v1 tcp6 IPv4-mapped", b("PROXY TCP6 ::ffff:1.2.3.4 ::2 1 2\r\n"), "[::ffff:1.2.3.4]:1", "", true},
		{"v1 tcp6 port with leading zeros", b("PROXY TCP6 ::1 ::2 0001 2\r\n"), "[::1]:1", "", true},
		{"v1 tcp6 port 65536", b("PROXY TCP6 ::1 ::2 65536 2\r\n"), "", "over 65535", true},
		{"v1 tcp6 fifth field", b("PROXY TCP6 ::1 ::2 1 2 3\r\n"), "", "6 fields", true},
		{"v1 tcp6 IPv4 address", b("PROXY TCP6 1.2.3.4 ::2 1 2\r\n"), "", "not an IPv6 address", false},
		{"v1 tcp6 zone", b("PROXY TCP6 fe80::1%eth0 ::2 1 2\r\n"), "", "has a zone", false},
		{"v1 tcp6 empty field", b("PROXY TCP6  ::1 ::2 1 2\r\n"), "", "6 fields", false},
		{"v1 unknown", b("PROXY UNKNOWN\r\n"), "", "", true},
		{"v1 unknown with addresses", b("PROXY UNKNOWN ::1 ::2 1 2\r\n"), "", "", false},
		{"v1 over 107 bytes", b("PROXY TCP6 " + strings.Repeat("0", 100) + "\r\n"), "", "longer than 107", false},
		// v2 LOCAL: the block is ignored whatever it holds.
		{"v2 local unspec", v2(0x20, 0x00, nil), "", "", true},
		{"v2 local inet with addresses", v2(0x20, 0x11, tcp4Addrs), "", "", true},
		{"v2 local inet without addresses", v2(0x20, 0x11, nil), "", "", true},
		{"v2 local unknown family", v2(0x20, 0xff, nil), "", "", true},
		{"v2 local broken TLV", v2(0x20, 0x00, []byte{1, 0, 9}), "", "", true},
		// v2 PROXY
		{"v2 tcp4", v2(0x21, 0x11, tcp4Addrs), "1.2.3.4:1", "", true},
		{"v2 tcp4 short", v2(0x21, 0x11, tcp4Addrs[:11]), "", "11 address bytes", false},
		{"v2 tcp4 NOOP TLV", v2(0x21, 0x11, append(append([]byte{}, tcp4Addrs...), tlv(0x04, 2)...)), "1.2.3.4:1", "", true},
		{"v2 tcp4 SSL TLV", v2(0x21, 0x11, append(append([]byte{}, tcp4Addrs...), 0x20, 0, 5, 1, 0, 0, 0, 0)), "1.2.3.4:1", "", true},
		{"v2 tcp4 2000-byte TLV", v2(0x21, 0x11, append(append([]byte{}, tcp4Addrs...), tlv(0xe0, 2000)...)), "1.2.3.4:1", "", true},
		{"v2 tcp4 AUTHORITY 255", v2(0x21, 0x11, append(append([]byte{}, tcp4Addrs...), tlv(0x02, 255)...)), "1.2.3.4:1", "", true},
		{"v2 tcp4 AUTHORITY 256", v2(0x21, 0x11, append(append([]byte{}, tcp4Addrs...), tlv(0x02, 256)...)), "", "AUTHORITY TLV of 256", false},
		{"v2 tcp4 UNIQUE_ID 128", v2(0x21, 0x11, append(append([]byte{}, tcp4Addrs...), tlv(0x05, 128)...)), "1.2.3.4:1", "", true},
		{"v2 tcp4 UNIQUE_ID 129", v2(0x21, 0x11, append(append([]byte{}, tcp4Addrs...), tlv(0x05, 129)...)), "", "UNIQUE_ID TLV of 129", false},
		{"v2 tcp4 CRC32C right", withCRC(true), "1.2.3.4:1", "", true},
		{"v2 tcp4 CRC32C wrong", withCRC(false), "", "CRC32C TLV is", false},
		{"v2 tcp4 CRC32C of 3 bytes", v2(0x21, 0x11, append(append([]byte{}, tcp4Addrs...), 0x03, 0, 3, 1, 2, 3)), "", "CRC32C TLV of 3 bytes", false},
		{"v2 tcp4 one byte after the addresses", v2(0x21, 0x11, append(append([]byte{}, tcp4Addrs...), 0x04)), "", "a TLV header needs 3", false},
		{"v2 tcp4 TLV past the end", v2(0x21, 0x11, append(append([]byte{}, tcp4Addrs...), 0x04, 0, 5, 'a', 'b')), "", "5 value bytes, 2 left", false},
		{"v2 tcp6", v2(0x21, 0x21, tcp6), "[::1]:1", "", true},
		{"v2 tcp6 short", v2(0x21, 0x21, tcp6[:35]), "", "35 address bytes", false},
		{"v2 proxy unspec", v2(0x21, 0x00, nil), "", "family and transport 0x00", false},
		{"v2 proxy udp4", v2(0x21, 0x12, tcp4Addrs), "", "family and transport 0x12", false},
		{"v2 proxy udp6", v2(0x21, 0x22, tcp6), "", "family and transport 0x22", false},
		{"v2 proxy unix stream", v2(0x21, 0x31, make([]byte, 216)), "", "family and transport 0x31", false},
		{"v2 proxy inet, unspec transport", v2(0x21, 0x10, tcp4Addrs), "", "family and transport 0x10", false},
		{"v2 proxy family 4", v2(0x21, 0x41, tcp4Addrs), "", "family and transport 0x41", false},
		{"v2 command 2", v2(0x22, 0x11, tcp4Addrs), "", "command 2", false},
		{"v2 version 1", v2(0x11, 0x11, tcp4Addrs), "", "version 1", false},
		{"v2 version 3", v2(0x31, 0x11, tcp4Addrs), "", "version 3", false},
	}
}

// Every v1/v2 header kind: accepted with its addresses, or refused with a
// precise reason.
func TestReceiverTable(t *testing.T) {
	for _, tc := range receiverCases() {
		in := append(append([]byte{}, tc.hdr...), "GET / HTTP/1.1\r\n"...)
		h, n, err := Parse(in)
		if tc.err != "" {
			if !errors.Is(err, ErrInvalid) || !strings.Contains(err.Error(), tc.err) {
				t.Errorf("%s: %v, want ErrInvalid mentioning %q", tc.name, err, tc.err)
			}
			continue
		}
		if err != nil || n != len(tc.hdr) {
			t.Errorf("%s: n=%d (want %d) %v", tc.name, n, len(tc.hdr), err)
			continue
		}
		got := ""
		if h.HasAddrs() {
			got = h.Source.String()
		}
		if got != tc.src {
			t.Errorf("%s: source %q, want %q", tc.name, got, tc.src)
		}
		// Every proper prefix asks for more, never a wrong verdict.
		for i := 1; i < len(tc.hdr); i++ {
			if _, _, err := Parse(tc.hdr[:i]); err != ErrIncomplete && !errors.Is(err, ErrInvalid) {
				t.Fatalf("%s: prefix of %d bytes: %v", tc.name, i, err)
			}
		}
	}
}

// TestAgainstHAProxy sends every case to a real HAProxy (bind ...
// accept-proxy) and checks its verdict against the table: where both
// accept, they must see the same client address. Skipped when haproxy is
// not installed (CI installs it).
func TestAgainstHAProxy(t *testing.T) {
	bin, err := exec.LookPath("haproxy")
	if err != nil {
		if os.Getenv("CI") == "true" {
			t.Fatalf("haproxy is not on PATH (required in CI): %v", err)
		}
		t.Skipf("haproxy is not on PATH: %v", err)
	}
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	file, err := ln.(*net.TCPListener).File()
	if err != nil {
		t.Fatal(err)
	}
	addr := ln.Addr().String()
	ln.Close()
	cfg := filepath.Join(t.TempDir(), "haproxy.cfg")
	os.WriteFile(cfg, []byte(`global
    nbthread 1
defaults
    mode http
    timeout connect 2s
    timeout client 10s
    timeout server 10s
frontend fe
    bind fd@3 accept-proxy
    http-request return status 200 content-type text/plain lf-string "%[src]:%[src_port]"
`), 0o600)
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	cmd := exec.CommandContext(ctx, bin, "-db", "-f", cfg)
	cmd.ExtraFiles = []*os.File{file}
	cmd.Stdout, cmd.Stderr = io.Discard, io.Discard
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	file.Close()
	t.Cleanup(func() { cancel(); cmd.Wait() })

	probe := func(hdr []byte) (bool, string) {
		c, err := net.Dial("tcp", addr)
		if err != nil {
			t.Fatal(err)
		}
		defer c.Close()
		c.SetDeadline(time.Now().Add(20 * time.Second))
		c.Write(append(append([]byte{}, hdr...), "GET / HTTP/1.1\r\nHost: x\r\n\r\n"...))
		resp, err := http.ReadResponse(bufio.NewReader(c), nil)
		if err != nil {
			return false, ""
		}
		body, _ := io.ReadAll(io.LimitReader(resp.Body, 200))
		return resp.StatusCode == 200, string(body)
	}
	deadline := time.Now().Add(20 * time.Second)
	for ok, _ := probe([]byte("PROXY UNKNOWN\r\n")); !ok; ok, _ = probe([]byte("PROXY UNKNOWN\r\n")) {
		if time.Now().After(deadline) {
			t.Fatal("haproxy never answered")
		}
		time.Sleep(50 * time.Millisecond)
	}
	for _, tc := range receiverCases() {
		ok, src := probe(tc.hdr)
		if ok != tc.haproxy {
			t.Errorf("%s: HAProxy accepts: %v, table says %v", tc.name, ok, tc.haproxy)
			continue
		}
		if ok && tc.err == "" && tc.src != "" {
			h, _, _ := Parse(tc.hdr)
			want := fmt.Sprintf("%s:%d", h.Source.Addr(), h.Source.Port())
			if src != want {
				t.Errorf("%s: HAProxy sees %s, Parse %s", tc.name, src, want)
			}
		}
	}
}
