// Package proxyproto encodes and parses the PROXY protocol (HAProxy's
// proxy-protocol.txt, versions 1 and 2) that carries a client's original
// addresses across a TCP proxy.
//
// The package is pure: it works on byte slices, never on sockets. Parse is
// meant for a peeked prefix of a stream: it says how many bytes the header
// occupies (so the caller consumes exactly those), asks for more with
// ErrIncomplete, and bounds its work by MaxV1Len and MaxV2Len.
package proxyproto

import (
	"bytes"
	"encoding/binary"
	"errors"
	"fmt"
	"net/netip"
	"strconv"
)

// Signature opens every version 2 header.
var Signature = [12]byte{0x0D, 0x0A, 0x0D, 0x0A, 0x00, 0x0D, 0x0A, 0x51, 0x55, 0x49, 0x54, 0x0A}

const (
	// MaxV1Len is the longest version 1 line, CRLF included (the spec's
	// worst case "PROXY UNKNOWN ffff:...").
	MaxV1Len = 107
	// MaxV2Len is the longest version 2 header Parse accepts (16-byte
	// fixed part plus addresses and TLVs). The spec allows 65,551 bytes;
	// a front balancer sends a few dozen, so a longer one is refused rather
	// than buffered.
	MaxV2Len = 1024
	// v2FixedLen is the signature, version/command, family and length.
	v2FixedLen = 16
)

// Errors callers branch on with errors.Is. Every parse failure wraps
// ErrInvalid except ErrIncomplete and ErrNotProxy.
var (
	// ErrIncomplete: the bytes so far are a valid prefix of a header;
	// read more and call Parse again.
	ErrIncomplete = errors.New("proxyproto: incomplete header")
	// ErrNotProxy: the input does not start with a PROXY header at all.
	ErrNotProxy = errors.New("proxyproto: no PROXY header")
	// ErrInvalid: a PROXY header that breaks the specification.
	ErrInvalid = errors.New("proxyproto: invalid header")
)

// Command is a version 2 command.
type Command uint8

const (
	// Local: the connection was made by the proxy itself (health checks);
	// the addresses are meaningless and the receiver uses the socket's own.
	Local Command = 0
	// Proxy: the connection is relayed on behalf of Source.
	Proxy Command = 1
)

// Header is a parsed PROXY header.
type Header struct {
	Version int // 1 or 2
	Command Command
	// Source and Dest are the original client and the address it
	// connected to. Both are invalid for LOCAL, UNKNOWN and non-IP families.
	Source, Dest netip.AddrPort
	// TLVs are the raw version 2 type-length-value bytes after the
	// addresses (aliases the input).
	TLVs []byte
}

// HasAddrs reports whether the header carries usable client addresses.
func (h Header) HasAddrs() bool { return h.Command == Proxy && h.Source.IsValid() }

// AppendV2 appends a version 2 PROXY header for a TCP connection from src to
// dst. Both IPv4 (also IPv4-mapped IPv6) → TCP4; otherwise both are written as
// IPv6 (IPv4 addresses in their mapped form) → TCP6. Invalid addresses
// produce a LOCAL header, which tells the receiver to use the socket's own.
func AppendV2(b []byte, src, dst netip.AddrPort) []byte {
	b = append(b, Signature[:]...)
	if !src.IsValid() || !dst.IsValid() {
		return append(b, 0x20, 0x00, 0, 0)
	}
	s, d := src.Addr().Unmap(), dst.Addr().Unmap()
	if s.Is4() && d.Is4() {
		b = append(b, 0x21, 0x11, 0, 12)
		a4, d4 := s.As4(), d.As4()
		b = append(b, a4[:]...)
		b = append(b, d4[:]...)
	} else {
		b = append(b, 0x21, 0x21, 0, 36)
		a16, d16 := s.As16(), d.As16()
		b = append(b, a16[:]...)
		b = append(b, d16[:]...)
	}
	b = binary.BigEndian.AppendUint16(b, src.Port())
	return binary.BigEndian.AppendUint16(b, dst.Port())
}

