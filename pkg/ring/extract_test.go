package ring

import "testing"

func TestURLParam(t *testing.T) {
	tests := []struct {
		uri, name, value string
		ok               bool
	}{
		{"/ws?uid=42&token=x", "uid", "42", true},
		{"/ws?token=x&uid=42", "uid", "42", true},
		{"/ws?uid=", "uid", "", true},
		{"/ws?uid=&x=1", "uid", "", true},
		{"/ws?uid=a&uid=b", "uid", "a", true},
		{"/ws?xuid=1&uid=2", "uid", "2", true},
		{"/ws?UID=1&uid=2", "uid", "2", true},
		{"/ws?uid=a%2Fb+c", "uid", "a%2Fb+c", true},
		{"/ws?uid=a=b", "uid", "a=b", true},
		{"/ws?a=1?uid=2", "uid", "", false}, // only '&' splits
		{"/ws?a=1;uid=2", "uid", "", false},
		{"/ws?a=1&&uid=2", "uid", "2", true},
		{"/ws?uid", "uid", "", false},
		{"/ws?uid&uid=3", "uid", "3", true},
		{"/uid=1", "uid", "", false}, // no '?'
		{"/ws?x=1", "uid", "", false},
		{"/p?q?uid=1", "uid", "", false}, // the first '?' starts the params
		{"/ws??uid=1", "uid", "", false},
		{"/ws?&uid=1", "uid", "1", true},
		{"", "uid", "", false},
	}
	for _, tt := range tests {
		v, ok := URLParam([]byte(tt.uri), tt.name)
		if ok != tt.ok || string(v) != tt.value {
			t.Errorf("URLParam(%q, %q) = %q %v, want %q %v", tt.uri, tt.name, v, ok, tt.value, tt.ok)
		}
	}
}

func TestFirstHeaderElement(t *testing.T) {
	tests := []struct{ in, want string }{
		{"abc", "abc"},
		{"  abc \t", "abc"},
		{"a, b", "a"},
		{" a b , c", "a b"},
		{`"x, y", z`, `"x, y"`},
		{`"x\", y", z`, `"x\", y"`},
		{`a"b,c"d,e`, `a"b,c"d`},
		{`"unterminated, x`, `"unterminated, x`},
		{",a", ""},
		{"", ""},
		{" , ", ""},
	}
	for _, tt := range tests {
		if got := FirstHeaderElement([]byte(tt.in)); string(got) != tt.want {
			t.Errorf("FirstHeaderElement(%q) = %q, want %q", tt.in, got, tt.want)
		}
	}
}

func TestCookieValue(t *testing.T) {
	tests := []struct {
		header, name, value string
		ok                  bool
	}{
		{"uid=42", "uid", "42", true},
		{"a=1; uid=42; b=2", "uid", "42", true},
		{"a=1;uid=42", "uid", "42", true},
		{"xuid=1; uid=2", "uid", "2", true},
		{"UID=1; uid=2", "uid", "2", true},
		{"uid=1; uid=2", "uid", "1", true},
		{`uid="quoted"`, "uid", "quoted", true},
		{"uid=", "uid", "", true},
		{"uid; uid=3", "uid", "3", true},
		{" uid = 4 ", "uid", "4", true},
		{"a=1", "uid", "", false},
		{"", "uid", "", false},
	}
	for _, tt := range tests {
		v, ok := CookieValue([]byte(tt.header), tt.name)
		if ok != tt.ok || string(v) != tt.value {
			t.Errorf("CookieValue(%q, %q) = %q %v, want %q %v", tt.header, tt.name, v, ok, tt.value, tt.ok)
		}
	}
}
