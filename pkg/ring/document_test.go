package ring

import (
	"bytes"
	"errors"
	"fmt"
	"strings"
	"testing"
)

// testDoc returns a valid document with n active members edge-1..edge-n,
// ids 1..n, weight 1.
func testDoc(algorithm string, n int) *Document {
	d := &Document{Version: 1, Algorithm: algorithm}
	for i := 1; i <= n; i++ {
		d.Members = append(d.Members, Member{
			ID: uint32(i), Name: fmt.Sprintf("edge-%d", i),
			WS: fmt.Sprintf("127.0.0.1:%d", 8000+i), GRPC: fmt.Sprintf("127.0.0.1:%d", 9000+i),
			Weight: 1, State: StateActive,
		})
	}
	return d
}

func boolp(b bool) *bool { return &b }

func TestValidate(t *testing.T) {
	tests := []struct {
		name   string
		alg    string
		mutate func(d *Document)
		want   string // fragment of the error; "" means valid
	}{
		{"ok bounded", AlgorithmBounded, func(d *Document) {}, ""},
		{"ok haproxy", AlgorithmHAProxy, func(d *Document) {}, ""},
		{"ok empty algorithm", "", func(d *Document) {}, ""},
		{"ok empty state", "", func(d *Document) { d.Members[1].State = "" }, ""},
		{"ok same ws and grpc on one member", "", func(d *Document) { d.Members[1].GRPC = d.Members[1].WS }, ""},
		{"ok max id", "", func(d *Document) { d.Members[2].ID = MaxID }, ""},
		{"ok draining", "", func(d *Document) { d.Members[0].State = StateDraining }, ""},
		{"version 0", "", func(d *Document) { d.Version = 0 }, "version must be at least 1"},
		{"unknown algorithm", "", func(d *Document) { d.Algorithm = "maglev" }, `algorithm "maglev" unknown`},
		{"duplicate id", "", func(d *Document) { d.Members[2].ID = 1 },
			`members[2] "edge-3" (id 1): duplicate id 1, also used by members[0] "edge-1"`},
		{"duplicate name", "", func(d *Document) { d.Members[2].Name = "edge-2" },
			`members[2] "edge-2" (id 3): duplicate name, also used by members[1] "edge-2"`},
		{"duplicate ws", "", func(d *Document) { d.Members[2].WS = d.Members[0].WS },
			`members[2] "edge-3" (id 3): duplicate ws address "127.0.0.1:8001", also used by members[0] "edge-1"`},
		{"duplicate grpc", "", func(d *Document) { d.Members[2].GRPC = d.Members[1].GRPC },
			`members[2] "edge-3" (id 3): duplicate grpc address "127.0.0.1:9002", also used by members[1] "edge-2"`},
		{"grpc equals other ws", "", func(d *Document) { d.Members[2].GRPC = d.Members[1].WS },
			`duplicate grpc address "127.0.0.1:8002", also used by members[1] "edge-2"`},
		{"empty name", "", func(d *Document) { d.Members[1].Name = "" }, `members[1] "" (id 2): empty name`},
		{"name with #", "", func(d *Document) { d.Members[1].Name = "edge#2" }, `members[1] "edge#2" (id 2): name has '#'`},
		{"name with space", "", func(d *Document) { d.Members[1].Name = "edge 2" }, `name has ' '`},
		{"empty ws", "", func(d *Document) { d.Members[1].WS = "" }, `members[1] "edge-2" (id 2): ws address "": empty address`},
		{"empty grpc", "", func(d *Document) { d.Members[1].GRPC = "" }, `members[1] "edge-2" (id 2): grpc address "": empty address`},
		{"ws not host:port", "", func(d *Document) { d.Members[1].WS = "edge-2" }, `ws address "edge-2": not host:port`},
		{"ws bad port", "", func(d *Document) { d.Members[1].WS = "h:0" }, `ws address "h:0": port must be 1..65535`},
		{"ws empty host", "", func(d *Document) { d.Members[1].WS = ":80" }, `ws address ":80": empty host`},
		{"id 0", "", func(d *Document) { d.Members[1].ID = 0 }, `members[1] "edge-2" (id 0): id must be 1..1048575 (HAProxy only uses the id modulo 2^20)`},
		{"id 2^20", "", func(d *Document) { d.Members[1].ID = 1 << 20 }, `(id 1048576): id must be 1..1048575`},
		{"weight 0", "", func(d *Document) { d.Members[1].Weight = 0 }, `members[1] "edge-2" (id 2): weight 0 out of range 1..256`},
		{"weight 257", "", func(d *Document) { d.Members[1].Weight = 257 }, `weight 257 out of range 1..256`},
		{"unknown state", "", func(d *Document) { d.Members[1].State = "down" }, `members[1] "edge-2" (id 2): state "down" unknown`},
		{"no members", "", func(d *Document) { d.Members = nil }, "no active members: the document has no members"},
		{"all draining", "", func(d *Document) {
			for i := range d.Members {
				d.Members[i].State = StateDraining
			}
		}, "no active members: all 3 members are draining"},
		{"partitions negative", "", func(d *Document) { d.Params.Partitions = -1 }, "params.partitions -1 out of range"},
		{"partitions too many", "", func(d *Document) { d.Params.Partitions = MaxPartitions + 1 }, "params.partitions 4194305 out of range"},
		{"replication negative", "", func(d *Document) { d.Params.Replication = -5 }, "params.replication -5 must be > 0"},
		{"load 1", "", func(d *Document) { d.Params.Load = 1 }, "params.load 1 must be a number > 1.0"},
		{"load 0.5", "", func(d *Document) { d.Params.Load = 0.5 }, "params.load 0.5 must be a number > 1.0"},
		{"hash on bounded", "", func(d *Document) { d.Params.Hash = HashDJB2 }, `params.hash and params.avalanche apply only to algorithm "haproxy"`},
		{"partitions on haproxy", AlgorithmHAProxy, func(d *Document) { d.Params.Partitions = 7 }, `apply only to algorithm "bounded"`},
		{"unknown hash", AlgorithmHAProxy, func(d *Document) { d.Params.Hash = "md5" }, `params.hash "md5" unknown`},
		{"ok wt6", AlgorithmHAProxy, func(d *Document) { d.Params.Hash = HashWT6; d.Params.Avalanche = boolp(true) }, ""},
		{"bounded too large", "", func(d *Document) {
			for i := range d.Members {
				d.Members[i].Weight = 256
			}
			d.Params.Replication = 3000
		}, "bounded ring too large: active weights sum to 768, times params.replication 3000 is 2304000 points"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			d := testDoc(tt.alg, 3)
			tt.mutate(d)
			err := d.Validate()
			if tt.want == "" {
				if err != nil {
					t.Fatalf("Validate: %v", err)
				}
				if _, err := New(d); err != nil {
					t.Fatalf("New: %v", err)
				}
				return
			}
			if err == nil {
				t.Fatalf("Validate: no error, want %q", tt.want)
			}
			if !strings.Contains(err.Error(), tt.want) {
				t.Fatalf("Validate: %q\nwant fragment %q", err, tt.want)
			}
			if !errors.Is(err, ErrInvalid) {
				t.Fatalf("error does not wrap ErrInvalid: %v", err)
			}
			if _, err := New(d); err == nil {
				t.Fatal("New accepted an invalid document")
			}
		})
	}
}

