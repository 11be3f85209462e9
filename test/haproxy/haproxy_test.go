// Package haproxy_test checks that pkg/ring's "haproxy" algorithm and its
// key extraction pick the same server as the real HAProxy binary
// ("hash-type consistent" with "balance url_param" and "balance hdr()").
package haproxy_test

import (
	"bufio"
	"bytes"
	"context"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/pushcluster/push/pkg/ring"
)

// servers in HAProxy config order: mixed ids (up to 2^20-1) and weights.
var servers = []struct {
	id     uint32
	weight int
}{
	{3, 1}, {7, 2}, {11, 5}, {100, 1}, {101, 16}, {2000, 3}, {4095, 1}, {4096, 7},
	{65535, 2}, {1048575, 1}, {12, 256}, {13, 4}, {500, 9}, {77777, 1}, {999, 32}, {1, 1},
}

// disabledID is the server marked "disabled" in the "disabled" section:
// the weight-256 one, so most keys have to go elsewhere.
const disabledID = 12

// section is one HAProxy "listen" section with its own inherited socket.
type section struct {
	name    string
	balance string
	hash    string // hash-type line
	params  ring.Params
	disable uint32
	ln      net.Listener
	ring    *ring.Ring
}

func findHAProxy(t *testing.T) string {
	path, err := exec.LookPath("haproxy")
	if err != nil {
		if os.Getenv("CI") == "true" {
			t.Fatalf("haproxy is not on PATH (required in CI): %v", err)
		}
		t.Skipf("haproxy is not on PATH: %v", err)
	}
	return path
}

