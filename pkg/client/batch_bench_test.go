package client_test

import (
	"context"
	"fmt"
	"path/filepath"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/pushcluster/push/pkg/client"
	"github.com/pushcluster/push/pkg/edge"
	"github.com/pushcluster/push/pkg/edge/edgetest"
	"github.com/pushcluster/push/pkg/ring"
	"github.com/pushcluster/push/pkg/store"
)

func cpuTime() time.Duration {
	var ru syscall.Rusage
	syscall.Getrusage(syscall.RUSAGE_SELF, &ru)
	return time.Duration(ru.Utime.Nano() + ru.Stime.Nano())
}

// BenchmarkPublishBatching is Publish through the SDK to a real edge in
// this process (users not connected: the edge stores each message), 64
// callers at once, with the SDK's batching at linger 0 (natural batching),
// 200 µs (the default) and 1 ms, and with batches of one: ns/msg is the
// wall time per publish, cpu-ns/msg the process's CPU (SDK and edge, gRPC
// on both ends) per publish, msgs/batch the mean batch the edge received.
//
//	go test -run '^$' -bench PublishBatching -benchmem ./pkg/client
func BenchmarkPublishBatching(b *testing.B) {
	ed := edgetest.Start(b, []byte("bench-secret-bench-secret-bench-secret-0"), edge.Config{ID: 1})
	st, err := store.OpenFile(filepath.Join(b.TempDir(), "ring.json"), quiet())
	if err != nil {
		b.Fatal(err)
	}
	defer st.Close()
	doc := &ring.Document{Version: 1, Algorithm: ring.AlgorithmBounded, Members: []ring.Member{ed.Member(1, 1)}}
	if err := st.CompareAndSwap(context.Background(), 0, doc, false); err != nil {
		b.Fatal(err)
	}
	for _, bc := range []struct {
		name string
		opts []client.Option
	}{
		{"unbatched", []client.Option{client.WithBatchSize(1), client.WithBatchLinger(0)}},
		{"linger-0", []client.Option{client.WithBatchLinger(0)}},
		{"linger-200us", nil},
		{"linger-1ms", []client.Option{client.WithBatchLinger(time.Millisecond)}},
	} {
		b.Run(bc.name, func(b *testing.B) {
			c, err := client.New(context.Background(), st, append([]client.Option{client.WithLogger(quiet())}, bc.opts...)...)
			if err != nil {
				b.Fatal(err)
			}
			defer c.Close()
			if _, err := c.Publish(context.Background(), "warm", []byte(`1`), 0); err != nil {
				b.Fatal(err)
			}
			var k atomic.Int64
			b.SetParallelism(32) // 64 callers on 2 cores
			b.ReportAllocs()
			b.ResetTimer()
			start, cpu := time.Now(), cpuTime()
			b.RunParallel(func(pb *testing.PB) {
				for pb.Next() {
					i := k.Add(1)
					if _, err := c.Publish(context.Background(), fmt.Sprintf("u%d", i%1000), []byte(`{"t":1}`), 0); err != nil {
						b.Error(err)
						return
					}
				}
			})
			b.ReportMetric(float64(time.Since(start).Nanoseconds())/float64(b.N), "ns/msg")
			b.ReportMetric(float64(cpuTime()-cpu)/float64(b.N), "cpu-ns/msg")
		})
	}
}
