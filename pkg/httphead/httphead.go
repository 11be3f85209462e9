// Package httphead parses the HTTP/1.x request heads of the push cluster:
// the one parser the edge (/ws, /sse, /poll) and the router's peek share, so
// both refuse the same heads with the same status.
//
// The package is pure and, on its hot path, allocation-free: Parse fills a
// caller-owned Request whose slices alias the head, and a Request reused
// across calls keeps its field table. It follows RFC 9112 (HTTP/1.1 message
// syntax) and RFC 9110 (semantics), stricter where the RFCs let a server
// choose between rejecting and repairing: every such input is refused with
// 400, because a router and an edge that repaired it differently would
// disagree about the request (the classic smuggling setup).
package httphead

import (
	"bytes"
	"strconv"
)

// Field is one header field line: its name as sent and its value with
// surrounding whitespace (OWS) removed. Both alias the head.
type Field struct {
	Name, Value []byte
}

// Request is a parsed request head. Every slice aliases the head given to
// Parse and is valid only while the head is.
type Request struct {
	// Method is the request method token (RFC 9110 section 9), as sent:
	// methods are case-sensitive.
	Method []byte
	// Target is the request-target as sent (RFC 9112 section 3.2).
	Target []byte
	// Authority is the host[:port] of an absolute-form target, nil for an
	// origin-form one.
	Authority []byte
	// Path is the target's path ("/ws"): all of an origin-form target up
	// to '?', or what follows the authority in an absolute-form one ("/"
	// when that is empty, RFC 9112 section 3.2.2).
	Path []byte
	// Query is the raw query after the first '?', without it; nil when the
	// target has no '?'.
	Query []byte
	// Minor is the x of "HTTP/1.x".
	Minor int
	// Host is the value of the one Host field line (RFC 9112 section 3.2).
	Host []byte
	// Fields are every field line in order, Host included.
	Fields []Field
}

// Get returns the value of the first field called name (compared without
// regard to case, RFC 9110 section 5.1) and how many lines carry that name.
func (r *Request) Get(name string) (value []byte, count int) {
	for i := range r.Fields {
		if equalFold(r.Fields[i].Name, name) {
			if count == 0 {
				value = r.Fields[i].Value
			}
			count++
		}
	}
	return value, count
}

// HasToken reports whether some line of field name carries token as one of
// its comma-separated elements, compared without regard to case (the rule
// for Connection and Upgrade, RFC 9110 sections 7.6.1 and 7.8).
func (r *Request) HasToken(name, token string) bool {
	for i := range r.Fields {
		if !equalFold(r.Fields[i].Name, name) {
			continue
		}
		v := r.Fields[i].Value
		for len(v) > 0 {
			var e []byte
			if j := bytes.IndexByte(v, ','); j >= 0 {
				e, v = v[:j], v[j+1:]
			} else {
				e, v = v, nil
			}
			if equalFold(trimOWS(e), token) {
				return true
			}
		}
	}
	return false
}

// Param returns the first name= parameter of the target's query; see
// QueryParam.
func (r *Request) Param(name string) ([]byte, bool) { return QueryParam(r.Query, name) }

// QueryParam returns the value of the first name= parameter of a raw query
// (the part after '?'), like HAProxy's "balance url_param": parameters are
// split on '&' only, the name matches exactly and case-sensitively, a
// parameter without '=' is skipped, and the value is raw (not
// percent-decoded) and may be empty. ok is false when there is none. The
// router hashes on this value and the edge checks the same bytes, so the
// user a router picks and the user an edge admits are the same.
func QueryParam(query []byte, name string) (value []byte, ok bool) {
	n := len(name)
	for len(query) > n {
		if query[n] == '=' && string(query[:n]) == name {
			value = query[n+1:]
			if amp := bytes.IndexByte(value, '&'); amp >= 0 {
				value = value[:amp]
			}
			return value, true
		}
		amp := bytes.IndexByte(query, '&')
		if amp < 0 {
			break
		}
		query = query[amp+1:]
	}
	return nil, false
}

// Error is a refused request: the status to answer with, a short reason
// for the body, and any header lines the answer needs ("Allow: GET\r\n").
// Append writes the whole answer.
type Error struct {
	Status int
	Reason string
	Header string
}

