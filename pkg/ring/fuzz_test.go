package ring

import (
	"reflect"
	"testing"
)

// FuzzParseDocument: Parse never panics; a document it accepts is valid,
// builds a ring, and survives Marshal and Parse unchanged (every default
// is filled, so the round trip is exact).
func FuzzParseDocument(f *testing.F) {
	for _, s := range []string{
		`{"version":1,"members":[{"id":3,"name":"a","ws":"h:1","grpc":"h:2"}]}`,
		`{"version": 7, "algorithm": "haproxy", "members": [{"id": 1, "name": "edge-1", "ws": "127.0.0.1:8081", "grpc": "127.0.0.1:9081", "weight": 1, "state": "active"}]}`,
		`{"version":2,"algorithm":"bounded","params":{"partitions":271,"replication":20,"load":1.25},"members":[{"id":1,"name":"a","ws":"h:1","grpc":"h:2","weight":3},{"id":2,"name":"b","ws":"h:3","grpc":"h:4","state":"draining"}]}`,
		`{"version":3,"algorithm":"haproxy","params":{"hash":"djb2","avalanche":true},"members":[]}`,
		`{"version":1,"params":{"partitions":0},"members":[]}`,
		`{"version":1,"members":[{"id":1,"name":"a","ws":"h:1","grpc":"h:2"},{"id":1,"name":"b","ws":"h:3","grpc":"h:4"}]}`,
		`{"version":1,"extra":1}`,
		`{"version":1} {}`,
	} {
		f.Add([]byte(s))
	}
	f.Fuzz(func(t *testing.T, data []byte) {
		d, err := Parse(data)
		if err != nil {
			return
		}
		if err := d.Validate(); err != nil {
			t.Fatalf("Parse accepted an invalid document: %v", err)
		}
		if _, err := New(d); err != nil {
			t.Fatalf("accepted document does not build a ring: %v", err)
		}
		b, err := d.Marshal()
		if err != nil {
			t.Fatalf("marshal: %v", err)
		}
		d2, err := Parse(b)
		if err != nil {
			t.Fatalf("re-parse of %s: %v", b, err)
		}
		if !reflect.DeepEqual(d, d2) {
			t.Fatalf("round trip changed the document:\n%+v\n%+v", d, d2)
		}
	})
}
