package httphead

import (
	"crypto/sha1"
	"encoding/base64"
)

// WebSocket opening-handshake errors (RFC 6455 section 4.2.1).
var (
	// ErrNotUpgrade: the request does not ask for the WebSocket protocol
	// (no "websocket" in Upgrade); RFC 9110 section 15.5.22 makes that a
	// 426 naming the protocol.
	ErrNotUpgrade = &Error{Status: 426, Reason: "this endpoint speaks WebSocket: send Upgrade: websocket (RFC 6455 section 4.1)"}
	// ErrVersion13: Sec-WebSocket-Version is not exactly one "13"; RFC 6455
	// section 4.4 answers 426 listing the versions served.
	ErrVersion13   = &Error{Status: 426, Reason: "Sec-WebSocket-Version must be 13 (RFC 6455 section 4.4)", Header: UpgradeLine + "Sec-WebSocket-Version: 13\r\n"}
	ErrHTTP11      = bad("a WebSocket handshake needs HTTP/1.1 or later (RFC 6455 section 4.1)")
	ErrConnection  = bad("Connection does not list upgrade (RFC 6455 section 4.1)")
	ErrKey         = bad("Sec-WebSocket-Key must be the base64 of 16 bytes (RFC 6455 section 4.1)")
	ErrKeyRepeated = bad("more than one Sec-WebSocket-Key (RFC 6455 section 11.3.1)")
	ErrWSNotGET    = &Error{Status: 405, Reason: "a WebSocket handshake is a GET (RFC 6455 section 4.1)"}
)

// CheckUpgrade applies RFC 6455 section 4.2.1 to a parsed request that
// asks for a WebSocket and returns its Sec-WebSocket-Key (aliasing the
// head). Refused: a method other than GET (405), HTTP/1.0 (400), no
// "websocket" token in Upgrade (426 with Upgrade: websocket), no "upgrade"
// token in Connection (400), a Sec-WebSocket-Key that is missing, repeated,
// or not the padded base64 of exactly 16 bytes (400), a
// Sec-WebSocket-Version that is missing, repeated or not 13 (426 with
// Sec-WebSocket-Version: 13). Host was checked by Parse.
func CheckUpgrade(r *Request) ([]byte, *Error) {
	if string(r.Method) != "GET" {
		return nil, ErrWSNotGET
	}
	if r.Minor < 1 {
		return nil, ErrHTTP11
	}
	if !r.HasToken("Upgrade", "websocket") {
		return nil, ErrNotUpgrade
	}
	if !r.HasToken("Connection", "upgrade") {
		return nil, ErrConnection
	}
	key, n := r.Get("Sec-WebSocket-Key")
	switch {
	case n == 0:
		return nil, ErrKey
	case n > 1:
		return nil, ErrKeyRepeated
	case !ValidKey(key):
		return nil, ErrKey
	}
	if v, n := r.Get("Sec-WebSocket-Version"); n != 1 || string(v) != "13" {
		return nil, ErrVersion13
	}
	return key, nil
}

// ValidKey reports whether key is the standard, padded base64 encoding of
// exactly 16 bytes: 22 characters of the alphabet, a last one whose low
// four bits are zero (canonical), then "==".
func ValidKey(key []byte) bool {
	if len(key) != 24 || key[22] != '=' || key[23] != '=' {
		return false
	}
	var dst [18]byte
	n, err := strictBase64.Decode(dst[:], key)
	return err == nil && n == 16
}

// AcceptKey is the Sec-WebSocket-Accept value for key (RFC 6455 section
// 4.2.2 item 5.4): base64(SHA-1(key + the protocol's GUID)). key is a
// 24-byte key CheckUpgrade returned; a longer one is cut to 24 bytes.
func AcceptKey(key []byte) [28]byte {
	var in [24 + len(wsGUID)]byte
	n := copy(in[:], key)
	n += copy(in[n:], wsGUID)
	sum := sha1.Sum(in[:n])
	var out [28]byte
	base64.StdEncoding.Encode(out[:], sum[:])
	return out
}

const wsGUID = "258EAFA5-E914-47DA-95CA-C5AB0DC85B11"

var strictBase64 = base64.StdEncoding.Strict()
