// Package proxyproto encodes and parses the PROXY protocol (HAProxy's
// proxy-protocol.txt, versions 1 and 2) that carries a client's original
// addresses across a TCP proxy.
//
// The package is pure: it works on byte slices, never on sockets. Parse is
// meant for a peeked prefix of a stream: it says how many bytes the header
// occupies (so the caller consumes exactly those), asks for more with
// ErrIncomplete, and bounds its work by MaxV1Len and MaxV2Len.
//
// What Parse accepts is what HAProxy's own receiver (conn_recv_proxy in
// src/connection.c, checked against HAProxy 2.6 in TestAgainstHAProxy)
// accepts, within the specification:
//
//   - v1: "PROXY TCP4 <a.b.c.d> <a.b.c.d> <port> <port>\r\n", the same with
//     TCP6 and IPv6 addresses (IPv4-mapped ones included, no zone), single
//     spaces, CRLF, ports 0-65535 (leading zeros allowed, as HAProxy reads
//     them), at most 107 bytes; "PROXY UNKNOWN" with anything up to CRLF.
//   - v2: signature, version 2, then LOCAL with any family, transport,
//     length and TLVs (the block is ignored, section 2.2); PROXY with TCP
//     over IPv4 (0x11, at least 12 address bytes) or IPv6 (0x21, at least
//     36) and well-formed TLVs: each fits, they end exactly at the header's
//     end, CRC32C (0x03) is 4 bytes and matches, AUTHORITY (0x02) is at
//     most 255 bytes, UNIQUE_ID (0x05) at most 128.
//
// Refused with ErrInvalid and the reason: everything else. Deliberate
// differences from HAProxy 2.6, each a header outside the specification or
// one the specification orders accepted: HAProxy also takes v1 ports over
// 65535 or empty, IPv4 octets over 255 or fewer than four (it then uses a
// wrong address), and a fifth TCP6 field; it refuses "PROXY UNKNOWN"
// followed by addresses, which section 2.1 says a receiver must accept.
// PROXY with UNSPEC, UDP or unix families is refused like HAProxy does
// (section 2.2 lets a receiver refuse them; they carry no address the
// cluster could use).
package proxyproto

import (
	"bytes"
	"encoding/binary"
	"errors"
	"fmt"
	"hash/crc32"
	"net/netip"
	"strconv"
)

// Signature opens every version 2 header.
var Signature = [12]byte{0x0D, 0x0A, 0x0D, 0x0A, 0x00, 0x0D, 0x0A, 0x51, 0x55, 0x49, 0x54, 0x0A}

