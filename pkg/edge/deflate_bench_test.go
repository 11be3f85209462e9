package edge

import (
	"bytes"
	"compress/flate"
	"fmt"
	"strings"
	"testing"

	"github.com/pushcluster/push/pkg/wire"
)

func benchJSON() []byte {
	var items []string
	for i := 0; len(strings.Join(items, ",")) < 950; i++ {
		items = append(items, fmt.Sprintf(`{"id":%d,"name":"product number %d","price":%d.99,"tags":["sale","new"]}`, 1000+i, i, 9+i))
	}
	return []byte(`{"type":"cart.updated","items":[` + strings.Join(items, ",") + `]}`)
}

// BenchmarkDeflateMessage is the one compression a message costs however
// many connections it goes to (a broadcast's cost per delivery is this
// divided by the recipients).
func BenchmarkDeflateMessage(b *testing.B) {
	tail := messageTail(benchJSON())
	b.SetBytes(int64(len(tail)))
	b.ReportAllocs()
	var z []byte
	for i := 0; i < b.N; i++ {
		z = deflate(broadcastHead, tail)
	}
	b.ReportMetric(float64(len(z)), "compressed-B")
}

// BenchmarkInflate is what a compressed client message costs to check: a
// message that inflates to the limit (4 KiB) and a deflate bomb (2 MiB of
// zeros in ~2 KB), which stops at the limit.
func BenchmarkInflate(b *testing.B) {
	z := func(n int) []byte {
		var buf bytes.Buffer
		w, _ := flate.NewWriter(&buf, flate.BestCompression)
		w.Write(bytes.Repeat([]byte{'a'}, n))
		w.Flush()
		return bytes.TrimSuffix(buf.Bytes(), syncTail)
	}
	p := wire.NewProtocol(wire.Config{MaxMessageBytes: 4096})
	for _, c := range []struct {
		name string
		in   []byte
		want string
	}{{"4KiB", z(4096), ""}, {"bomb-2MiB", z(2 << 20), "message too big"}} {
		b.Run(c.name, func(b *testing.B) {
			b.ReportAllocs()
			for i := 0; i < b.N; i++ {
				if _, reason := p.Inflate(c.in); reason != c.want {
					b.Fatalf("reason %q, want %q", reason, c.want)
				}
			}
		})
	}
}
