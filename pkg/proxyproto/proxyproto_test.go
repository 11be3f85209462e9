package proxyproto

import (
	"bytes"
	"encoding/hex"
	"errors"
	"net/netip"
	"strings"
	"testing"
)

func ap(s string) netip.AddrPort { return netip.MustParseAddrPort(s) }

// The examples of proxy-protocol.txt section 2.1.
func TestParseV1SpecExamples(t *testing.T) {
	for _, tt := range []struct {
		line     string
		src, dst string
		local    bool
	}{
		{"PROXY TCP4 255.255.255.255 255.255.255.255 65535 65535\r\n", "255.255.255.255:65535", "255.255.255.255:65535", false},
		{"PROXY TCP6 ffff:ffff:ffff:ffff:ffff:ffff:ffff:ffff ffff:ffff:ffff:ffff:ffff:ffff:ffff:ffff 65535 65535\r\n",
			"[ffff:ffff:ffff:ffff:ffff:ffff:ffff:ffff]:65535", "[ffff:ffff:ffff:ffff:ffff:ffff:ffff:ffff]:65535", false},
		{"PROXY UNKNOWN\r\n", "", "", true},
		{"PROXY UNKNOWN ffff:ffff:ffff:ffff:ffff:ffff:ffff:ffff ffff:ffff:ffff:ffff:ffff:ffff:ffff:ffff 65535 65535\r\n", "", "", true},
		{"PROXY TCP4 192.168.0.1 192.168.0.11 56324 443\r\n", "192.168.0.1:56324", "192.168.0.11:443", false},
	} {
		in := tt.line + "GET / HTTP/1.1\r\n"
		h, n, err := Parse([]byte(in))
		if err != nil {
			t.Fatalf("%q: %v", tt.line, err)
		}
		if n != len(tt.line) || h.Version != 1 {
			t.Errorf("%q: n=%d version=%d", tt.line, n, h.Version)
		}
		if tt.local {
			if h.HasAddrs() {
				t.Errorf("%q: UNKNOWN must carry no addresses", tt.line)
			}
			continue
		}
		if h.Source != ap(tt.src) || h.Dest != ap(tt.dst) {
			t.Errorf("%q: got %v → %v", tt.line, h.Source, h.Dest)
		}
	}
	// The worst case line is exactly MaxV1Len bytes.
	worst := "PROXY UNKNOWN ffff:ffff:ffff:ffff:ffff:ffff:ffff:ffff ffff:ffff:ffff:ffff:ffff:ffff:ffff:ffff 65535 65535\r\n"
	if len(worst) != MaxV1Len {
		t.Fatalf("worst case is %d bytes", len(worst))
	}
}

func TestParseV1Errors(t *testing.T) {
	for _, tt := range []struct{ in, want string }{
		{"PROXY TCP4 1.2.3.4 5.6.7.8 1 2\n", "LF without CR"},
		{"PROXY TCP5 1.2.3.4 5.6.7.8 1 2\r\n", "not TCP4"},
		{"PROXY TCP4 1.2.3.4 5.6.7.8 1\r\n", "4 fields"},
		{"PROXY TCP4  1.2.3.4 5.6.7.8 1 2\r\n", "6 fields"},
		{"PROXY TCP4 ::1 5.6.7.8 1 2\r\n", "source address"},
		{"PROXY TCP6 ::1 5.6.7.8 1 2\r\n", "destination address"},
		{"PROXY TCP4 1.2.3.4 5.6.7.8 65536 2\r\n", "over 65535"},
		{"PROXY TCP4 1.2.3.4 5.6.7.8 1 x\r\n", "destination port"},
		{"PROXY TCP4 1.2.3.4" + strings.Repeat(" ", 100), "longer than 107"},
	} {
		_, _, err := Parse([]byte(tt.in))
		if !errors.Is(err, ErrInvalid) || !strings.Contains(err.Error(), tt.want) {
			t.Errorf("%q: %v, want ErrInvalid mentioning %q", tt.in, err, tt.want)
		}
	}
	for _, in := range []string{"", "P", "PROX", "PROXY TCP4 1.2.3.4 5.6"} {
		if _, _, err := Parse([]byte(in)); err != ErrIncomplete {
			t.Errorf("%q: %v, want ErrIncomplete", in, err)
		}
	}
	for _, in := range []string{"GET / HTTP/1.1\r\n", "PRO?", "\r\n\r\n\x00x"} {
		if _, _, err := Parse([]byte(in)); err != ErrNotProxy {
			t.Errorf("%q: %v, want ErrNotProxy", in, err)
		}
	}
}

// The binary example of section 2.2: TCP over IPv4 from 127.0.0.1:56324 to
// 127.0.0.1:443 (hex as in the spec's description of the fields).
const specV2TCP4 = "0d0a0d0a000d0a515549540a" + "21" + "11" + "000c" + "7f000001" + "7f000001" + "dc04" + "01bb"

