package userid

import (
	"errors"
	"strings"
	"testing"
)

func TestValid(t *testing.T) {
	for uid, want := range map[string]bool{
		"alice": true, "u-1.2_3~x:y@z": true, strings.Repeat("a", 128): true,
		"": false, strings.Repeat("a", 129): false, "a b": false, "a%20b": false,
		"a/b": false, "a+b": false, "é": false, "a\x00": false,
	} {
		if Valid(uid) != want {
			t.Errorf("Valid(%q) = %v, want %v", uid, !want, want)
		}
	}
}

func TestCheckAll(t *testing.T) {
	if err := CheckAll(nil); !errors.Is(err, ErrInvalid) {
		t.Errorf("empty list: %v", err)
	}
	if err := CheckAll(make([]string, MaxPerCall+1)); !errors.Is(err, ErrTooMany) {
		t.Errorf("too many: %v", err)
	}
	if err := CheckAll([]string{"ok", "not ok"}); !errors.Is(err, ErrInvalid) || !strings.Contains(err.Error(), `"not ok"`) {
		t.Errorf("bad id: %v", err)
	}
	if err := CheckAll([]string{"a", "b"}); err != nil {
		t.Errorf("valid list: %v", err)
	}
}