func (e *Error) Error() string { return strconv.Itoa(e.Status) + " " + e.Reason }

func bad(reason string) *Error { return &Error{Status: 400, Reason: reason} }

// Parse errors. Each is a *Error with status 400 except ErrVersion (505).
var (
	ErrRequestLine  = bad("malformed request line: want <method> SP <target> SP HTTP/1.x CRLF (RFC 9112 section 3)")
	ErrMethod       = bad("method is not a token (RFC 9110 section 9.1)")
	ErrTarget       = bad("request target is neither origin-form nor absolute-form, or holds a byte outside visible US-ASCII or '#' (RFC 9112 section 3.2)")
	ErrProtocol     = bad("protocol is not HTTP/<digit>.<digit> (RFC 9112 section 2.3)")
	ErrVersion      = &Error{Status: 505, Reason: "only HTTP/1.0 and HTTP/1.1 are served (RFC 9110 section 15.6.6)"}
	ErrLineEnding   = bad("bare CR or LF: lines end with CRLF (RFC 9112 section 2.2)")
	ErrFolded       = bad("obsolete line folding or whitespace before the first field (RFC 9112 sections 2.2 and 5.2)")
	ErrFieldName    = bad("field name is not a token, or whitespace before its colon (RFC 9112 section 5.1)")
	ErrFieldValue   = bad("field value holds a control character (RFC 9110 section 5.5)")
	ErrNoHost       = bad("no Host field (RFC 9112 section 3.2)")
	ErrTwoHosts     = bad("more than one Host field (RFC 9112 section 3.2)")
	ErrBadHost      = bad("Host field is not a valid host[:port] (RFC 9110 section 7.2)")
	ErrContent      = bad("request content is not accepted: no Transfer-Encoding, Content-Length only 0 (RFC 9112 section 6)")
	ErrIncomplete   = bad("request head does not end with an empty line (RFC 9112 section 2.1)")
	ErrTooManyLines = bad("more than 100 field lines")
)

// MaxFields bounds the field lines of one head, so a head of many tiny
// lines costs a bounded table.
const MaxFields = 100

// Parse parses head, a complete request head that ends with CRLF CRLF
// (RFC 9112 section 2.1: request-line, field lines, empty line), into r,
// reusing r.Fields. Empty lines before the request line are skipped (RFC
// 9112 section 2.2). It returns nil or one of the *Error values above, and
// costs one pass over head.
//
// Refused (400 unless noted): a request line that is not exactly three
// parts separated by single spaces; a method that is not a token; a target
// that is not origin-form ("/p?q") or absolute-form ("http://h/p?q") or has
// bytes outside visible US-ASCII or a '#'; a protocol other than
// HTTP/<d>.<d>; a major version other than 1 (505); CR or LF other than in
// CRLF; folded lines; whitespace or any non-token byte in a field name
// (so "Origin : x" is refused); NUL or other controls but HTAB in a value;
// no Host, two Host lines, or a Host value that is not host[:port];
// Transfer-Encoding or a Content-Length other than 0 (the cluster's
// endpoints take no content, and refusing it leaves no body for a router
// and an edge to frame differently); more than MaxFields lines.
func Parse(head []byte, r *Request) error {
	*r = Request{Fields: r.Fields[:0]}
	for bytes.HasPrefix(head, crlf) {
		head = head[2:]
	}
	if !bytes.HasSuffix(head, crlfcrlf) {
		return ErrIncomplete
	}
	eol := bytes.Index(head, crlf)
	if err := r.requestLine(head[:eol]); err != nil {
		return err
	}
	rest := head[eol+2 : len(head)-2] // field lines, each ending with CRLF
	for len(rest) > 0 {
		eol = bytes.Index(rest, crlf)
		line := rest[:eol]
		rest = rest[eol+2:]
		if len(r.Fields) == MaxFields {
			return ErrTooManyLines
		}
		if err := r.fieldLine(line); err != nil {
			return err
		}
	}
	if r.Host == nil {
		return ErrNoHost
	}
	return nil
}

var (
	crlf     = []byte("\r\n")
	crlfcrlf = []byte("\r\n\r\n")
)

