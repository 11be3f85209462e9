package ring

import (
	"bytes"

	"github.com/pushcluster/push/pkg/httphead"
)

// URLParam returns the value of the first name= parameter of a raw request
// URI, like HAProxy's "balance url_param <name>": parameters start after
// the first '?' and are split on '&' only, the name matches exactly and
// case-sensitively, and the value is raw (not URL-decoded) and may be
// empty. ok is false when there is no such parameter (HAProxy then falls
// back to round robin).
//
// It is httphead.QueryParam on the part after the first '?': the one rule
// the router hashes with and the edge admits with.
func URLParam(requestURI []byte, name string) (value []byte, ok bool) {
	q := bytes.IndexByte(requestURI, '?')
	if q < 0 {
		return nil, false
	}
	return httphead.QueryParam(requestURI[q+1:], name)
}

// FirstHeaderElement returns the first comma-separated element of a header
// value with surrounding spaces and tabs trimmed, like HAProxy's
// "balance hdr(<name>)" applied to the first header line of that name. A
// comma inside a double-quoted string (where a backslash escapes the next
// byte) does not split, and the quotes are kept. HAProxy falls back to
// round robin when the result is empty.
func FirstHeaderElement(value []byte) []byte {
	for len(value) > 0 && isLWS(value[0]) {
		value = value[1:]
	}
	quoted, escaped := false, false
	end := len(value)
scan:
	for i, c := range value {
		switch {
		case escaped:
			escaped = false
		case quoted && c == '\\':
			escaped = true
		case c == '"':
			quoted = !quoted
		case !quoted && c == ',':
			end = i
			break scan
		}
	}
	value = value[:end]
	for len(value) > 0 && isLWS(value[len(value)-1]) {
		value = value[:len(value)-1]
	}
	return value
}

// isLWS is HAProxy's HTTP_IS_LWS.
func isLWS(c byte) bool { return c == ' ' || c == '\t' || c == '\r' || c == '\n' }

// CookieValue returns the value of the first cookie called name in a
// Cookie header value ("a=1; b=2"), per RFC 6265 section 5.4: pairs are
// split on ';', surrounding spaces and tabs are trimmed, names match
// exactly and case-sensitively, pairs without '=' are ignored, and one
// pair of double quotes around the value is removed. HAProxy has no
// "balance cookie"; this is the router's own rule. HTTP/2 clients may send
// several Cookie headers: look in each in order.
func CookieValue(cookieHeader []byte, name string) ([]byte, bool) {
	for len(cookieHeader) > 0 {
		pair := cookieHeader
		if semi := bytes.IndexByte(cookieHeader, ';'); semi >= 0 {
			pair, cookieHeader = cookieHeader[:semi], cookieHeader[semi+1:]
		} else {
			cookieHeader = nil
		}
		eq := bytes.IndexByte(pair, '=')
		if eq < 0 || string(trimSpace(pair[:eq])) != name {
			continue
		}
		v := trimSpace(pair[eq+1:])
		if len(v) >= 2 && v[0] == '"' && v[len(v)-1] == '"' {
			v = v[1 : len(v)-1]
		}
		return v, true
	}
	return nil, false
}

func trimSpace(b []byte) []byte {
	for len(b) > 0 && (b[0] == ' ' || b[0] == '\t') {
		b = b[1:]
	}
	for len(b) > 0 && (b[len(b)-1] == ' ' || b[len(b)-1] == '\t') {
		b = b[:len(b)-1]
	}
	return b
}
