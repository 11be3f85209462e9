package router

import "github.com/prometheus/client_golang/prometheus"

// Reasons a connection is refused, the label values of
// push_router_rejected_total.
const (
	rejNoKey       = "no_key"         // 400: the user key is missing
	rejBadRequest  = "bad_request"    // 400: not an HTTP/1 request head
	rejTooLarge    = "head_too_large" // 431
	rejNoEdge      = "no_edge"        // 503: no live member, or every one failed
	rejPorts       = "port_exhaustion"
	rejDraining    = "draining"       // 503 during shutdown
	rejProxy       = "proxy_protocol" // malformed or missing PROXY header
	rejEOF         = "eof"            // the client left before its head was complete
	rejHeadTimeout = "head_timeout"
)

// metrics are the router's Prometheus collectors. Hot-path counters are
// resolved once.
type metrics struct {
	accepted     prometheus.Counter
	routed       *prometheus.CounterVec
	rejected     *prometheus.CounterVec
	active       prometheus.Gauge
	bytes        *prometheus.CounterVec
	bytesC2E     prometheus.Counter
	bytesE2C     prometheus.Counter
	dial         prometheus.Histogram
	dialErrors   prometheus.Counter
	redispatch   *prometheus.CounterVec
	edgeUp       *prometheus.GaugeVec
	ringVersion  prometheus.Gauge
	viewGen      prometheus.Gauge
	liveMembers  prometheus.Gauge
	headTimeouts prometheus.Counter
	ports        prometheus.Counter
	acceptErrors prometheus.Counter
	splices      prometheus.Counter
	inflight     prometheus.Gauge
	tlsActive    prometheus.Gauge
}

func newMetrics(reg prometheus.Registerer) *metrics {
	m := &metrics{
		accepted: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "push_router_accepted_total", Help: "Connections accepted (plaintext and TLS)."}),
		routed: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "push_router_routed_total", Help: "Connections relayed to an edge, by edge id."}, []string{"edge"}),
		rejected: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "push_router_rejected_total", Help: "Connections refused before the relay, by reason."}, []string{"reason"}),
		active: prometheus.NewGauge(prometheus.GaugeOpts{
			Name: "push_router_connections", Help: "Relayed connections open now, TLS-terminated ones included (push_router_tls_connections counts those)."}),
		bytes: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "push_router_bytes_total", Help: "Bytes relayed, by direction."}, []string{"direction"}),
		dial: prometheus.NewHistogram(prometheus.HistogramOpts{
			Name: "push_router_dial_seconds", Help: "Time from connect(2) to an established edge connection.",
			Buckets: prometheus.ExponentialBuckets(25e-6, 2, 16)}),
		dialErrors: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "push_router_dial_errors_total", Help: "Failed or timed out connection attempts to edges."}),
		redispatch: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "push_router_redispatches_total",
			Help: "Connections sent to the view's next owner (owner.View.OwnerExcept) after a failed dial, by what the failed dial met: refused, timeout, unresolved or error."},
			[]string{"reason"}),
		ringVersion: prometheus.NewGauge(prometheus.GaugeOpts{
			Name: "push_router_ring_version", Help: "Version of the ring document of the ownership view in use."}),
		viewGen: prometheus.NewGauge(prometheus.GaugeOpts{
			Name: "push_router_view_generation", Help: "Liveness generation of the ownership view in use (grows with every view this process's store follower publishes; not comparable across processes)."}),
		liveMembers: prometheus.NewGauge(prometheus.GaugeOpts{
			Name: "push_router_live_members", Help: "Active members the ownership view holds live, i.e. that can own users (0: every new connection gets a 503)."}),
		edgeUp: prometheus.NewGaugeVec(prometheus.GaugeOpts{
			Name: "push_router_edge_up", Help: "1 when the health check finds the edge up, by edge id (for operators: routing follows the ownership view, not this)."}, []string{"edge"}),
		headTimeouts: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "push_router_head_timeouts_total", Help: "Connections closed because the request head did not arrive in time."}),
		ports: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "push_router_port_exhaustion_total", Help: "Connections refused (503) because every source address ran out of ports."}),
		acceptErrors: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "push_router_accept_errors_total", Help: "accept(2) failures (e.g. out of descriptors)."}),
		splices: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "push_router_splices_total", Help: "Transfers that switched from the scratch buffer to a pooled pipe and splice(2)."}),
		inflight: prometheus.NewGauge(prometheus.GaugeOpts{
			Name: "push_router_inflight_bytes", Help: "Bytes read from one side and not yet taken by the other (pipes and copies held while a destination is full), over all connections."}),
		tlsActive: prometheus.NewGauge(prometheus.GaugeOpts{
			Name: "push_router_tls_connections", Help: "TLS-terminated connections relayed now (also counted in push_router_connections)."}),
	}
	m.bytesC2E = m.bytes.WithLabelValues("client_to_edge")
	m.bytesE2C = m.bytes.WithLabelValues("edge_to_client")
	for _, r := range []string{rejNoKey, rejBadRequest, rejTooLarge, rejNoEdge, rejPorts, rejDraining, rejProxy, rejEOF, rejHeadTimeout} {
		m.rejected.WithLabelValues(r)
	}
	for _, r := range redisReasons {
		m.redispatch.WithLabelValues(r)
	}
	if reg != nil {
		reg.MustRegister(m.accepted, m.routed, m.rejected, m.active, m.bytes, m.dial, m.dialErrors,
			m.redispatch, m.edgeUp, m.ringVersion, m.viewGen, m.liveMembers, m.headTimeouts, m.ports, m.acceptErrors, m.splices, m.inflight, m.tlsActive)
	}
	return m
}