func TestHAProxyCompatibility(t *testing.T) {
	bin := findHAProxy(t)
	ctx, cancel := context.WithTimeout(context.Background(), 50*time.Second)
	defer cancel()

	// Backends answer with their own member id.
	addrs := make([]string, len(servers))
	for i, s := range servers {
		id := strconv.FormatUint(uint64(s.id), 10)
		ts := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
			w.Header().Set("X-Member-Id", id)
		}))
		t.Cleanup(ts.Close)
		addrs[i] = ts.Listener.Addr().String()
	}

	no, yes := false, true
	sections := []*section{
		{name: "param", balance: "url_param uid", hash: "consistent"},
		{name: "header", balance: "hdr(X-User-Id)", hash: "consistent"},
		{name: "disabled", balance: "url_param uid", hash: "consistent", disable: disabledID},
		{name: "sdbm", balance: "url_param uid", hash: "consistent sdbm", params: ring.Params{Hash: ring.HashSDBM}},
		{name: "djb2", balance: "url_param uid", hash: "consistent djb2", params: ring.Params{Hash: ring.HashDJB2}},
		{name: "crc32", balance: "url_param uid", hash: "consistent crc32", params: ring.Params{Hash: ring.HashCRC32, Avalanche: &no}},
		{name: "wt6", balance: "url_param uid", hash: "consistent wt6", params: ring.Params{Hash: ring.HashWT6}},
		{name: "djb2-avalanche", balance: "url_param uid", hash: "consistent djb2 avalanche", params: ring.Params{Hash: ring.HashDJB2, Avalanche: &yes}},
	}

	var cfg strings.Builder
	cfg.WriteString(`global
    nbthread 1
    maxconn 1000

defaults
    mode http
    option accept-invalid-http-request
    timeout connect 2s
    timeout client 30s
    timeout server 30s
    timeout http-request 10s
    timeout http-keep-alive 30s
`)
	var files []*os.File
	for i, s := range sections {
		ln, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			t.Fatal(err)
		}
		s.ln = ln
		file, err := ln.(*net.TCPListener).File()
		if err != nil {
			t.Fatal(err)
		}
		files = append(files, file)
		doc := &ring.Document{Version: 1, Algorithm: ring.AlgorithmHAProxy, Params: s.params}
		fmt.Fprintf(&cfg, "\nlisten %s\n    bind fd@%d\n    balance %s\n    hash-type %s\n    http-response set-header X-Srv-Id %%[srv_id]\n",
			s.name, 3+i, s.balance, s.hash)
		for j, srv := range servers {
			disabled := ""
			if srv.id == s.disable {
				disabled = " disabled"
			}
			fmt.Fprintf(&cfg, "    server s%d %s id %d weight %d%s\n", srv.id, addrs[j], srv.id, srv.weight, disabled)
			doc.Members = append(doc.Members, ring.Member{ID: srv.id, Name: fmt.Sprintf("s%d", srv.id),
				WS: addrs[j], GRPC: fmt.Sprintf("127.0.0.2:%d", 1000+j), Weight: srv.weight})
		}
		if s.ring, err = ring.New(doc); err != nil {
			t.Fatal(err)
		}
	}
	cfgPath := filepath.Join(t.TempDir(), "haproxy.cfg")
	if err := os.WriteFile(cfgPath, []byte(cfg.String()), 0o644); err != nil {
		t.Fatal(err)
	}

	var stderr bytes.Buffer
	cmd := exec.Command(bin, "-f", cfgPath, "-db")
	cmd.ExtraFiles = files
	cmd.Stdout, cmd.Stderr = &stderr, &stderr
	cmd.WaitDelay = 2 * time.Second
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	exited := make(chan struct{})
	go func() { cmd.Wait(); close(exited) }()
	t.Cleanup(func() {
		cmd.Process.Kill()
		select {
		case <-exited:
		case <-time.After(5 * time.Second):
			t.Error("haproxy did not exit")
		}
		if t.Failed() {
			t.Logf("haproxy output:\n%s\nconfig:\n%s", &stderr, cfg.String())
		}
	})
	for _, f := range files {
		f.Close() // haproxy has its own copies
	}
	for _, s := range sections {
		s.ln.Close()
	}

	// Ready when every section answers.
	for _, s := range sections {
		c := &client{addr: s.ln.Addr().String()}
		if _, err := c.do([]byte("GET /ws?uid=ready HTTP/1.1\r\nHost: t\r\nX-User-Id: ready\r\n\r\n"), 10*time.Second); err != nil {
			select {
			case <-exited:
				t.Fatalf("haproxy exited: %s", &stderr)
			default:
			}
			t.Fatalf("section %s not ready: %v", s.name, err)
		}
		c.close()
	}

	var jobs []job
	add := func(s *section, req []byte, key []byte, ok bool, up func(uint32) bool) {
		j := job{section: s, req: req, desc: fmt.Sprintf("%s %.60q", s.name, key)}
		// HAProxy falls back to round robin without the parameter, and
		// for hdr() also when the element is empty: nothing to check.
		if ok && (len(key) > 0 || s.balance != "hdr(X-User-Id)") {
			if up == nil {
				j.want = s.ring.Lookup(key)
			} else {
				j.want, _ = s.ring.LookupLive(key, up)
			}
		}
		jobs = append(jobs, j)
	}
	paramReq := func(s *section, query string, up func(uint32) bool) {
		uri := "/ws?" + query
		key, ok := ring.URLParam([]byte(uri), "uid")
		add(s, []byte("GET "+uri+" HTTP/1.1\r\nHost: t\r\n\r\n"), key, ok, up)
	}
	headerReq := func(s *section, headerLines string) {
		// HAProxy hashes the first X-User-Id line's first element.
		first := headerLines[strings.Index(headerLines, ":")+1:]
		first = first[:strings.Index(first, "\r\n")]
		key := ring.FirstHeaderElement([]byte(first))
		add(s, []byte("GET /ws HTTP/1.1\r\nHost: t\r\n"+headerLines+"\r\n"), key, true, nil)
	}
	notDisabled := func(id uint32) bool { return id != disabledID }

	odd := []string{
		"uid=", "uid=&token=x", "token=abc&uid=u-1", "uid=a%2Fb", "uid=%2F", "uid=%E2%9C%93%C3%BC",
		"uid=✓ünïcødé", "uid=\xff\x80", "uid=first&uid=second", "xuid=1&uid=2", "UID=1&uid=3", "uid=a=b",
		"uid=+plus+", "uid=semi;colon", "a=1&&uid=z", "uid=" + strings.Repeat("x", 8000) + "-long",
		"uid=" + strings.Repeat("é", 3000), "uid=%00", "nouid=1", "uid",
	}
	for _, s := range sections {
		n := 2000
		if s.name == "param" || s.name == "header" || s.name == "disabled" {
			n = 10000
		}
		var up func(uint32) bool
		if s.disable != 0 {
			up = notDisabled
		}
		switch s.balance {
		case "hdr(X-User-Id)":
			for i := 0; i < n; i++ {
				headerReq(s, "X-User-Id: user-"+strconv.Itoa(i)+"\r\n")
			}
			for _, h := range []string{
				"X-User-Id: a, b\r\n", "x-user-id:   spaced  \r\n", "X-USER-ID: \t tab\t\r\n",
				"X-User-Id: \"quoted, comma\", second\r\n", "X-User-Id: \"esc\\\"aped, x\", y\r\n",
				"X-User-Id: ✓ünïcødé, z\r\n", "X-User-Id: first\r\nX-User-Id: second\r\n",
				"X-User-Id: a b c\r\n", "X-User-Id: " + strings.Repeat("k", 6000) + "\r\n",
				"X-Other: 1\r\nX-User-Id: after-other\r\n",
				"X-User-Id: \r\n", "X-User-Id: , x\r\n", // empty: round robin in HAProxy, not checked
			} {
				headerReq(s, h)
			}
		default:
			for i := 0; i < n; i++ {
				paramReq(s, "uid=uid-"+strconv.Itoa(i)+"&token=t", up)
			}
			for _, q := range odd {
				paramReq(s, q, up)
			}
		}
	}

	results := run(ctx, t, jobs, 6)
	checked := map[string]int{}
	bad := 0
	for i, res := range results {
		j := jobs[i]
		switch {
		case res.err != nil:
			bad++
			if bad <= 10 {
				t.Errorf("%s: %v", j.desc, res.err)
			}
		case j.want != 0 && res.srvID != j.want:
			bad++
			if bad <= 10 {
				t.Errorf("%s: haproxy chose %d, ring says %d", j.desc, res.srvID, j.want)
			}
		case j.want != 0:
			checked[j.section.name]++
		}
	}
	if bad > 0 {
		t.Errorf("%d of %d requests disagree or failed", bad, len(jobs))
	}
	for _, s := range sections {
		min := 2000
		if s.name == "param" || s.name == "header" || s.name == "disabled" {
			min = 10000
		}
		if checked[s.name] < min {
			t.Errorf("section %s: only %d keys checked", s.name, checked[s.name])
		}
	}
	t.Logf("keys checked per section (100%% agreement required): %v", checked)
}