func TestNoMembersSentinel(t *testing.T) {
	d := testDoc("", 1)
	d.Members[0].State = StateDraining
	_, err := New(d)
	if !errors.Is(err, ErrNoMembers) || !errors.Is(err, ErrInvalid) {
		t.Fatalf("New = %v, want ErrNoMembers and ErrInvalid", err)
	}
}

const exampleJSON = `{"version": 7, "algorithm": "bounded", "params": {"partitions": 65521, "replication": 1000, "load": 1.02},
 "members": [{"id": 1, "name": "edge-1", "ws": "127.0.0.1:8081", "grpc": "127.0.0.1:9081", "weight": 1, "state": "active"}]}`

func TestParse(t *testing.T) {
	d, err := Parse([]byte(exampleJSON))
	if err != nil {
		t.Fatal(err)
	}
	want := Member{ID: 1, Name: "edge-1", WS: "127.0.0.1:8081", GRPC: "127.0.0.1:9081", Weight: 1, State: StateActive}
	if d.Version != 7 || d.Algorithm != AlgorithmBounded || len(d.Members) != 1 || d.Members[0] != want ||
		d.Params.Partitions != 65521 || d.Params.Replication != 1000 || d.Params.Load != 1.02 {
		t.Fatalf("Parse = %+v", d)
	}
}