func TestV2SpecExampleAndRoundTrip(t *testing.T) {
	raw, _ := hex.DecodeString(specV2TCP4)
	h, n, err := Parse(append(raw, "GET"...))
	if err != nil || n != 28 || h.Version != 2 || h.Command != Proxy {
		t.Fatalf("parse: %+v %d %v", h, n, err)
	}
	if h.Source != ap("127.0.0.1:56324") || h.Dest != ap("127.0.0.1:443") {
		t.Fatalf("addresses %v → %v", h.Source, h.Dest)
	}
	if got := AppendV2(nil, h.Source, h.Dest); !bytes.Equal(got, raw) {
		t.Fatalf("encode:\n got %x\nwant %x", got, raw)
	}
	src, dst := ap("[2001:db8::1]:1234"), ap("[2001:db8::2]:80")
	b := AppendV2(nil, src, dst)
	if len(b) != 16+36 || b[13] != 0x21 {
		t.Fatalf("tcp6: %x", b)
	}
	h, n, err = Parse(b)
	if err != nil || n != len(b) || h.Source != src || h.Dest != dst {
		t.Fatalf("tcp6 round trip: %+v %d %v", h, n, err)
	}
	// Mixed families are written as TCP6 with the IPv4 address mapped.
	h, _, err = Parse(AppendV2(nil, ap("10.0.0.1:5"), dst))
	if err != nil || h.Source.Addr() != netip.MustParseAddr("::ffff:10.0.0.1") {
		t.Fatalf("mixed: %+v %v", h, err)
	}
	// Invalid addresses give LOCAL.
	h, n, err = Parse(AppendV2(nil, netip.AddrPort{}, dst))
	if err != nil || n != 16 || h.Command != Local || h.HasAddrs() {
		t.Fatalf("local: %+v %d %v", h, n, err)
	}
	// v1 round trip.
	h, _, err = Parse(AppendV1(nil, src, dst))
	if err != nil || h.Source != src || h.Dest != dst {
		t.Fatalf("v1 round trip: %+v %v", h, err)
	}
}

func TestV2TLVsAndOtherFamilies(t *testing.T) {
	raw, _ := hex.DecodeString(specV2TCP4)
	raw[15] = 12 + 7 // one TLV: PP2_TYPE_AUTHORITY "a.b"... 3 header + 4
	raw = append(raw, 0x02, 0x00, 0x04, 'a', '.', 'b', 'c')
	h, n, err := Parse(raw)
	if err != nil || n != len(raw) || string(h.TLVs[3:]) != "a.bc" {
		t.Fatalf("tlv: %+v %d %v", h, n, err)
	}
	// LOCAL with UNSPEC (a health check of the balancer).
	local := append(append([]byte{}, Signature[:]...), 0x20, 0x00, 0x00, 0x00)
	if h, n, err := Parse(local); err != nil || n != 16 || h.Command != Local {
		t.Fatalf("local: %+v %d %v", h, n, err)
	}
	// LOCAL over a unix socket: accepted, no addresses (PROXY over one is
	// refused, as HAProxy does: TestReceiverTable).
	unixHdr := append(append([]byte{}, Signature[:]...), 0x20, 0x31, 0x00, 216)
	unixHdr = append(unixHdr, make([]byte, 216)...)
	if h, n, err := Parse(unixHdr); err != nil || n != 232 || h.HasAddrs() {
		t.Fatalf("unix: %+v %d %v", h, n, err)
	}
}

func TestV2Errors(t *testing.T) {
	base, _ := hex.DecodeString(specV2TCP4)
	mod := func(f func(b []byte) []byte) []byte { return f(append([]byte{}, base...)) }
	for _, tt := range []struct {
		in   []byte
		want string
	}{
		{mod(func(b []byte) []byte { b[12] = 0x11; return b }), "version 1"},
		{mod(func(b []byte) []byte { b[12] = 0x22; return b }), "command 2"},
		{mod(func(b []byte) []byte { b[13] = 0x41; return b }), "family and transport 0x41"},
		{mod(func(b []byte) []byte { b[13] = 0x13; return b }), "family and transport 0x13"},
		{mod(func(b []byte) []byte { b[15] = 4; return b[:20] }), "with 4 address bytes, want at least 12"},
	} {
		_, _, err := Parse(tt.in)
		if !errors.Is(err, ErrInvalid) || !strings.Contains(err.Error(), tt.want) {
			t.Errorf("%x: %v, want ErrInvalid mentioning %q", tt.in, err, tt.want)
		}
	}
	for i := 1; i < len(base); i++ {
		if _, _, err := Parse(base[:i]); err != ErrIncomplete {
			t.Fatalf("prefix of %d bytes: %v, want ErrIncomplete", i, err)
		}
	}
	if _, _, err := Parse([]byte("\r\n\r\nGET")); err != ErrNotProxy {
		t.Fatalf("near-signature: %v", err)
	}
}

// FuzzParse: Parse never panics, never claims more bytes than it was
// given or than a header can hold, and what it accepts re-parses the same
// way from exactly its own bytes. Seeded with every header of
// TestReceiverTable (the kinds HAProxy accepts and refuses).
func FuzzParse(f *testing.F) {
	raw, _ := hex.DecodeString(specV2TCP4)
	f.Add(raw)
	for _, tc := range receiverCases() {
		f.Add(tc.hdr)
	}
	f.Fuzz(func(t *testing.T, b []byte) {
		h, n, err := Parse(b)
		if err != nil {
			if err != ErrIncomplete && err != ErrNotProxy && !errors.Is(err, ErrInvalid) {
				t.Fatalf("error %v wraps no sentinel", err)
			}
			return
		}
		if n <= 0 || n > len(b) || n > MaxV2Len || (h.Version == 1 && n > MaxV1Len) || (h.Version != 1 && h.Version != 2) {
			t.Fatalf("n=%d len=%d h=%+v", n, len(b), h)
		}
		if h.HasAddrs() != (h.Command == Proxy && h.Source.IsValid() && h.Dest.IsValid()) {
			t.Fatalf("addresses half set: %+v", h)
		}
		h2, n2, err := Parse(b[:n])
		if err != nil || n2 != n || h2.Source != h.Source || h2.Dest != h.Dest || h2.Command != h.Command {
			t.Fatalf("re-parse of its own %d bytes: %+v %d %v", n, h2, n2, err)
		}
	})
}

func BenchmarkParseV2(b *testing.B) {
	raw, _ := hex.DecodeString(specV2TCP4)
	b.ReportAllocs()
	for b.Loop() {
		Parse(raw)
	}
}