// HeadEnd finds the end of the request head at the start of b: n > 0 is
// the head's length in bytes, through the CRLF CRLF that ends it; n = 0
// means b holds no whole head yet. A line feed without its carriage
// return before that end refuses the head at once with ErrLineEnding
// (RFC 9112 section 2.2 lets a recipient refuse a bare LF, and every
// server here does), so a head whose lines end with LF alone gets its 400
// now instead of waiting for a CRLF CRLF that never comes. Cost: one pass
// over b.
func HeadEnd(b []byte) (n int, err *Error) {
	for i := 0; ; i++ {
		j := bytes.IndexByte(b[i:], '\n')
		if j < 0 {
			return 0, nil
		}
		i += j
		if i == 0 || b[i-1] != '\r' {
			return 0, ErrLineEnding
		}
		if i >= 3 && b[i-2] == '\n' && b[i-3] == '\r' {
			return i + 1, nil
		}
	}
}

func (r *Request) requestLine(line []byte) error {
	sp1 := bytes.IndexByte(line, ' ')
	if sp1 <= 0 {
		return ErrRequestLine
	}
	sp2 := bytes.IndexByte(line[sp1+1:], ' ')
	if sp2 <= 0 {
		return ErrRequestLine
	}
	sp2 += sp1 + 1
	r.Method, r.Target = line[:sp1], line[sp1+1:sp2]
	proto := line[sp2+1:]
	for _, c := range line {
		if c == '\r' || c == '\n' {
			return ErrLineEnding
		}
	}
	if !isToken(r.Method) {
		return ErrMethod
	}
	if len(proto) != 8 || string(proto[:5]) != "HTTP/" || !isDigit(proto[5]) || proto[6] != '.' || !isDigit(proto[7]) {
		if bytes.IndexByte(proto, ' ') >= 0 {
			return ErrRequestLine
		}
		return ErrProtocol
	}
	if proto[5] != '1' {
		return ErrVersion
	}
	r.Minor = int(proto[7] - '0')
	return r.target()
}

// target splits the request-target (RFC 9112 section 3.2). Only the forms
// a GET can use are accepted: origin-form, and absolute-form, which a
// server must accept (section 3.2.2) and whose authority then overrides
// Host for the origin server (the Host line is still required).
func (r *Request) target() error {
	t := r.Target
	for _, c := range t {
		if c <= ' ' || c >= 0x7f || c == '#' {
			return ErrTarget
		}
	}
	var path []byte
	switch {
	case len(t) > 0 && t[0] == '/':
		path = t
	default:
		colon := bytes.IndexByte(t, ':')
		if colon <= 0 || !isScheme(t[:colon]) || !bytes.HasPrefix(t[colon+1:], []byte("//")) {
			return ErrTarget
		}
		rest := t[colon+3:]
		end := len(rest)
		if i := bytes.IndexAny(rest, "/?"); i >= 0 {
			end = i
		}
		r.Authority, path = rest[:end], rest[end:]
		if len(r.Authority) == 0 || bytes.IndexByte(r.Authority, '@') >= 0 {
			// RFC 9110 section 4.2.1: userinfo is deprecated in http(s)
			// URIs and a recipient should treat it as an error.
			return ErrTarget
		}
	}
	if q := bytes.IndexByte(path, '?'); q >= 0 {
		path, r.Query = path[:q], path[q+1:] // "/p?" has an empty, non-nil query
	}
	if len(path) == 0 {
		path = slash
	}
	r.Path = path
	return nil
}

var slash = []byte("/")

func (r *Request) fieldLine(line []byte) error {
	if len(line) == 0 {
		return ErrIncomplete // cannot happen: the head's first empty line ends it
	}
	if line[0] == ' ' || line[0] == '\t' {
		return ErrFolded
	}
	colon := bytes.IndexByte(line, ':')
	if colon <= 0 {
		if bytes.IndexAny(line, "\r\n") >= 0 {
			return ErrLineEnding
		}
		return ErrFieldName
	}
	name, value := line[:colon], line[colon+1:]
	if !isToken(name) {
		if bytes.IndexAny(name, "\r\n") >= 0 {
			return ErrLineEnding
		}
		return ErrFieldName
	}
	for _, c := range value {
		if c < ' ' && c != '\t' || c == 0x7f {
			if c == '\r' || c == '\n' {
				return ErrLineEnding
			}
			return ErrFieldValue
		}
	}
	value = trimOWS(value)
	switch {
	case equalFold(name, "Host"):
		if r.Host != nil {
			return ErrTwoHosts
		}
		if !validHost(value) {
			return ErrBadHost
		}
		r.Host = value
	case equalFold(name, "Transfer-Encoding"):
		return ErrContent
	case equalFold(name, "Content-Length"):
		if string(value) != "0" {
			return ErrContent
		}
	}
	r.Fields = append(r.Fields, Field{Name: name, Value: value})
	return nil
}

