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
	compressions prometheus.Counter
	deflateConns prometheus.Counter
	stored       prometheus.Counter
	expired      prometheus.Counter
	publishes    *prometheus.CounterVec
	broadcasts   prometheus.Counter
	latency      prometheus.Histogram
	acceptErrors prometheus.Counter
	moved        prometheus.Counter
	ringVersion  prometheus.Gauge

	// Ownership (ownership.go, streams.go, member.go).
	moveLimited   prometheus.Counter
	gapNotices    prometheus.Counter
	takeFailed    prometheus.Counter
	streamsTaken  prometheus.Counter
	staleStreams  prometheus.Counter
	streamsGiven  prometheus.Counter
	epochsStarted prometheus.Counter
	fences        prometheus.Counter
	fencedGauge   prometheus.Gauge
	guests        prometheus.Gauge
	outage        prometheus.Gauge

	hsOK, hsUnauthorized, hsForbidden, hsBadRequest, hsOverloaded, hsTimeout, hsTooLarge, hsNotFound, hsRateLimited prometheus.Counter
	pubDelivered, pubStored, pubRejected, pubNotOwner, pubDuplicate                                                 prometheus.Counter
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
		compressions: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "push_edge_compressions_total", Help: "Messages and broadcasts compressed (once each, for every connection that negotiated permessage-deflate)."}),
		deflateConns: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "push_edge_deflate_upgrades_total", Help: "Upgrades that negotiated permessage-deflate."}),
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
		ringVersion: prometheus.NewGauge(prometheus.GaugeOpts{
			Name: "push_edge_ring_version", Help: "Version of the ring document this edge follows (0 standalone)."}),
		moveLimited: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "push_edge_move_limited_total", Help: "Moves not made because the user was already moved --move-limit times within --move-window (the user stays)."}),
		gapNotices: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "push_edge_gap_notices_total", Help: "Gap notices sent to resuming clients."}),
		takeFailed: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "push_edge_stream_take_failures_total", Help: "Take calls to a member that may have held a stream that failed (taken for dead)."}),
		streamsTaken: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "push_edge_streams_taken_total", Help: "User streams taken over from another edge (the epoch continues)."}),
		staleStreams: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "push_edge_stale_streams_total", Help: "Copies of a user's stream, answered by an edge that handed it over before this one held it, dropped as stale."}),
		streamsGiven: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "push_edge_streams_given_total", Help: "User streams handed to their new owner."}),
		epochsStarted: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "push_edge_epochs_started_total", Help: "User streams started afresh (new epoch)."}),
		fences: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "push_edge_fenced_total", Help: "Times this edge fenced itself because its lease was not valid."}),
		fencedGauge: prometheus.NewGauge(prometheus.GaugeOpts{
			Name: "push_edge_fenced", Help: "1 while the edge is fenced (serves nobody until it rejoins)."}),
		guests: prometheus.NewGauge(prometheus.GaugeOpts{
			Name: "push_edge_guest_connections", Help: "Connections waiting here for their user's stream (guests of a member that was unreachable), at the last migration pass."}),
		outage: prometheus.NewGauge(prometheus.GaugeOpts{
			Name: "push_edge_store_outage", Help: "1 while the edge serves on past its lease because its peers cannot reach the store either."}),
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
	m.pubNotOwner = m.publishes.WithLabelValues("not_owner")
	m.pubDuplicate = m.publishes.WithLabelValues("duplicate")
	if reg != nil {
		reg.MustRegister(m.conns, m.handshaking, m.handshakes, m.closes, m.msgsOut, m.bytesOut,
			m.msgsIn, m.bytesIn, m.queueDrops, m.compressions, m.deflateConns, m.stored, m.expired, m.publishes, m.broadcasts,
			m.latency, m.acceptErrors, m.moved, m.ringVersion,
			m.moveLimited, m.gapNotices, m.takeFailed, m.streamsTaken, m.staleStreams, m.streamsGiven, m.epochsStarted,
			m.fences, m.fencedGauge, m.guests, m.outage)
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