const (
	// MaxV1Len is the longest version 1 line, CRLF included (the spec's
	// worst case "PROXY UNKNOWN ffff:...").
	MaxV1Len = 107
	// MaxV2Len is the longest version 2 header: the 16-byte fixed part
	// plus the most its 16-bit length can announce. Every length is
	// accepted (HAProxy's own limit is its buffer, 16 KiB by default), so
	// a caller that peeks must be able to hold this much.
	MaxV2Len = v2FixedLen + 0xffff
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
	// addresses of a PROXY command (aliases the input; checked as the
	// package comment says); nil for LOCAL and version 1.
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
	if bytes.IndexByte(line, '\n') >= 0 {
		return Header{}, 0, invalid("v1 line ends with LF without CR")
	}
	n := end + 2
	h := Header{Version: 1, Command: Proxy}
	if bytes.HasPrefix(line, []byte("UNKNOWN")) && (len(line) == 7 || line[7] == ' ') {
		// Section 2.1: the receiver must ignore whatever follows UNKNOWN.
		h.Command = Local
		return h, n, nil
	}
	f := bytes.Split(line, []byte(" "))
	var v6 bool
	switch string(f[0]) {
	case "TCP4":
	case "TCP6":
		v6 = true
	default:
		return Header{}, 0, invalid("v1 protocol %q is not TCP4, TCP6 or UNKNOWN", f[0])
	}
	if len(f) != 5 {
		return Header{}, 0, invalid("v1 %s line has %d fields, want 5 separated by single spaces", f[0], len(f))
	}
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

// v1Addr reads a TCP4 address as four decimal octets (leading zeros are
// decimal, as HAProxy's inetaddr_host_lim_ret reads them, not octal) or a
// TCP6 address as inet_pton(AF_INET6) does (no zone).
func v1Addr(s []byte, v6 bool) (netip.Addr, error) {
	if !v6 {
		var a [4]byte
		parts := bytes.Split(s, []byte("."))
		if len(parts) != 4 {
			return netip.Addr{}, fmt.Errorf("%q is not four dotted decimal octets", s)
		}
		for i, p := range parts {
			if len(p) == 0 || len(p) > 3 {
				return netip.Addr{}, fmt.Errorf("%q is not four dotted decimal octets", s)
			}
			v := 0
			for _, c := range p {
				if c < '0' || c > '9' {
					return netip.Addr{}, fmt.Errorf("%q is not four dotted decimal octets", s)
				}
				v = v*10 + int(c-'0')
			}
			if v > 255 {
				return netip.Addr{}, fmt.Errorf("%q has an octet over 255", s)
			}
			a[i] = byte(v)
		}
		return netip.AddrFrom4(a), nil
	}
	a, err := netip.ParseAddr(string(s))
	if err != nil {
		return a, err
	}
	if a.Zone() != "" {
		return netip.Addr{}, fmt.Errorf("%q has a zone", s)
	}
	if !a.Is6() {
		return netip.Addr{}, fmt.Errorf("%q is not an IPv6 address", s)
	}
	return a, nil
}

// v1Port reads a decimal port from 0 to 65535; leading zeros are accepted
// as HAProxy's read_uint accepts them.
func v1Port(s []byte) (uint16, error) {
	if len(s) == 0 {
		return 0, fmt.Errorf("empty")
	}
	n := 0
	for _, c := range s {
		if c < '0' || c > '9' {
			return 0, fmt.Errorf("%q is not a decimal number", s)
		}
		if n = n*10 + int(c-'0'); n > 65535 {
			return 0, fmt.Errorf("%q is over 65535", s)
		}
	}
	return uint16(n), nil
}

// TLV types that HAProxy's receiver checks (proxy-protocol.txt section
// 2.2.x).
const (
	tlvAuthority = 0x02 // at most 255 bytes (HAProxy's HA_PP2_AUTHORITY_MAX)
	tlvCRC32C    = 0x03 // 4 bytes: CRC-32C of the header with this field zero
	tlvUniqueID  = 0x05 // at most 128 bytes (section 2.2.5)
)

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
		return Header{}, 0, invalid("v2 command %d is neither LOCAL (0) nor PROXY (1)", cmd)
	}
	total := v2FixedLen + int(binary.BigEndian.Uint16(b[14:16]))
	if len(b) < total {
		return Header{}, 0, ErrIncomplete
	}
	h := Header{Version: 2, Command: cmd}
	if cmd == Local {
		// Section 2.2: the receiver uses the real connection endpoints and
		// discards the protocol block, family included.
		return h, total, nil
	}
	body := b[v2FixedLen:total]
	switch fam {
	case 0x11: // TCP over IPv4
		if len(body) < 12 {
			return Header{}, 0, invalid("v2 TCP over IPv4 with %d address bytes, want at least 12", len(body))
		}
		h.Source = netip.AddrPortFrom(netip.AddrFrom4([4]byte(body[0:4])), binary.BigEndian.Uint16(body[8:10]))
		h.Dest = netip.AddrPortFrom(netip.AddrFrom4([4]byte(body[4:8])), binary.BigEndian.Uint16(body[10:12]))
		h.TLVs = body[12:]
	case 0x21: // TCP over IPv6
		if len(body) < 36 {
			return Header{}, 0, invalid("v2 TCP over IPv6 with %d address bytes, want at least 36", len(body))
		}
		h.Source = netip.AddrPortFrom(netip.AddrFrom16([16]byte(body[0:16])), binary.BigEndian.Uint16(body[32:34]))
		h.Dest = netip.AddrPortFrom(netip.AddrFrom16([16]byte(body[16:32])), binary.BigEndian.Uint16(body[34:36]))
		h.TLVs = body[36:]
	default:
		return Header{}, 0, invalid("v2 PROXY command with family and transport 0x%02x: only TCP over IPv4 (0x11) or IPv6 (0x21) carries an address the connection can use", fam)
	}
	if err := checkTLVs(b[:total], len(b[:total])-len(h.TLVs)); err != nil {
		return Header{}, 0, err
	}
	return h, total, nil
}

// checkTLVs validates the TLVs of hdr, a whole v2 header, from offset off
// as HAProxy's receiver does.
func checkTLVs(hdr []byte, off int) error {
	for off < len(hdr) {
		if off+3 > len(hdr) {
			return invalid("v2 TLV at byte %d: %d bytes left, a TLV header needs 3", off, len(hdr)-off)
		}
		typ, n := hdr[off], int(binary.BigEndian.Uint16(hdr[off+1:off+3]))
		val := off + 3
		if val+n > len(hdr) {
			return invalid("v2 TLV 0x%02x at byte %d: %d value bytes, %d left", typ, off, n, len(hdr)-val)
		}
		switch typ {
		case tlvAuthority:
			if n > 255 {
				return invalid("v2 AUTHORITY TLV of %d bytes, at most 255", n)
			}
		case tlvUniqueID:
			if n > 128 {
				return invalid("v2 UNIQUE_ID TLV of %d bytes, at most 128", n)
			}
		case tlvCRC32C:
			if n != 4 {
				return invalid("v2 CRC32C TLV of %d bytes, want 4", n)
			}
			want := binary.BigEndian.Uint32(hdr[val:])
			c := crc32.Update(0, castagnoli, hdr[:val])
			c = crc32.Update(c, castagnoli, []byte{0, 0, 0, 0})
			c = crc32.Update(c, castagnoli, hdr[val+4:])
			if c != want {
				return invalid("v2 CRC32C TLV is %08x, the header's checksum is %08x", want, c)
			}
		}
		off = val + n
	}
	return nil
}

var castagnoli = crc32.MakeTable(crc32.Castagnoli)
