package edge_test

import (
	"context"
	"fmt"
	"testing"
	"time"

	"github.com/coder/websocket"

	"github.com/pushcluster/push/pkg/auth"
	"github.com/pushcluster/push/pkg/edge"
	"github.com/pushcluster/push/pkg/edge/edgetest"
)

// benchUsers starts an edge with n connected users (u0..), each read by a
// goroutine that discards what arrives, and returns the edge and the ids.
func benchUsers(b *testing.B, n int) (*edge.Server, []string) {
	b.Helper()
	ed := edgetest.Start(b, secret, edge.Config{ID: 1})
	ctx, cancel := context.WithCancel(context.Background())
	b.Cleanup(cancel)
	uids := make([]string, n)
	for i := range uids {
		uids[i] = fmt.Sprintf("u%d", i)
		tok, err := auth.Mint(secret, uids[i], time.Hour, time.Now())
		if err != nil {
			b.Fatal(err)
		}
		c, _, err := websocket.Dial(ctx, fmt.Sprintf("ws://%s/ws?uid=%s&token=%s", ed.WS(), uids[i], tok), nil)
		if err != nil {
			b.Fatal(err)
		}
		b.Cleanup(func() { c.CloseNow() })
		go func() {
			for {
				if _, _, err := c.Read(ctx); err != nil {
					return
				}
			}
		}()
	}
	deadline := time.Now().Add(30 * time.Second)
	for _, uid := range uids {
		for ed.Srv.Presence(uid) != 1 {
			if time.Now().After(deadline) {
				b.Fatalf("%s never registered", uid)
			}
			time.Sleep(time.Millisecond)
		}
	}
	return ed.Srv, uids
}

// stillConnected fails b if a user lost its connection (a reader that
// fell behind is closed as a slow consumer, which would flatter the
// figures).
func stillConnected(b *testing.B, s *edge.Server, uids []string) {
	for _, uid := range uids {
		if s.Presence(uid) != 1 {
			b.Fatalf("%s was disconnected during the benchmark", uid)
		}
	}
}

// BenchmarkPublishUnicast is the edge's own cost of unicast publishes to
// 1,000 connected users over loopback (the readers are goroutines of this
// process, on the other core), one by one (PublishKey, what a Publish or
// PublishStream request costs past gRPC) and in batches of 16 and 256
// distinct users (PublishBatch, what a PublishBatchStream message costs
// past gRPC): ns/msg is the publishing goroutine's time per message,
// write(2) included; cpu-ns/msg the whole process's CPU per message,
// readers included.
//
//	go test -run '^$' -bench PublishUnicast -benchmem ./pkg/edge
func BenchmarkPublishUnicast(b *testing.B) {
	s, uids := benchUsers(b, 1000)
	data := []byte(`{"t":1234567890123456789}`)
	b.Run("one-by-one", func(b *testing.B) {
		b.ReportAllocs()
		start, cpu := time.Now(), cpuTime()
		for i := range b.N {
			if _, err := s.PublishKey(context.Background(), uids[i%len(uids)], data, 0, fmt.Sprint(i)); err != nil {
				b.Fatal(err)
			}
		}
		b.ReportMetric(float64(time.Since(start).Nanoseconds())/float64(b.N), "ns/msg")
		b.ReportMetric(float64(cpuTime()-cpu)/float64(b.N), "cpu-ns/msg")
		stillConnected(b, s, uids)
	})
	for _, size := range []int{16, 256} {
		b.Run(fmt.Sprintf("batch-%d", size), func(b *testing.B) {
			b.ReportAllocs()
			items := make([]edge.BatchItem, size)
			k := 0
			start, cpu := time.Now(), cpuTime()
			for range b.N {
				for j := range items {
					items[j] = edge.BatchItem{User: uids[k%len(uids)], Data: data, Key: fmt.Sprint(k)}
					k++
				}
				_, errs, err := s.PublishBatch(context.Background(), items)
				if err != nil || errs[0] != nil {
					b.Fatal(err, errs[0])
				}
			}
			msgs := float64(b.N * size)
			b.ReportMetric(float64(time.Since(start).Nanoseconds())/msgs, "ns/msg")
			b.ReportMetric(float64(cpuTime()-cpu)/msgs, "cpu-ns/msg")
			stillConnected(b, s, uids)
		})
	}
}

// BenchmarkPublishMulti1000 is the edge's cost of a PublishMulti to 1,000
// connected users, per recipient (as BenchmarkPublishUnicast measures).
//
//	go test -run '^$' -bench PublishMulti1000 -benchmem ./pkg/edge
func BenchmarkPublishMulti1000(b *testing.B) {
	s, uids := benchUsers(b, 1000)
	data := []byte(`{"t":1234567890123456789}`)
	b.ReportAllocs()
	start, cpu := time.Now(), cpuTime()
	for i := range b.N {
		if _, err := s.PublishMultiKey(context.Background(), uids, data, 0, fmt.Sprint(i)); err != nil {
			b.Fatal(err)
		}
	}
	n := float64(b.N * len(uids))
	b.ReportMetric(float64(time.Since(start).Nanoseconds())/n, "ns/recipient")
	b.ReportMetric(float64(cpuTime()-cpu)/n, "cpu-ns/recipient")
	stillConnected(b, s, uids)
}
