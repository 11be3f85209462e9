package ring

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"math"
	"net"
	"strconv"
)

// Algorithm names accepted in Document.Algorithm.
const (
	// AlgorithmBounded is consistent hashing with bounded loads
	// (github.com/buraksezer/consistent v1.0.0 with xxhash). It is the
	// default when Document.Algorithm is empty.
	AlgorithmBounded = "bounded"
	// AlgorithmHAProxy is bit-compatible with HAProxy 2.6
	// "hash-type consistent".
	AlgorithmHAProxy = "haproxy"
)

// Hash function names accepted in Params.Hash (algorithm "haproxy" only).
// They are HAProxy's "hash-type consistent <function>" names.
const (
	HashSDBM  = "sdbm"
	HashDJB2  = "djb2"
	HashCRC32 = "crc32"
	HashWT6   = "wt6"
)

// Defaults and limits of a Document.
const (
	// DefaultPartitions is the bounded partition count: the largest prime
	// below 2^16 (primes spread the key hashes evenly over partitions).
	DefaultPartitions = 65521
	// DefaultReplication is the number of points of each bounded virtual
	// member on buraksezer's ring.
	DefaultReplication = 1000
	// DefaultLoad is the bounded load factor: no member owns more than
	// ceil(partitions/members*load) partitions.
	DefaultLoad = 1.02

	// MaxID is the largest member id. HAProxy places point j of server
	// puid at full_hash(uint32(puid*4096+j)), so ids that are equal
	// modulo 2^20 would get the same points; 1..2^20-1 keeps every id
	// distinct on the HAProxy ring and in HAProxy's "id" keyword.
	MaxID = 1<<20 - 1
	// MaxWeight is the largest member weight (HAProxy's limit).
	MaxWeight = 256
	// MaxMembers bounds the number of members of a document.
	MaxMembers = 1024
	// MaxPartitions bounds Params.Partitions (4 bytes of table each).
	MaxPartitions = 1 << 22
	// MaxBoundedPoints bounds the bounded ring size, the sum of the
	// active members' weights times Params.Replication; building a ring
	// of that size takes about 0.4 s on one core.
	MaxBoundedPoints = 1 << 21
	// MaxDocumentSize is the largest JSON document Parse accepts.
	MaxDocumentSize = 1 << 20
)

// Errors callers branch on with errors.Is. Every error returned by Parse,
// Validate, CheckTransition, Marshal and New for a bad document wraps
// ErrInvalid; one with no active member also wraps ErrNoMembers.
var (
	ErrInvalid   = errors.New("invalid ring document")
	ErrNoMembers = errors.New("no active members")
)

// State is a member's state.
type State string

// Member states. The empty State means StateActive.
const (
	// StateActive members own users.
	StateActive State = "active"
	// StateDraining members are out of the placement: Lookup never
	// returns them and their users belong to their new owners, to which
	// the edge migrates them gradually. They stay in the document so that
	// everybody can still reach them.
	StateDraining State = "draining"
)

// Document is the versioned ring membership document shared by routers,
// edges, SDKs and pushctl. Its JSON form is a cross-team contract.
type Document struct {
	// Version increases with every change (see CheckTransition).
	Version uint64 `json:"version"`
	// Algorithm is AlgorithmBounded (default when empty) or
	// AlgorithmHAProxy.
	Algorithm string `json:"algorithm"`
	// Params tune the algorithm; zero fields mean the defaults.
	Params Params `json:"params"`
	// Members in document order, which is HAProxy's config order.
	Members []Member `json:"members"`
}

// Params tune the placement. A zero field means its default; Parse writes
// the defaults in, so that a stored document pins them. Fields of the
// other algorithm must be zero.
type Params struct {
	// Partitions (bounded): keys map to xxhash64(key) % Partitions.
	// Default DefaultPartitions; choose a prime.
	Partitions int `json:"partitions,omitempty"`
	// Replication (bounded): ring points per virtual member. Default
	// DefaultReplication.
	Replication int `json:"replication,omitempty"`
	// Load (bounded): the load bound, > 1. Default DefaultLoad.
	Load float64 `json:"load,omitempty"`
	// Hash (haproxy): HashSDBM (default), HashDJB2, HashCRC32 or HashWT6.
	Hash string `json:"hash,omitempty"`
	// Avalanche (haproxy): apply HAProxy's full_hash to the key hash.
	// When nil it is true if Hash is empty (HAProxy's plain
	// "hash-type consistent") and false if Hash names a function
	// ("hash-type consistent djb2"), like HAProxy.
	Avalanche *bool `json:"avalanche,omitempty"`
}

