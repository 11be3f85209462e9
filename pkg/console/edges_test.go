package console

import (
	"strings"
	"testing"
)

func TestMetricsURL(t *testing.T) {
	for _, tc := range []struct{ admin, ws, want string }{
		{"127.0.0.1:9101", "127.0.0.1:8081", "http://127.0.0.1:9101/metrics"},
		{":9100", "edge-0.edge.push.svc:8080", "http://edge-0.edge.push.svc:9100/metrics"},
		{"0.0.0.0:9100", "10.0.0.7:8080", "http://10.0.0.7:9100/metrics"},
		{"[::]:9100", "[fd00::7]:8080", "http://[fd00::7]:9100/metrics"},
		{"", "10.0.0.7:8080", ""},
		{":9100", "", ""},
		{"nonsense", "10.0.0.7:8080", ""},
	} {
		if got := metricsURL(tc.admin, tc.ws); got != tc.want {
			t.Errorf("metricsURL(%q, %q) = %q, want %q", tc.admin, tc.ws, got, tc.want)
		}
	}
}

func TestParseMetrics(t *testing.T) {
	text := `# HELP push_edge_connections Open WebSocket connections.
# TYPE push_edge_connections gauge
push_edge_connections 17
push_edge_connections_extra 99
push_edge_publishes_total{outcome="delivered"} 10
push_edge_publishes_total{outcome="stored"} 5
push_edge_publishes_total{outcome="not_owner"} 3
push_edge_handshakes_total{result="ok"} 4 1700000000000
push_edge_fenced NaN
go_goroutines 12
`
	series, err := parseMetrics(strings.NewReader(text))
	if err != nil {
		t.Fatal(err)
	}
	s := sample{series: series}
	if got := s.get("push_edge_connections"); got != 17 {
		t.Errorf("connections %v", got)
	}
	if got := acked(s); got != 15 {
		t.Errorf("acknowledged publishes %v", got)
	}
	if got := s.get("push_edge_publishes_total"); got != 18 {
		t.Errorf("all publishes %v", got)
	}
	if got := s.with("push_edge_handshakes_total", `result="ok"`); got != 4 {
		t.Errorf("handshakes %v", got)
	}
	if _, ok := series["go_goroutines"]; ok {
		t.Error("kept a series that is not the edge's")
	}
	if _, err := parseMetrics(strings.NewReader("push_edge_connections{a=\"b\"\n")); err == nil {
		t.Error("malformed line accepted")
	}
}
