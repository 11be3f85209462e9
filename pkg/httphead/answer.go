package httphead

import (
	"net/http"
	"strconv"
	"strings"
)

// Header lines the cluster's error answers must carry (RFC 9110 section
// 15): the name RequiredHeader reports for a status, and the line Append
// adds when the Error does not carry it already.
const (
	// AllowLine: a 405 lists the methods the target supports (section
	// 15.5.6). Every endpoint of the cluster serves GET only.
	AllowLine = "Allow: GET\r\n"
	// UpgradeLine: a 426 names the protocol to switch to (section 15.5.22),
	// and a sender of Upgrade lists it in Connection (section 7.8).
	UpgradeLine = "Upgrade: websocket\r\n"
	// AuthenticateLine: a 401 carries at least one challenge (section
	// 15.5.2, 11.6.1). The token is a bearer token (RFC 6750), sent in
	// the query as "token".
	AuthenticateLine = "WWW-Authenticate: Bearer realm=\"push\"\r\n"
)

// RequiredHeader returns the header field RFC 9110 requires in an answer
// with status, and the line this package writes for it ("" when none).
func RequiredHeader(status int) (name, line string) {
	switch status {
	case http.StatusUnauthorized:
		return "WWW-Authenticate", AuthenticateLine
	case http.StatusMethodNotAllowed:
		return "Allow", AllowLine
	case http.StatusUpgradeRequired:
		return "Upgrade", UpgradeLine
	}
	return "", ""
}

// Append appends the whole answer for e to b: status line, the header line
// RFC 9110 requires for the status unless e.Header has that field already,
// e.Header, a plain-text body of e.Reason with its length, and
// "Connection: close" (with "Upgrade" listed too when the answer carries an
// Upgrade field): every refused request ends its connection.
func (e *Error) Append(b []byte) []byte {
	status := e.Status
	b = append(b, "HTTP/1.1 "...)
	b = strconv.AppendInt(b, int64(status), 10)
	b = append(b, ' ')
	b = append(b, http.StatusText(status)...)
	b = append(b, "\r\n"...)
	if name, line := RequiredHeader(status); name != "" && !hasField(e.Header, name) {
		b = append(b, line...)
	}
	b = append(b, e.Header...)
	b = append(b, "Content-Type: text/plain; charset=utf-8\r\nContent-Length: "...)
	b = strconv.AppendInt(b, int64(len(e.Reason)), 10)
	if status == http.StatusUpgradeRequired || hasField(e.Header, "Upgrade") {
		b = append(b, "\r\nConnection: Upgrade, close\r\n\r\n"...)
	} else {
		b = append(b, "\r\nConnection: close\r\n\r\n"...)
	}
	return append(b, e.Reason...)
}

// hasField reports whether header lines h have a field called name.
func hasField(h, name string) bool {
	for h != "" {
		line, rest, _ := strings.Cut(h, "\r\n")
		if n, _, ok := strings.Cut(line, ":"); ok && strings.EqualFold(n, name) {
			return true
		}
		h = rest
	}
	return false
}
