package main

import (
	"encoding/json"
	"net/url"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

// The configuration and connection tokens pushbench gives Centrifugo,
// checked by the real binary (scripts/centrifugo.sh installs it in bin/;
// the test is skipped without it).
func TestCentrifugoAcceptsConfigAndToken(t *testing.T) {
	bin, err := filepath.Abs("../../../bin/centrifugo")
	if err != nil {
		t.Fatal(err)
	}
	if _, err := os.Stat(bin); err != nil {
		t.Skip("bin/centrifugo not installed (scripts/centrifugo.sh)")
	}
	secret := newSecret()
	js, err := json.Marshal(centrifugoConfig(secret, "api-key"))
	if err != nil {
		t.Fatal(err)
	}
	cfg := filepath.Join(t.TempDir(), "config.json")
	if err := os.WriteFile(cfg, js, 0o600); err != nil {
		t.Fatal(err)
	}
	if out, err := exec.Command(bin, "checkconfig", "--config", cfg).CombinedOutput(); err != nil {
		t.Fatalf("checkconfig: %v\n%s", err, out)
	}
	tok, err := centrifugoToken([]byte(secret), "u7", time.Now())
	if err != nil {
		t.Fatal(err)
	}
	out, err := exec.Command(bin, "checktoken", "--config", cfg, tok).CombinedOutput()
	if err != nil || !strings.Contains(string(out), "valid token for user u7") || !strings.Contains(string(out), `"channels":["`+centrifugoAll+`"]`) {
		t.Fatalf("checktoken: %v\n%s", err, out)
	}
	// A token signed with another secret is refused.
	bad, _ := centrifugoToken([]byte(newSecret()), "u7", time.Now())
	if out, err := exec.Command(bin, "checktoken", "--config", cfg, bad).CombinedOutput(); err == nil {
		t.Fatalf("checktoken accepted a token signed with another secret:\n%s", out)
	}
}

func TestCentrifugoQueryCarriesConnectRequest(t *testing.T) {
	secret := []byte(newSecret())
	q, err := url.ParseQuery(centrifugoQuery(secret, "u3", time.Now()))
	if err != nil {
		t.Fatal(err)
	}
	var req struct {
		Token string `json:"token"`
	}
	if err := json.Unmarshal([]byte(q.Get("cf_connect")), &req); err != nil || req.Token == "" {
		t.Fatalf("cf_connect %q: %v", q.Get("cf_connect"), err)
	}
	if len(strings.Split(req.Token, ".")) != 3 {
		t.Fatalf("token %q is not a JWT", req.Token)
	}
}
