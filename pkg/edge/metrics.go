package edge

import (
	"strconv"

	"github.com/prometheus/client_golang/prometheus"
)

// metrics are the edge's Prometheus collectors. Hot-path counters are
// resolved once (no label lookups per message).
type metrics struct {
	conns        prometheus.Gauge
	handshaking  prometheus.Gauge
	handshakes   *prometheus.CounterVec
	closes       *prometheus.CounterVec
	msgsOut      prometheus.Counter
	bytesOut     prometheus.Counter
	msgsIn       prometheus.Counter
	bytesIn      prometheus.Counter
	queueDrops   prometheus.Counter
	stored       prometheus.Counter
	expired      prometheus.Counter
	publishes    *prometheus.CounterVec
	broadcasts   prometheus.Counter
	latency      prometheus.Histogram
	acceptErrors prometheus.Counter
	moved        prometheus.Counter
	handedOff    prometheus.Counter
	forwarded    prometheus.Counter
	ringVersion  prometheus.Gauge

	hsOK, hsUnauthorized, hsForbidden, hsBadRequest, hsOverloaded, hsTimeout, hsTooLarge, hsNotFound, hsRateLimited prometheus.Counter
	pubDelivered, pubStored, pubRejected                                                                            prometheus.Counter
}

func newMetrics(reg prometheus.Registerer) *metrics {
	m := &metrics{
		conns: prometheus.NewGauge(prometheus.GaugeOpts{
			Name: "push_edge_connections", Help: "Open WebSocket connections."}),
		handshaking: prometheus.NewGauge(prometheus.GaugeOpts{
			Name: "push_edge_handshaking", Help: "Accepted sockets whose request head is not complete yet."}),
		handshakes: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "push_edge_handshakes_total", Help: "Handshakes by result."}, []string{"result"}),
		closes: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "push_edge_closes_total", Help: "Connections closed, by close code sent (or 'eof', 'error')."}, []string{"code"}),
		msgsOut: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "push_edge_messages_out_total", Help: "Message frames written or queued to connections."}),
		bytesOut: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "push_edge_bytes_out_total", Help: "Bytes of message frames written or queued."}),
		msgsIn: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "push_edge_messages_in_total", Help: "Frames received from clients."}),
		bytesIn: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "push_edge_bytes_in_total", Help: "Bytes read from client sockets after the handshake."}),
		queueDrops: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "push_edge_queue_drops_total", Help: "Connections closed because their outbound queue was full (slow consumers)."}),
		stored: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "push_edge_mailbox_stored_total", Help: "Messages stored for users who were not connected."}),
		expired: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "push_edge_mailbox_expired_total", Help: "Stored messages removed by TTL."}),
		publishes: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "push_edge_publishes_total", Help: "Publishes by outcome."}, []string{"outcome"}),
		broadcasts: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "push_edge_broadcasts_total", Help: "Broadcasts fanned out."}),
		latency: prometheus.NewHistogram(prometheus.HistogramOpts{
			Name:    "push_edge_publish_to_write_seconds",
			Help:    "Time from a publish arriving to its frame written to every connection of the user.",
			Buckets: prometheus.ExponentialBuckets(5e-6, 2, 16)}),
		acceptErrors: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "push_edge_accept_errors_total", Help: "accept(2) failures (e.g. out of descriptors)."}),
		moved: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "push_edge_moved_total", Help: "Connections closed with 4003 because the ring gave their user to another edge."}),
		handedOff: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "push_edge_handed_off_total", Help: "Stored messages handed to a user's new owner."}),
		ringVersion: prometheus.NewGauge(prometheus.GaugeOpts{
			Name: "push_edge_ring_version", Help: "Version of the ring this edge follows (etcd store: the etcd revision of the effective ring; 0 standalone)."}),
		forwarded: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "push_edge_forwarded_total", Help: "Calls forwarded to the owner of a user this edge neither holds nor owns."}),
	}
	for _, r := range []struct {
		p    *prometheus.Counter
		name string
	}{
		{&m.hsOK, "ok"}, {&m.hsUnauthorized, "unauthorized"}, {&m.hsForbidden, "forbidden"},
		{&m.hsBadRequest, "bad_request"}, {&m.hsOverloaded, "overloaded"}, {&m.hsTimeout, "timeout"},
		{&m.hsTooLarge, "too_large"}, {&m.hsNotFound, "not_found"}, {&m.hsRateLimited, "rate_limited"},
	} {
		*r.p = m.handshakes.WithLabelValues(r.name)
	}
	m.pubDelivered = m.publishes.WithLabelValues("delivered")
	m.pubStored = m.publishes.WithLabelValues("stored")
	m.pubRejected = m.publishes.WithLabelValues("rejected")
	if reg != nil {
		reg.MustRegister(m.conns, m.handshaking, m.handshakes, m.closes, m.msgsOut, m.bytesOut,
			m.msgsIn, m.bytesIn, m.queueDrops, m.stored, m.expired, m.publishes, m.broadcasts,
			m.latency, m.acceptErrors, m.moved, m.handedOff, m.forwarded, m.ringVersion)
	}
	return m
}

func (m *metrics) closed(code int) {
	var label string
	switch code {
	case 0:
		label = "eof"
	case -1:
		label = "error"
	default:
		label = strconv.Itoa(code)
	}
	m.closes.WithLabelValues(label).Inc()
}