func TestParseDefaults(t *testing.T) {
	d, err := Parse([]byte(`{"version":1,"members":[{"id":3,"name":"a","ws":"h:1","grpc":"h:2"}]}`))
	if err != nil {
		t.Fatal(err)
	}
	if d.Algorithm != AlgorithmBounded || d.Members[0].Weight != 1 || d.Members[0].State != StateActive ||
		d.Params != (Params{Partitions: DefaultPartitions, Replication: DefaultReplication, Load: DefaultLoad}) {
		t.Fatalf("defaults not filled: %+v", d)
	}
	for _, tt := range []struct {
		params    string
		hash      string
		avalanche bool
	}{
		{`{}`, HashSDBM, true}, // plain "hash-type consistent"
		{`{"hash":"sdbm"}`, HashSDBM, false},
		{`{"hash":"djb2","avalanche":true}`, HashDJB2, true},
		{`{"avalanche":false}`, HashSDBM, false},
		{`{"hash":"crc32"}`, HashCRC32, false},
	} {
		d, err := Parse([]byte(`{"version":1,"algorithm":"haproxy","params":` + tt.params +
			`,"members":[{"id":3,"name":"a","ws":"h:1","grpc":"h:2"}]}`))
		if err != nil {
			t.Fatal(err)
		}
		if d.Params.Hash != tt.hash || d.Params.Avalanche == nil || *d.Params.Avalanche != tt.avalanche {
			t.Errorf("params %s: got hash %q avalanche %v, want %q %v", tt.params, d.Params.Hash, d.Params.Avalanche, tt.hash, tt.avalanche)
		}
	}
}

func TestParseErrors(t *testing.T) {
	member := `{"id":1,"name":"a","ws":"h:1","grpc":"h:2"}`
	tests := []struct{ name, json, want string }{
		{"unknown top field", `{"version":1,"members":[` + member + `],"extra":1}`, `unknown field "extra"`},
		{"unknown member field", `{"version":1,"members":[{"id":1,"name":"a","ws":"h:1","grpc":"h:2","zone":"x"}]}`, `unknown field "zone"`},
		{"unknown params field", `{"version":1,"params":{"vnodes":3},"members":[` + member + `]}`, `unknown field "vnodes"`},
		{"trailing object", `{"version":1,"members":[` + member + `]} {}`, "trailing data after the document"},
		{"trailing garbage", `{"version":1,"members":[` + member + `]}x`, "trailing data after the document"},
		{"not an object", `[1]`, "bad JSON"},
		{"truncated", `{"version":1,`, "bad JSON"},
		{"id too big", `{"version":1,"members":[{"id":4294967296,"name":"a","ws":"h:1","grpc":"h:2"}]}`, "bad JSON"},
		{"weight 0 explicit", `{"version":1,"members":[{"id":1,"name":"a","ws":"h:1","grpc":"h:2","weight":0}]}`, `members[0] "a" (id 1): weight 0 out of range 1..256`},
		{"partitions 0 explicit", `{"version":1,"params":{"partitions":0},"members":[` + member + `]}`, "params.partitions is zero or empty: omit it to get the default"},
		{"load 0 explicit", `{"version":1,"params":{"load":0},"members":[` + member + `]}`, "params.load is zero or empty"},
		{"hash empty explicit", `{"version":1,"algorithm":"haproxy","params":{"hash":""},"members":[` + member + `]}`, "params.hash is zero or empty"},
		{"too big", `{"version":1,"members":[` + member + `]}` + strings.Repeat(" ", MaxDocumentSize), "more than 1048576"},
		{"null", `null`, "version must be at least 1"},
		{"invalid member", `{"version":1,"members":[{"id":1,"name":"a","ws":"","grpc":"h:2"}]}`, `members[0] "a" (id 1): ws address "": empty address`},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			_, err := Parse([]byte(tt.json))
			if err == nil || !strings.Contains(err.Error(), tt.want) || !errors.Is(err, ErrInvalid) {
				t.Fatalf("Parse = %v, want ErrInvalid with %q", err, tt.want)
			}
		})
	}
}