type job struct {
	section *section
	req     []byte
	want    uint32 // 0: HAProxy falls back to round robin, not checked
	desc    string
}

type result struct {
	srvID uint32
	err   error
}

// run sends the jobs over keep-alive connections from workers goroutines.
func run(ctx context.Context, t *testing.T, jobs []job, workers int) []result {
	results := make([]result, len(jobs))
	next := make(chan int)
	var wg sync.WaitGroup
	for w := 0; w < workers; w++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			clients := map[*section]*client{}
			defer func() {
				for _, c := range clients {
					c.close()
				}
			}()
			for i := range next {
				j := jobs[i]
				c := clients[j.section]
				if c == nil {
					c = &client{addr: j.section.ln.Addr().String()}
					clients[j.section] = c
				}
				results[i] = c.check(j.req)
			}
		}()
	}
send:
	for i := range jobs {
		select {
		case next <- i:
		case <-ctx.Done():
			for ; i < len(jobs); i++ {
				results[i].err = fmt.Errorf("not sent: %v", ctx.Err())
			}
			break send
		}
	}
	close(next)
	wg.Wait()
	return results
}

// client is a raw HTTP/1.1 keep-alive connection, so that request bytes go
// out exactly as written.
type client struct {
	addr string
	conn net.Conn
	br   *bufio.Reader
}

func (c *client) close() {
	if c.conn != nil {
		c.conn.Close()
		c.conn = nil
	}
}

func (c *client) do(req []byte, timeout time.Duration) (*http.Response, error) {
	var err error
	for attempt := 0; attempt < 2; attempt++ { // a kept-alive connection may have been closed
		if c.conn == nil {
			if c.conn, err = net.DialTimeout("tcp", c.addr, timeout); err != nil {
				return nil, err
			}
			c.br = bufio.NewReader(c.conn)
		}
		c.conn.SetDeadline(time.Now().Add(timeout))
		var resp *http.Response
		if _, err = c.conn.Write(req); err == nil {
			if resp, err = http.ReadResponse(c.br, nil); err == nil {
				_, err = io.Copy(io.Discard, resp.Body)
				resp.Body.Close()
				if resp.Close {
					c.close()
				}
				if err == nil {
					return resp, nil
				}
			}
		}
		c.close()
	}
	return nil, err
}

func (c *client) check(req []byte) result {
	resp, err := c.do(req, 5*time.Second)
	if err != nil {
		return result{err: err}
	}
	srv := resp.Header.Get("X-Srv-Id")
	id, err := strconv.ParseUint(srv, 10, 32)
	if err != nil {
		return result{err: fmt.Errorf("status %d, no server id (X-Srv-Id %q)", resp.StatusCode, srv)}
	}
	if m := resp.Header.Get("X-Member-Id"); m != srv {
		return result{err: fmt.Errorf("status %d from server %s, backend says it is %q", resp.StatusCode, srv, m)}
	}
	return result{srvID: uint32(id)}
}
