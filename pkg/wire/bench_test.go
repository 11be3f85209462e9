package wire

import "testing"

// BenchmarkFeed is the machine's cost per client frame on an open
// WebSocket: a read holding a pong, a ping (answered into the Protocol's
// scratch) and a token-sized text message, fed the way the edge's loop
// does. It allocates nothing.
func BenchmarkFeed(b *testing.B) {
	in := append(append(masked(0x8a, nil), masked(0x89, []byte("hb"))...), masked(0x81, make([]byte, 100))...)
	for i := range in[len(in)-100:] {
		in[len(in)-100+i] = 'a'
	}
	p := NewProtocol(testCfg)
	var m Machine
	m.Accept(&testCfg, WebSocket, false, 0)
	buf := make([]byte, len(in))
	b.ReportAllocs()
	b.SetBytes(int64(len(in)))
	frames := 0
	for i := 0; i < b.N; i++ {
		copy(buf, in)
		used := 0
		for {
			st := p.Feed(&m, buf[used:], int64(i))
			used += st.Used
			frames += st.Frames
			if st.Event == EventNone {
				break
			}
		}
		m.Keep(buf[used:])
	}
	b.ReportMetric(float64(frames)/float64(b.N), "frames/op")
}