func TestRoundTrip(t *testing.T) {
	for _, alg := range []string{AlgorithmBounded, AlgorithmHAProxy} {
		d := testDoc(alg, 4)
		d.Version = 42
		d.Members[1].Weight = 7
		d.Members[2].State = StateDraining
		b1, err := d.Marshal()
		if err != nil {
			t.Fatal(err)
		}
		p, err := Parse(b1)
		if err != nil {
			t.Fatalf("%s\n%s", err, b1)
		}
		b2, err := p.Marshal()
		if err != nil {
			t.Fatal(err)
		}
		p2, err := Parse(b2)
		if err != nil {
			t.Fatal(err)
		}
		b3, _ := p2.Marshal()
		if !bytes.Equal(b2, b3) {
			t.Fatalf("not stable:\n%s\n%s", b2, b3)
		}
		if p.Version != 42 || len(p.Members) != 4 || p.Members[1].Weight != 7 || p.Members[2].State != StateDraining {
			t.Fatalf("round trip lost data: %+v", p)
		}
		if !bytes.HasPrefix(b1, []byte("{\n  \"version\": 42,\n  \"algorithm\": ")) || b1[len(b1)-1] != '\n' {
			t.Fatalf("not indented:\n%s", b1)
		}
		// The ring of the parsed document equals the ring of the original.
		r1, _ := New(d)
		r2, _ := New(p)
		for i := 0; i < 2000; i++ {
			k := fmt.Sprintf("uid-%d", i)
			if r1.LookupString(k) != r2.LookupString(k) {
				t.Fatalf("%s: ring differs after round trip", alg)
			}
		}
	}
	if _, err := (&Document{}).Marshal(); !errors.Is(err, ErrInvalid) {
		t.Fatalf("Marshal of an invalid document: %v", err)
	}
}