// AppendV1 appends a version 1 header line ("PROXY TCP4 ... \r\n", or
// "PROXY UNKNOWN\r\n" for invalid addresses).
func AppendV1(b []byte, src, dst netip.AddrPort) []byte {
	if !src.IsValid() || !dst.IsValid() {
		return append(b, "PROXY UNKNOWN\r\n"...)
	}
	s, d := src.Addr().Unmap(), dst.Addr().Unmap()
	if s.Is4() && d.Is4() {
		b = append(b, "PROXY TCP4 "...)
	} else {
		b = append(b, "PROXY TCP6 "...)
		if s.Is4() {
			s = netip.AddrFrom16(s.As16())
		}
		if d.Is4() {
			d = netip.AddrFrom16(d.As16())
		}
	}
	b = s.AppendTo(b)
	b = append(b, ' ')
	b = d.AppendTo(b)
	b = append(b, ' ')
	b = strconv.AppendUint(b, uint64(src.Port()), 10)
	b = append(b, ' ')
	b = strconv.AppendUint(b, uint64(dst.Port()), 10)
	return append(b, "\r\n"...)
}

func invalid(format string, a ...any) error {
	return fmt.Errorf("%w: "+format, append([]any{ErrInvalid}, a...)...)
}

// Parse reads a version 1 or 2 header at the start of b. It returns the
// header and its length n in bytes; the payload starts at b[n:]. It never
// looks past MaxV1Len bytes for version 1 or MaxV2Len for version 2.
func Parse(b []byte) (Header, int, error) {
	if len(b) == 0 {
		return Header{}, 0, ErrIncomplete
	}
	switch b[0] {
	case 'P':
		return parseV1(b)
	case Signature[0]:
		return parseV2(b)
	}
	return Header{}, 0, ErrNotProxy
}

var v1Prefix = []byte("PROXY ")

func parseV1(b []byte) (Header, int, error) {
	if n := min(len(b), len(v1Prefix)); !bytes.Equal(b[:n], v1Prefix[:n]) {
		return Header{}, 0, ErrNotProxy
	}
	lim := b[:min(len(b), MaxV1Len)]
	end := bytes.Index(lim, []byte("\r\n"))
	if end < 0 {
		if i := bytes.IndexByte(lim, '\n'); i >= 0 {
			return Header{}, 0, invalid("v1 line ends with LF without CR")
		}
		if len(b) >= MaxV1Len {
			return Header{}, 0, invalid("v1 line longer than %d bytes", MaxV1Len)
		}
		return Header{}, 0, ErrIncomplete
	}
	line := lim[len(v1Prefix):end]
	n := end + 2
	h := Header{Version: 1, Command: Proxy}
	f := bytes.Split(line, []byte(" "))
	switch string(f[0]) {
	case "UNKNOWN":
		// The receiver must ignore whatever follows UNKNOWN.
		h.Command = Local
		return h, n, nil
	case "TCP4", "TCP6":
	default:
		return Header{}, 0, invalid("v1 protocol %q is not TCP4, TCP6 or UNKNOWN", f[0])
	}
	if len(f) != 5 {
		return Header{}, 0, invalid("v1 %s line has %d fields, want 5 separated by single spaces", f[0], len(f))
	}
	v6 := string(f[0]) == "TCP6"
	src, err := v1Addr(f[1], v6)
	if err != nil {
		return Header{}, 0, invalid("v1 source address: %v", err)
	}
	dst, err := v1Addr(f[2], v6)
	if err != nil {
		return Header{}, 0, invalid("v1 destination address: %v", err)
	}
	sp, err := v1Port(f[3])
	if err != nil {
		return Header{}, 0, invalid("v1 source port: %v", err)
	}
	dp, err := v1Port(f[4])
	if err != nil {
		return Header{}, 0, invalid("v1 destination port: %v", err)
	}
	h.Source, h.Dest = netip.AddrPortFrom(src, sp), netip.AddrPortFrom(dst, dp)
	return h, n, nil
}