// Member is one edge. ID and Name are its permanent identities: the haproxy
// algorithm hashes the ID, the bounded algorithm hashes the Name.
type Member struct {
	// ID is HAProxy's server id, 1..MaxID.
	ID uint32 `json:"id"`
	// Name is unique, without '#' (bounded virtual members are named
	// "name#k"), spaces or control characters.
	Name string `json:"name"`
	// WS is the host:port of the edge's WebSocket listener.
	WS string `json:"ws"`
	// GRPC is the host:port of the edge's gRPC listener.
	GRPC string `json:"grpc"`
	// Weight is 1..MaxWeight; Parse turns a missing weight into 1.
	Weight int `json:"weight"`
	// State is StateActive (default when empty) or StateDraining.
	State State `json:"state"`
}

// Active reports whether m is in the placement.
func (m Member) Active() bool { return m.State == "" || m.State == StateActive }

// wire* mirror the JSON form with pointers, so that Parse can tell a
// missing field (default) from an explicit zero (error).
type wireDocument struct {
	Version   uint64       `json:"version"`
	Algorithm string       `json:"algorithm"`
	Params    wireParams   `json:"params"`
	Members   []wireMember `json:"members"`
}

type wireParams struct {
	Partitions  *int     `json:"partitions"`
	Replication *int     `json:"replication"`
	Load        *float64 `json:"load"`
	Hash        *string  `json:"hash"`
	Avalanche   *bool    `json:"avalanche"`
}

type wireMember struct {
	ID     uint32 `json:"id"`
	Name   string `json:"name"`
	WS     string `json:"ws"`
	GRPC   string `json:"grpc"`
	Weight *int   `json:"weight"`
	State  State  `json:"state"`
}

func invalid(format string, args ...any) error {
	return fmt.Errorf("%w: "+format, append([]any{ErrInvalid}, args...)...)
}

// Parse decodes and validates a JSON document strictly: at most
// MaxDocumentSize bytes, no unknown fields, nothing after the document.
// It fills in the defaults, so the result marshals with every parameter
// explicit: an empty algorithm becomes "bounded", a missing weight 1, an
// empty state "active", missing params their defaults. An explicit zero
// parameter or weight is an error, not a default.
func Parse(data []byte) (*Document, error) {
	if len(data) > MaxDocumentSize {
		return nil, invalid("document is %d bytes, more than %d", len(data), MaxDocumentSize)
	}
	dec := json.NewDecoder(bytes.NewReader(data))
	dec.DisallowUnknownFields()
	var w wireDocument
	if err := dec.Decode(&w); err != nil {
		return nil, invalid("bad JSON: %v", err)
	}
	if _, err := dec.Token(); err != io.EOF {
		return nil, invalid("trailing data after the document")
	}
	d := &Document{Version: w.Version, Algorithm: w.Algorithm}
	if d.Algorithm == "" {
		d.Algorithm = AlgorithmBounded
	}
	p := w.Params
	for _, z := range []struct {
		name string
		zero bool
	}{
		{"partitions", p.Partitions != nil && *p.Partitions == 0},
		{"replication", p.Replication != nil && *p.Replication == 0},
		{"load", p.Load != nil && *p.Load == 0},
		{"hash", p.Hash != nil && *p.Hash == ""},
	} {
		if z.zero {
			return nil, invalid("params.%s is zero or empty: omit it to get the default", z.name)
		}
	}
	if p.Partitions != nil {
		d.Params.Partitions = *p.Partitions
	}
	if p.Replication != nil {
		d.Params.Replication = *p.Replication
	}
	if p.Load != nil {
		d.Params.Load = *p.Load
	}
	if p.Hash != nil {
		d.Params.Hash = *p.Hash
	}
	d.Params.Avalanche = p.Avalanche
	d.Members = make([]Member, len(w.Members))
	for i, m := range w.Members {
		weight := 1
		if m.Weight != nil {
			weight = *m.Weight
		}
		state := m.State
		if state == "" {
			state = StateActive
		}
		d.Members[i] = Member{ID: m.ID, Name: m.Name, WS: m.WS, GRPC: m.GRPC, Weight: weight, State: state}
	}
	if err := d.Validate(); err != nil {
		return nil, err
	}
	d.fillDefaults()
	return d, nil
}

// fillDefaults writes the effective parameters into d.Params.
func (d *Document) fillDefaults() {
	e := d.effective()
	switch e.algorithm {
	case AlgorithmBounded:
		d.Params.Partitions, d.Params.Replication, d.Params.Load = e.partitions, e.replication, e.load
	case AlgorithmHAProxy:
		a := e.avalanche
		d.Params.Hash, d.Params.Avalanche = e.hash, &a
	}
}

