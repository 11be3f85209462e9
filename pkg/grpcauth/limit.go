package grpcauth

import (
	"sync"
	"time"

	"github.com/prometheus/client_golang/prometheus"
)

// Kind is what a bucket counts.
type Kind uint8

// The limited kinds of calls.
const (
	// Publishes counts messages: one per Publish (or PublishStream
	// request), one per request of a PublishBatch (or PublishBatchStream
	// message), one per user of a PublishMulti.
	Publishes Kind = iota
	// Broadcasts counts Broadcast calls.
	Broadcasts
)

func (k Kind) String() string {
	if k == Broadcasts {
		return "broadcast"
	}
	return "publish"
}

// bucket is a token bucket: rate tokens a second up to burst.
type bucket struct {
	tokens float64
	last   time.Time
}

// take refills b to now and takes n tokens if there are that many.
func (b *bucket) take(now time.Time, n, rate, burst float64) bool {
	if el := now.Sub(b.last).Seconds(); el > 0 {
		b.tokens = min(burst, b.tokens+el*rate)
	}
	b.last = now
	if b.tokens < n {
		return false
	}
	b.tokens -= n
	return true
}

// maxBuckets bounds the identities tracked at once. Identities come from
// credentials the cluster issued, but a holder of a backend signing key
// can name any subject; beyond this, buckets idle long enough to be full
// again are dropped (dropping a full bucket changes nothing).
const maxBuckets = 10000

// limiter is a token bucket per (identity, kind), in this process only.
type limiter struct {
	rate, burst [2]float64 // per Kind; rate 0: unlimited
	now         func() time.Time

	mu      sync.Mutex // guards buckets
	buckets map[limitKey]*bucket
}

type limitKey struct {
	id   string
	kind Kind
}

func newLimiter(pubRate float64, pubBurst int, bcRate float64, bcBurst int) *limiter {
	l := &limiter{now: time.Now, buckets: make(map[limitKey]*bucket)}
	l.rate[Publishes], l.burst[Publishes] = pubRate, float64(max(pubBurst, 1))
	l.rate[Broadcasts], l.burst[Broadcasts] = bcRate, float64(max(bcBurst, 1))
	return l
}

// allow takes n tokens from id's bucket of kind k.
func (l *limiter) allow(id string, k Kind, n int) bool {
	rate, burst := l.rate[k], l.burst[k]
	if rate <= 0 {
		return true
	}
	if float64(n) > burst {
		return false // could never pass: refuse now rather than starve
	}
	now := l.now()
	key := limitKey{id, k}
	l.mu.Lock()
	defer l.mu.Unlock()
	b := l.buckets[key]
	if b == nil {
		if len(l.buckets) >= maxBuckets {
			l.sweep(now)
		}
		b = &bucket{tokens: burst, last: now}
		l.buckets[key] = b
	}
	return b.take(now, float64(n), rate, burst)
}

// sweep drops the buckets that have refilled to full. Called with mu held.
func (l *limiter) sweep(now time.Time) {
	for key, b := range l.buckets {
		rate, burst := l.rate[key.kind], l.burst[key.kind]
		if b.tokens+now.Sub(b.last).Seconds()*rate >= burst {
			delete(l.buckets, key)
		}
	}
}

// metrics counts calls per identity, with the identity label bounded: the
// first maxLabels identities seen get their own, later ones share "other".
type metrics struct {
	calls    *prometheus.CounterVec // identity, method, code
	limited  *prometheus.CounterVec // identity, kind
	failures *prometheus.CounterVec // reason

	mu     sync.RWMutex // guards labels
	labels map[string]struct{}
	max    int
}

// otherLabel is the identity label of identities past the cap.
const otherLabel = "other"

func newMetrics(reg prometheus.Registerer, maxLabels int) *metrics {
	m := &metrics{
		calls: prometheus.NewCounterVec(prometheus.CounterOpts{Name: "push_grpc_calls_total",
			Help: "gRPC calls by authenticated identity (the first --grpc-identity-labels identities; later ones are \"other\"), method and status code."},
			[]string{"identity", "method", "code"}),
		limited: prometheus.NewCounterVec(prometheus.CounterOpts{Name: "push_grpc_rate_limited_total",
			Help: "Publishes (messages) and broadcasts refused with RESOURCE_EXHAUSTED by the per-identity token bucket."},
			[]string{"identity", "kind"}),
		failures: prometheus.NewCounterVec(prometheus.CounterOpts{Name: "push_grpc_auth_failures_total",
			Help: "gRPC calls refused before the handler: unauthenticated (missing, forged or expired credentials), permission (scope, forwarded or push.v1.Cluster from a non-member)."},
			[]string{"reason"}),
		labels: make(map[string]struct{}),
		max:    maxLabels,
	}
	if reg != nil {
		reg.MustRegister(m.calls, m.limited, m.failures)
	}
	return m
}

// label is id's identity label.
func (m *metrics) label(id string) string {
	m.mu.RLock()
	_, ok := m.labels[id]
	n := len(m.labels)
	m.mu.RUnlock()
	if ok {
		return id
	}
	if n >= m.max {
		return otherLabel
	}
	m.mu.Lock()
	defer m.mu.Unlock()
	if _, ok := m.labels[id]; ok {
		return id
	}
	if len(m.labels) >= m.max {
		return otherLabel
	}
	m.labels[id] = struct{}{}
	return id
}