func v1Addr(s []byte, v6 bool) (netip.Addr, error) {
	a, err := netip.ParseAddr(string(s))
	if err != nil {
		return a, err
	}
	if a.Zone() != "" {
		return netip.Addr{}, fmt.Errorf("%q has a zone", s)
	}
	if v6 != a.Is6() {
		return netip.Addr{}, fmt.Errorf("%q does not match the protocol family", s)
	}
	return a, nil
}

func v1Port(s []byte) (uint16, error) {
	if len(s) == 0 || len(s) > 5 || (len(s) > 1 && s[0] == '0') {
		return 0, fmt.Errorf("%q is not a port number without leading zeros", s)
	}
	n := 0
	for _, c := range s {
		if c < '0' || c > '9' {
			return 0, fmt.Errorf("%q is not a decimal number", s)
		}
		n = n*10 + int(c-'0')
	}
	if n > 65535 {
		return 0, fmt.Errorf("%d is over 65535", n)
	}
	return uint16(n), nil
}

func parseV2(b []byte) (Header, int, error) {
	if n := min(len(b), len(Signature)); !bytes.Equal(b[:n], Signature[:n]) {
		return Header{}, 0, ErrNotProxy
	}
	if len(b) < v2FixedLen {
		return Header{}, 0, ErrIncomplete
	}
	verCmd, fam := b[12], b[13]
	if verCmd>>4 != 2 {
		return Header{}, 0, invalid("v2 version %d, want 2", verCmd>>4)
	}
	cmd := Command(verCmd & 0x0f)
	if cmd > Proxy {
		return Header{}, 0, invalid("v2 command %d is neither LOCAL nor PROXY", cmd)
	}
	length := int(binary.BigEndian.Uint16(b[14:16]))
	total := v2FixedLen + length
	if total > MaxV2Len {
		return Header{}, 0, invalid("v2 header of %d bytes exceeds the %d-byte limit", total, MaxV2Len)
	}
	if len(b) < total {
		return Header{}, 0, ErrIncomplete
	}
	body := b[v2FixedLen:total]
	h := Header{Version: 2, Command: cmd}
	var alen int
	switch fam >> 4 {
	case 0: // AF_UNSPEC
	case 1:
		alen = 12
	case 2:
		alen = 36
	case 3:
		alen = 216
	default:
		return Header{}, 0, invalid("v2 address family %d unknown", fam>>4)
	}
	if tr := fam & 0x0f; tr > 2 {
		return Header{}, 0, invalid("v2 transport protocol %d unknown", tr)
	}
	if len(body) < alen {
		return Header{}, 0, invalid("v2 length %d is shorter than the %d address bytes of family 0x%02x", length, alen, fam)
	}
	h.TLVs = body[alen:]
	if cmd == Local {
		return h, total, nil // addresses, if any, are to be ignored
	}
	switch fam {
	case 0x11: // TCP over IPv4
		h.Source = netip.AddrPortFrom(netip.AddrFrom4([4]byte(body[0:4])), binary.BigEndian.Uint16(body[8:10]))
		h.Dest = netip.AddrPortFrom(netip.AddrFrom4([4]byte(body[4:8])), binary.BigEndian.Uint16(body[10:12]))
	case 0x21: // TCP over IPv6
		h.Source = netip.AddrPortFrom(netip.AddrFrom16([16]byte(body[0:16])), binary.BigEndian.Uint16(body[32:34]))
		h.Dest = netip.AddrPortFrom(netip.AddrFrom16([16]byte(body[16:32])), binary.BigEndian.Uint16(body[34:36]))
	}
	// Other families (UNSPEC, UDP, unix sockets) are accepted without
	// addresses: the receiver falls back to the socket's own.
	return h, total, nil
}