// effectiveParams are a document's parameters with the defaults applied.
type effectiveParams struct {
	algorithm   string
	partitions  int
	replication int
	load        float64
	hash        string
	avalanche   bool
}

func (d *Document) effective() effectiveParams {
	e := effectiveParams{algorithm: d.Algorithm, partitions: d.Params.Partitions,
		replication: d.Params.Replication, load: d.Params.Load, hash: d.Params.Hash}
	if e.algorithm == "" {
		e.algorithm = AlgorithmBounded
	}
	switch e.algorithm {
	case AlgorithmBounded:
		if e.partitions == 0 {
			e.partitions = DefaultPartitions
		}
		if e.replication == 0 {
			e.replication = DefaultReplication
		}
		if e.load == 0 {
			e.load = DefaultLoad
		}
	case AlgorithmHAProxy:
		e.avalanche = e.hash == ""
		if d.Params.Avalanche != nil {
			e.avalanche = *d.Params.Avalanche
		}
		if e.hash == "" {
			e.hash = HashSDBM
		}
	}
	return e
}

// Validate checks everything New needs, and reports the first problem in
// document order, naming the offending member or parameter. All errors
// wrap ErrInvalid. Zero Params fields mean the defaults; Weight must be
// set (1..MaxWeight) and an empty State means active.
func (d *Document) Validate() error {
	if d == nil {
		return invalid("nil document")
	}
	if d.Version == 0 {
		return invalid("version must be at least 1")
	}
	p := d.Params
	switch d.Algorithm {
	case "", AlgorithmBounded:
		if p.Partitions < 0 || p.Partitions > MaxPartitions {
			return invalid("params.partitions %d out of range 1..%d", p.Partitions, MaxPartitions)
		}
		if p.Replication < 0 {
			return invalid("params.replication %d must be > 0", p.Replication)
		}
		// buraksezer/consistent panics ("not enough room to distribute
		// partitions") when load < 1 leaves too little capacity.
		if p.Load != 0 && !(p.Load > 1 && !math.IsInf(p.Load, 0)) {
			return invalid("params.load %v must be a number > 1.0", p.Load)
		}
		if p.Hash != "" || p.Avalanche != nil {
			return invalid("params.hash and params.avalanche apply only to algorithm %q", AlgorithmHAProxy)
		}
	case AlgorithmHAProxy:
		switch p.Hash {
		case "", HashSDBM, HashDJB2, HashCRC32, HashWT6:
		default:
			return invalid("params.hash %q unknown: want %s, %s, %s or %s", p.Hash, HashSDBM, HashDJB2, HashCRC32, HashWT6)
		}
		if p.Partitions != 0 || p.Replication != 0 || p.Load != 0 {
			return invalid("params.partitions, params.replication and params.load apply only to algorithm %q", AlgorithmBounded)
		}
	default:
		return invalid("algorithm %q unknown: want %q or %q", d.Algorithm, AlgorithmBounded, AlgorithmHAProxy)
	}
	if len(d.Members) > MaxMembers {
		return invalid("%d members, more than %d", len(d.Members), MaxMembers)
	}
	ids := make(map[uint32]int, len(d.Members))
	names := make(map[string]int, len(d.Members))
	addrs := make(map[string]int, 2*len(d.Members))
	active, activeWeight := 0, 0
	for i, m := range d.Members {
		where := fmt.Sprintf("members[%d] %q (id %d)", i, m.Name, m.ID)
		other := func(j int) string { return fmt.Sprintf("members[%d] %q", j, d.Members[j].Name) }
		if m.ID == 0 || m.ID > MaxID {
			return invalid("%s: id must be 1..%d (HAProxy only uses the id modulo 2^20)", where, MaxID)
		}
		if err := checkName(m.Name); err != nil {
			return invalid("%s: %v", where, err)
		}
		if j, ok := ids[m.ID]; ok {
			return invalid("%s: duplicate id %d, also used by %s", where, m.ID, other(j))
		}
		ids[m.ID] = i
		if j, ok := names[m.Name]; ok {
			return invalid("%s: duplicate name, also used by %s", where, other(j))
		}
		names[m.Name] = i
		for _, a := range []struct{ field, addr string }{{"ws", m.WS}, {"grpc", m.GRPC}} {
			if err := checkAddr(a.addr); err != nil {
				return invalid("%s: %s address %q: %v", where, a.field, a.addr, err)
			}
			if j, ok := addrs[a.addr]; ok && j != i {
				return invalid("%s: duplicate %s address %q, also used by %s", where, a.field, a.addr, other(j))
			}
			addrs[a.addr] = i
		}
		if m.Weight < 1 || m.Weight > MaxWeight {
			return invalid("%s: weight %d out of range 1..%d (use state %q to stop new users)", where, m.Weight, MaxWeight, StateDraining)
		}
		switch m.State {
		case "", StateActive:
			active++
			activeWeight += m.Weight
		case StateDraining:
		default:
			return invalid("%s: state %q unknown: want %q or %q", where, m.State, StateActive, StateDraining)
		}
	}
	if active == 0 {
		if len(d.Members) == 0 {
			return fmt.Errorf("%w: %w: the document has no members", ErrInvalid, ErrNoMembers)
		}
		return fmt.Errorf("%w: %w: all %d members are draining", ErrInvalid, ErrNoMembers, len(d.Members))
	}
	if e := d.effective(); e.algorithm == AlgorithmBounded && activeWeight*e.replication > MaxBoundedPoints {
		return invalid("bounded ring too large: active weights sum to %d, times params.replication %d is %d points, more than %d; lower the weights or the replication",
			activeWeight, e.replication, activeWeight*e.replication, MaxBoundedPoints)
	}
	return nil
}