func TestCheckTransition(t *testing.T) {
	old := testDoc(AlgorithmBounded, 3)
	old.Version = 7
	next := func(f func(d *Document)) *Document {
		d := old.clone()
		d.Version = 8
		f(d)
		return d
	}
	tests := []struct {
		name  string
		d     *Document
		force bool
		want  string
	}{
		{"add member", next(func(d *Document) {
			d.Members = append(d.Members, testDoc("", 4).Members[3])
		}), false, ""},
		{"drain and weight", next(func(d *Document) { d.Members[0].State = StateDraining; d.Members[1].Weight = 3 }), false, ""},
		{"defaults made explicit", next(func(d *Document) { d.Params = Params{Partitions: DefaultPartitions, Load: 1.5} }), false, ""},
		{"same version", next(func(d *Document) { d.Version = 7 }), true, "version 7 does not increase on version 7"},
		{"older version", next(func(d *Document) { d.Version = 3 }), false, "version 3 does not increase on version 7"},
		{"algorithm", next(func(d *Document) { d.Algorithm = AlgorithmHAProxy }), false,
			"changing algorithm from bounded to haproxy moves every user to a new owner; pass force"},
		{"algorithm forced", next(func(d *Document) { d.Algorithm = AlgorithmHAProxy }), true, ""},
		{"partitions", next(func(d *Document) { d.Params.Partitions = 271 }), false,
			"changing params.partitions from 65521 to 271 moves every user"},
		{"replication", next(func(d *Document) { d.Params.Replication = 20 }), false,
			"changing params.replication from 1000 to 20 moves most users"},
		{"rename", next(func(d *Document) { d.Members[1].Name = "edge-x" }), false,
			`member id 2 was named "edge-2" and is now "edge-x"`},
		{"renumber", next(func(d *Document) { d.Members[1].ID = 99 }), false,
			`member "edge-2" had id 2 and now has id 99`},
		{"invalid next", next(func(d *Document) { d.Members[1].Weight = 0 }), true, "weight 0 out of range"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			err := CheckTransition(old, tt.d, tt.force)
			if tt.want == "" {
				if err != nil {
					t.Fatal(err)
				}
				return
			}
			if err == nil || !strings.Contains(err.Error(), tt.want) || !errors.Is(err, ErrInvalid) {
				t.Fatalf("CheckTransition = %v, want %q", err, tt.want)
			}
		})
	}
	h := testDoc(AlgorithmHAProxy, 3)
	h2 := h.clone()
	h2.Version = 2
	h2.Params.Hash = HashSDBM // drops the default avalanche
	if err := CheckTransition(h, h2, false); err == nil || !strings.Contains(err.Error(), "params.avalanche from true to false") {
		t.Fatalf("avalanche change: %v", err)
	}
	h2.Params.Avalanche = boolp(true) // sdbm+avalanche is the default: no change
	if err := CheckTransition(h, h2, false); err != nil {
		t.Fatal(err)
	}
	h2.Params.Hash = HashCRC32
	if err := CheckTransition(h, h2, false); err == nil || !strings.Contains(err.Error(), "params.hash from sdbm to crc32") {
		t.Fatalf("hash change: %v", err)
	}
	if err := CheckTransition(nil, h, false); err != nil {
		t.Fatalf("first document: %v", err)
	}
}

func TestRingAccessors(t *testing.T) {
	d := testDoc(AlgorithmHAProxy, 3)
	d.Version = 9
	d.Members[1].State = StateDraining
	r, err := New(d)
	if err != nil {
		t.Fatal(err)
	}
	if r.Version() != 9 {
		t.Fatal("Version")
	}
	if m, ok := r.Member(2); !ok || m.Name != "edge-2" || m.State != StateDraining {
		t.Fatalf("Member(2) = %+v %v", m, ok)
	}
	if _, ok := r.Member(4); ok {
		t.Fatal("Member(4) found")
	}
	ms := r.Members()
	ms[0].Name = "changed"
	if r.Members()[0].Name != "edge-1" || len(ms) != 3 {
		t.Fatal("Members is not a copy")
	}
	doc := r.Document()
	doc.Members[0].Name = "changed"
	*doc.Params.Avalanche = false
	if r.Document().Members[0].Name != "edge-1" || !*r.Document().Params.Avalanche {
		t.Fatal("Document is not a copy")
	}
	d.Members[0].Name = "changed" // New copied d
	if m, _ := r.Member(1); m.Name != "edge-1" {
		t.Fatal("ring shares the caller's document")
	}
	for i := 0; i < 10000; i++ {
		if id := r.LookupString(fmt.Sprint(i)); id == 2 {
			t.Fatal("Lookup returned a draining member")
		}
	}
	if s := r.Shares(); len(s) != 2 || s[2] != 0 {
		t.Fatalf("Shares = %v", s)
	}
}
