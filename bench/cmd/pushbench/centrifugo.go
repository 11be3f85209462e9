package main

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/url"
	"os"
	"path/filepath"
	"strings"
	"time"

	"github.com/golang-jwt/jwt/v5"

	"github.com/pushcluster/push/bench/sample"
)

// Centrifugo as a peer (bench/README.md, "Centrifugo"): one node, memory
// engine, clients on the unidirectional WebSocket transport (the one
// Centrifugo documents for server→client push without its client SDK),
// each subscribed server-side to its personal channel "#<uid>" and to the
// common channel centrifugoAll (for broadcasts); publishes go through the
// server HTTP API, as a backend's would.
const (
	centrifugoPath = "/connection/uni_websocket"
	centrifugoAll  = "all"
	// Ports: clients, and the internal port (server API, /metrics,
	// /health, /debug/pprof), beside the edge's 18080/19100 and the
	// baseline's 18380/19400.
	centrifugoWS, centrifugoAdmin = "127.0.0.1:18480", "127.0.0.1:19500"
)

// centrifugoToken is a connection JWT (HS256 with the run's shared secret,
// what client.token.hmac_secret_key verifies): sub is the user, and the
// channels claim subscribes the connection server-side to centrifugoAll.
func centrifugoToken(secret []byte, uid string, now time.Time) (string, error) {
	claims := jwt.MapClaims{"sub": uid, "iat": now.Unix(), "exp": now.Add(24 * time.Hour).Unix(), "channels": []string{centrifugoAll}}
	return jwt.NewWithClaims(jwt.SigningMethodHS256, claims).SignedString(secret)
}

// centrifugoQuery is the upgrade request's query string for uid: the
// connect request in cf_connect (uni_websocket, Centrifugo ≥ 6.3), so the
// client sends nothing after the handshake, like the edge's clients.
func centrifugoQuery(secret []byte, uid string, now time.Time) string {
	tok, _ := centrifugoToken(secret, uid, now)
	req, _ := json.Marshal(map[string]string{"token": tok})
	return "cf_connect=" + url.QueryEscape(string(req))
}

// centrifugoConfig is the node's configuration: what its documentation
// recommends for many mostly idle push connections (bench/README.md says
// why for each key).
func centrifugoConfig(secret, apiKey string) map[string]any {
	wsHost, wsPort, _ := net.SplitHostPort(centrifugoWS)
	inHost, inPort, _ := net.SplitHostPort(centrifugoAdmin)
	var port int
	fmt.Sscan(wsPort, &port)
	return map[string]any{
		"http_server": map[string]any{"address": wsHost, "port": port, "internal_address": inHost, "internal_port": inPort},
		"log":         map[string]any{"level": "error"},
		"engine":      map[string]any{"type": "memory"},
		"client": map[string]any{
			"token":                              map[string]any{"hmac_secret_key": secret},
			"subscribe_to_user_personal_channel": map[string]any{"enabled": true},
		},
		"websocket": map[string]any{"disabled": true},
		"uni_websocket": map[string]any{
			"enabled":               true,
			"read_buffer_size":      512,
			"use_write_buffer_pool": true,
		},
		"http_api":    map[string]any{"key": apiKey},
		"prometheus":  map[string]any{"enabled": true},
		"health":      map[string]any{"enabled": true},
		"debug":       map[string]any{"enabled": true},
		"usage_stats": map[string]any{"disabled": true},
	}
}

// startCentrifugo writes the configuration to a temporary directory, starts
// bin with it and waits for /health on the internal port.
func startCentrifugo(bin, secret string) (*daemon, *centrifugoAPI, error) {
	if _, err := os.Stat(bin); err != nil {
		return nil, nil, fmt.Errorf("centrifugo: %w (install it with scripts/centrifugo.sh)", err)
	}
	dir, err := os.MkdirTemp("", "pushbench-centrifugo-")
	if err != nil {
		return nil, nil, err
	}
	apiKey := newSecret()
	js, err := json.MarshalIndent(centrifugoConfig(secret, apiKey), "", "  ")
	if err != nil {
		return nil, nil, err
	}
	cfgPath := filepath.Join(dir, "config.json")
	if err := os.WriteFile(cfgPath, js, 0o600); err != nil {
		return nil, nil, err
	}
	d, err := startDaemonReady("centrifugo", bin, []string{"--config", cfgPath}, nil, centrifugoAdmin, "/health")
	if err != nil {
		return nil, nil, err
	}
	return d, newCentrifugoAPI("http://"+centrifugoAdmin+"/api", apiKey, 256), nil
}

// centrifugoAPI publishes through Centrifugo's server HTTP API (POST
// /api/publish with X-API-Key) over kept-alive connections.
type centrifugoAPI struct {
	base, key string
	hc        *http.Client
}

func newCentrifugoAPI(base, key string, conns int) *centrifugoAPI {
	tr := &http.Transport{MaxIdleConns: conns, MaxIdleConnsPerHost: conns, MaxConnsPerHost: conns, IdleConnTimeout: time.Minute}
	return &centrifugoAPI{base: base, key: key, hc: &http.Client{Transport: tr, Timeout: 10 * time.Second}}
}

// publish sends data (JSON) to channel; an API error in the reply body is
// an error too.
func (a *centrifugoAPI) publish(ctx context.Context, channel string, data []byte) error {
	var body bytes.Buffer
	body.Grow(len(channel) + len(data) + 32)
	body.WriteString(`{"channel":`)
	ch, _ := json.Marshal(channel)
	body.Write(ch)
	body.WriteString(`,"data":`)
	body.Write(data)
	body.WriteString(`}`)
	req, err := http.NewRequestWithContext(ctx, http.MethodPost, a.base+"/publish", &body)
	if err != nil {
		return err
	}
	req.Header.Set("Content-Type", "application/json")
	req.Header.Set("X-API-Key", a.key)
	resp, err := a.hc.Do(req)
	if err != nil {
		return err
	}
	defer resp.Body.Close()
	reply, err := io.ReadAll(io.LimitReader(resp.Body, 64<<10))
	if err != nil {
		return err
	}
	if resp.StatusCode != http.StatusOK {
		return fmt.Errorf("centrifugo publish to %s: HTTP %d: %s", channel, resp.StatusCode, strings.TrimSpace(string(reply)))
	}
	if bytes.Contains(reply, []byte(`"error"`)) {
		return fmt.Errorf("centrifugo publish to %s: %s", channel, strings.TrimSpace(string(reply)))
	}
	return nil
}

func (a *centrifugoAPI) close() { a.hc.CloseIdleConnections() }

// centrifugoClients is the node's count of authenticated clients
// (centrifugo_node_num_clients on /metrics).
func centrifugoClients() (int, error) {
	m, err := sample.Metrics("http://" + centrifugoAdmin + "/metrics")
	if err != nil {
		return 0, err
	}
	v, ok := m["centrifugo_node_num_clients"]
	if !ok {
		return 0, fmt.Errorf("centrifugo /metrics has no centrifugo_node_num_clients")
	}
	return int(v), nil
}