func checkName(name string) error {
	if name == "" {
		return errors.New("empty name")
	}
	if len(name) > 255 {
		return errors.New("name longer than 255 bytes")
	}
	for _, c := range name {
		if c <= ' ' || c == 0x7f || c == '#' {
			return fmt.Errorf("name has %q: no spaces, control characters or '#' (bounded virtual members are named name#k)", c)
		}
	}
	return nil
}

func checkAddr(addr string) error {
	if addr == "" {
		return errors.New("empty address")
	}
	host, port, err := net.SplitHostPort(addr)
	if err != nil {
		return errors.New("not host:port")
	}
	if host == "" {
		return errors.New("empty host")
	}
	if n, err := strconv.Atoi(port); err != nil || n < 1 || n > 65535 {
		return errors.New("port must be 1..65535")
	}
	return nil
}

// CheckTransition checks that next may replace prev (nil for the first
// document): next must be valid and its version must increase. Unless
// force is set it refuses changes that reshuffle users wholesale: the
// algorithm, partitions, hash or avalanche (every user would move),
// replication (most users would move), and a member id that changes name
// or a name that changes id (ids and names are the hashed identities).
func CheckTransition(prev, next *Document, force bool) error {
	if err := next.Validate(); err != nil {
		return err
	}
	if prev == nil {
		return nil
	}
	if next.Version <= prev.Version {
		return invalid("version %d does not increase on version %d", next.Version, prev.Version)
	}
	if force {
		return nil
	}
	a, b := prev.effective(), next.effective()
	every := func(what string, x, y any) error {
		return invalid("changing %s from %v to %v moves every user to a new owner; pass force to do it anyway", what, x, y)
	}
	switch {
	case a.algorithm != b.algorithm:
		return every("algorithm", a.algorithm, b.algorithm)
	case a.partitions != b.partitions:
		return every("params.partitions", a.partitions, b.partitions)
	case a.hash != b.hash:
		return every("params.hash", a.hash, b.hash)
	case a.avalanche != b.avalanche:
		return every("params.avalanche", a.avalanche, b.avalanche)
	case a.replication != b.replication:
		return invalid("changing params.replication from %d to %d moves most users to a new owner; pass force to do it anyway", a.replication, b.replication)
	}
	byID := make(map[uint32]string, len(prev.Members))
	byName := make(map[string]uint32, len(prev.Members))
	for _, m := range prev.Members {
		byID[m.ID], byName[m.Name] = m.Name, m.ID
	}
	for _, m := range next.Members {
		if name, ok := byID[m.ID]; ok && name != m.Name {
			return invalid("member id %d was named %q and is now %q: ids and names are permanent (remove and add a member instead), or pass force", m.ID, name, m.Name)
		}
		if id, ok := byName[m.Name]; ok && id != m.ID {
			return invalid("member %q had id %d and now has id %d: ids and names are permanent (remove and add a member instead), or pass force", m.Name, id, m.ID)
		}
	}
	return nil
}

// Marshal validates d and encodes it as indented JSON (two spaces, fields
// in a fixed order, members in document order, a final newline).
func (d *Document) Marshal() ([]byte, error) {
	if err := d.Validate(); err != nil {
		return nil, err
	}
	b, err := json.MarshalIndent(d, "", "  ")
	if err != nil {
		return nil, err
	}
	return append(b, '\n'), nil
}

// clone returns a deep copy of d.
func (d *Document) clone() *Document {
	c := *d
	c.Members = append([]Member(nil), d.Members...)
	if d.Params.Avalanche != nil {
		a := *d.Params.Avalanche
		c.Params.Avalanche = &a
	}
	return &c
}