// validHost accepts host[:port] (RFC 9110 section 7.2, RFC 3986 section
// 3.2.2): a reg-name or IPv4 of unreserved, sub-delims and '%', or an
// IP-literal in brackets, then an optional port of digits. An empty value
// is allowed by RFC 9112 section 3.2 only for targets without authority,
// which an HTTP server never gets, so it is refused.
func validHost(v []byte) bool {
	if len(v) == 0 {
		return false
	}
	host, port := v, []byte(nil)
	if v[0] == '[' {
		end := bytes.IndexByte(v, ']')
		if end < 2 {
			return false
		}
		for _, c := range v[1:end] {
			if !(isHex(c) || c == ':' || c == '.') {
				return false
			}
		}
		host, v = nil, v[end+1:]
		if len(v) > 0 {
			if v[0] != ':' {
				return false
			}
			port = v[1:]
		}
	} else if i := bytes.LastIndexByte(v, ':'); i >= 0 {
		host, port = v[:i], v[i+1:]
		if len(host) == 0 {
			return false
		}
	}
	for _, c := range host {
		if !isRegName(c) {
			return false
		}
	}
	for _, c := range port {
		if !isDigit(c) {
			return false
		}
	}
	return true
}

// tchar (RFC 9110 section 5.6.2).
var tchar = func() (t [256]bool) {
	for c := '0'; c <= '9'; c++ {
		t[c] = true
	}
	for c := 'a'; c <= 'z'; c++ {
		t[c], t[c-32] = true, true
	}
	for _, c := range "!#$%&'*+-.^_`|~" {
		t[c] = true
	}
	return t
}()

func isToken(b []byte) bool {
	if len(b) == 0 {
		return false
	}
	for _, c := range b {
		if !tchar[c] {
			return false
		}
	}
	return true
}

func isDigit(c byte) bool { return c >= '0' && c <= '9' }
func isHex(c byte) bool   { return isDigit(c) || c >= 'a' && c <= 'f' || c >= 'A' && c <= 'F' }

// isRegName: unreserved / pct-encoded / sub-delims of RFC 3986.
func isRegName(c byte) bool {
	return c >= 'a' && c <= 'z' || c >= 'A' && c <= 'Z' || isDigit(c) ||
		bytes.IndexByte([]byte("-._~%!$&'()*+,;="), c) >= 0
}

// isScheme: ALPHA *( ALPHA / DIGIT / "+" / "-" / "." ) (RFC 3986 section 3.1).
func isScheme(b []byte) bool {
	for i, c := range b {
		alpha := c >= 'a' && c <= 'z' || c >= 'A' && c <= 'Z'
		if !alpha && (i == 0 || !(isDigit(c) || c == '+' || c == '-' || c == '.')) {
			return false
		}
	}
	return true
}

func trimOWS(b []byte) []byte {
	for len(b) > 0 && (b[0] == ' ' || b[0] == '\t') {
		b = b[1:]
	}
	for len(b) > 0 && (b[len(b)-1] == ' ' || b[len(b)-1] == '\t') {
		b = b[:len(b)-1]
	}
	return b
}

// equalFold compares an ASCII token without regard to case, without the
// conversion to string that bytes.EqualFold would need.
func equalFold(b []byte, s string) bool {
	if len(b) != len(s) {
		return false
	}
	for i := 0; i < len(b); i++ {
		x, y := b[i], s[i]
		if x >= 'A' && x <= 'Z' {
			x += 32
		}
		if y >= 'A' && y <= 'Z' {
			y += 32
		}
		if x != y {
			return false
		}
	}
	return true
}
