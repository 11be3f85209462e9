package pushctl

import (
	"context"
	"errors"
	"fmt"
	"google.golang.org/grpc"
	"io"
	"slices"
	"strconv"
	"time"

	"github.com/pushcluster/push/pkg/ring"
	"github.com/pushcluster/push/pkg/store"
)

// Ring changes, as "ring simulate" takes them (--add, --remove, --drain,
// --weight) and as the cluster console's JSON API takes them.
const (
	OpAdd    = "add"
	OpRemove = "remove"
	OpDrain  = "drain"
	OpWeight = "weight"
)

// DefaultSimulateKeys is how many user ids (uid-0 … uid-N-1) "ring
// simulate" counts moves over unless told otherwise.
const DefaultSimulateKeys = 1000000

// ErrRefused wraps every change Simulate, CheckEdit or Edit refuses (an
// unknown id, the last active member, an invalid resulting document, an
// added member whose edge does not answer, a member that still holds
// users): the caller's request is wrong, not the store.
var ErrRefused = errors.New("change refused")

// refusedError is an error that wraps ErrRefused without saying so in its
// text, so that pushctl prints the reason alone.
type refusedError struct{ error }

func (refusedError) Is(target error) bool { return target == ErrRefused }
func (e refusedError) Unwrap() error      { return e.error }

// refuse formats a refusal (errors.Is(err, ErrRefused)).
func refuse(format string, args ...any) error { return refusedError{fmt.Errorf(format, args...)} }

// Change is one ring edit. Its JSON form is the console API's:
// {"op":"add","member":{...}}, {"op":"remove","id":3}, {"op":"drain","id":2},
// {"op":"weight","id":1,"weight":2}.
type Change struct {
	Op     string       `json:"op"`
	ID     uint32       `json:"id,omitempty"`
	Weight int          `json:"weight,omitempty"`
	Member *ring.Member `json:"member,omitempty"` // OpAdd
}

// Simulation is what a set of changes does to the ring: the figures
// "pushctl ring simulate" prints.
type Simulation struct {
	// Version is the document the changes apply to; NextVersion the
	// document they make (Version+1).
	Version     uint64 `json:"version"`
	NextVersion uint64 `json:"next_version"`
	// Keys user ids uid-0 … uid-(Keys-1) were looked up on both rings;
	// Moved of them change owner.
	Keys  int `json:"keys"`
	Moved int `json:"moved"`
	// MovedFraction is Moved/Keys; IdealFraction the least fraction any
	// placement with these weights must move.
	MovedFraction float64 `json:"moved_fraction"`
	IdealFraction float64 `json:"ideal_fraction"`
	// Members has a row per member of the next document, then one per
	// removed member (state "removed"), as "ring simulate" prints them.
	Members []MemberChange `json:"members"`
	// Next is the document the changes make.
	Next *ring.Document `json:"next"`
}

// MemberChange is one member's row of a Simulation.
type MemberChange struct {
	ID     uint32 `json:"id"`
	Name   string `json:"name"`
	State  string `json:"state"` // active, draining or removed
	Weight int    `json:"weight"`
	// Before and After are the member's share of the key space
	// (ring.Ring.Shares) before and after the change.
	Before float64 `json:"before"`
	After  float64 `json:"after"`
	// Change notes what was done to the member ("added", "weight 1 -> 2").
	Change string `json:"change,omitempty"`
	// KeysBefore of the sampled keys were this member's before; KeysOut
	// of those change owner, and KeysIn of the others come to it.
	KeysBefore int `json:"keys_before"`
	KeysOut    int `json:"keys_out"`
	KeysIn     int `json:"keys_in"`
}

// Simulate applies changes to prev in memory (nothing is written) and
// counts, over keys user ids, how many change owner. An unknown id or a
// resulting document the store would refuse is an error wrapping
// ErrRefused.
func Simulate(prev *ring.Document, changes []Change, keys int) (*Simulation, error) {
	if len(changes) == 0 {
		return nil, refuse("name a change: add, remove, weight or drain")
	}
	if keys < 1 {
		return nil, refuse("keys %d must be at least 1", keys)
	}
	before, err := ring.New(prev)
	if err != nil {
		return nil, err
	}
	prev = before.Document()
	next, notes, err := applyChanges(prev, changes)
	if err != nil {
		return nil, refusedError{err}
	}
	if err := ring.CheckTransition(prev, next, false); err != nil {
		return nil, refuse("the changed document is refused: %w", err)
	}
	after, err := ring.New(next)
	if err != nil {
		return nil, refusedError{err}
	}
	mv := countMoves(before, after, keys)
	s := &Simulation{Version: prev.Version, NextVersion: next.Version, Keys: keys, Moved: mv.moved,
		MovedFraction: float64(mv.moved) / float64(keys), IdealFraction: idealMove(prev, next), Next: after.Document()}
	sb, sa := before.Shares(), after.Shares()
	row := func(m ring.Member, state string) {
		s.Members = append(s.Members, MemberChange{ID: m.ID, Name: m.Name, State: state, Weight: m.Weight,
			Before: sb[m.ID], After: sa[m.ID], Change: notes[m.ID],
			KeysBefore: mv.owned[m.ID], KeysOut: mv.out[m.ID], KeysIn: mv.in[m.ID]})
	}
	for _, m := range next.Members {
		row(m, string(m.State))
	}
	for _, m := range prev.Members {
		if _, ok := after.Member(m.ID); !ok {
			row(m, "removed")
		}
	}
	return s, nil
}

// Print writes the simulation as "pushctl ring simulate" prints it.
func (s *Simulation) Print(w io.Writer) error {
	fmt.Fprintf(w, "version    %d -> %d (simulated, nothing written)\n", s.Version, s.NextVersion)
	s.printMoves(w)
	fmt.Fprintln(w)
	rows := []string{"ID\tNAME\tSTATE\tWEIGHT\tBEFORE\tAFTER\tCHANGE"}
	for _, m := range s.Members {
		rows = append(rows, fmt.Sprintf("%d\t%s\t%s\t%d\t%s\t%s\t%s", m.ID, m.Name, m.State, m.Weight, percent(m.Before), percent(m.After), m.Change))
	}
	return writeTable(w, rows)
}

// printMoves prints the "moved" and "ideal" lines.
func (s *Simulation) printMoves(w io.Writer) {
	fmt.Fprintf(w, "moved      %s (%d of %d keys uid-0..uid-%d)\n", percent(s.MovedFraction), s.Moved, s.Keys, s.Keys-1)
	fmt.Fprintf(w, "ideal      %s\n", percent(s.IdealFraction))
}

// CheckEdit refuses (ErrRefused) what the ring's edit commands refuse
// beyond a valid document: draining a member that is not active or the
// last active one, setting a weight a member already has or outside
// 1..ring.MaxWeight, removing a member that is still active (drain it
// first). Changes apply in order.
func CheckEdit(prev *ring.Document, changes []Change) error {
	d := &ring.Document{Members: slices.Clone(prev.Members)}
	for _, c := range changes {
		i := slices.IndexFunc(d.Members, func(m ring.Member) bool { return m.ID == c.ID })
		switch c.Op {
		case OpAdd:
			if c.Member == nil {
				return refuse("add names no member")
			}
			d.Members = append(d.Members, *c.Member)
			continue
		case OpDrain, OpWeight, OpRemove:
			if i < 0 {
				return refuse("no member with id %d in ring version %d", c.ID, prev.Version)
			}
		default:
			return refuse("unknown op %q: want add, remove, drain or weight", c.Op)
		}
		m := d.Members[i]
		switch c.Op {
		case OpDrain:
			if !m.Active() {
				return refuse("%s is already draining", describe(m))
			}
			if activeMembers(d) == 1 {
				return refuse("%s is the last active member: add another before draining it", describe(m))
			}
			d.Members[i].State = ring.StateDraining
		case OpWeight:
			if c.Weight < 1 || c.Weight > ring.MaxWeight {
				return refuse("weight %d: want 1..%d", c.Weight, ring.MaxWeight)
			}
			if m.Weight == c.Weight {
				return refuse("%s already has weight %d", describe(m), c.Weight)
			}
			d.Members[i].Weight = c.Weight
		case OpRemove:
			if m.Active() {
				return refuse("%s is active: drain it first", describe(m))
			}
			d.Members = slices.Delete(d.Members, i, i+1)
		}
	}
	return nil
}

// EditOptions tunes Edit.
type EditOptions struct {
	// Keys is how many user ids the returned Simulation counts over
	// (DefaultSimulateKeys when 0).
	Keys int
	// Force skips the checks that ask the cluster: the health check of an
	// added member's edge, and the connections of a removed one.
	Force bool
	// ProbeTimeout bounds an added member's health check (default 2s).
	ProbeTimeout time.Duration
	// Dial are the dial options of that health check: the cluster's TLS
	// and credential (plaintext when none).
	Dial []grpc.DialOption
	// Connections reports how many connections member id's edge holds;
	// a member is removed only when it reports 0. Nil: removal needs
	// Force.
	Connections func(ctx context.Context, id uint32) (int64, error)
}

// Edit applies changes to the document stored at version from, refusing
// what CheckEdit refuses, an added member whose edge does not answer the
// gRPC health check with SERVING and a removed member whose edge still
// holds connections (unless opt.Force), and writes the result with a
// compare-and-swap on from. When the store holds another version, or
// another change gets in first, the error wraps store.ErrVersionConflict
// and nothing is written. It returns the simulation of what it wrote.
func Edit(ctx context.Context, st store.Store, from uint64, changes []Change, opt EditOptions) (*Simulation, error) {
	if opt.Keys == 0 {
		opt.Keys = DefaultSimulateKeys
	}
	if opt.ProbeTimeout <= 0 {
		opt.ProbeTimeout = 2 * time.Second
	}
	cur, err := st.Load(ctx)
	if err != nil {
		return nil, err
	}
	if cur.Version != from {
		return nil, fmt.Errorf("%w: the ring is at version %d, the change was made for version %d", store.ErrVersionConflict, cur.Version, from)
	}
	if err := CheckEdit(cur, changes); err != nil {
		return nil, err
	}
	sim, err := Simulate(cur, changes, opt.Keys)
	if err != nil {
		return nil, err
	}
	if !opt.Force {
		for _, c := range changes {
			switch c.Op {
			case OpAdd:
				pctx, cancel := context.WithTimeout(ctx, opt.ProbeTimeout)
				err := checkHealth(pctx, c.Member.GRPC, opt.Dial)
				cancel()
				if err != nil {
					if !errors.As(err, new(notServingError)) {
						err = rpcError(err)
					}
					return nil, refuse("%s: its edge at %s does not answer the gRPC health check with SERVING: %v; start the edge first, or force",
						describe(*c.Member), c.Member.GRPC, err)
				}
			case OpRemove:
				if opt.Connections == nil {
					return nil, refuse("cannot tell whether member %d still holds users; force to remove it regardless", c.ID)
				}
				n, err := opt.Connections(ctx, c.ID)
				if err != nil {
					return nil, refuse("member %d: %v; force to remove it without checking", c.ID, err)
				}
				if n > 0 {
					return nil, refuse("member %d still holds %d connection(s): wait until its drain has moved them, or force", c.ID, n)
				}
			}
		}
	}
	if err := st.CompareAndSwap(ctx, from, sim.Next, false); err != nil {
		if errors.Is(err, ring.ErrInvalid) {
			return nil, refusedError{err}
		}
		return nil, err
	}
	return sim, nil
}

// applyChanges returns a copy of prev, one version up, with the changes
// applied in order, and a note per changed member id. Unknown ids are
// errors.
func applyChanges(prev *ring.Document, changes []Change) (*ring.Document, map[uint32]string, error) {
	next := *prev
	next.Version++
	next.Members = slices.Clone(prev.Members)
	notes := make(map[uint32]string)
	note := func(id uint32, s string) {
		if notes[id] != "" {
			s = notes[id] + ", " + s
		}
		notes[id] = s
	}
	find := func(c Change) (int, error) {
		i := slices.IndexFunc(next.Members, func(m ring.Member) bool { return m.ID == c.ID })
		if i < 0 {
			return 0, fmt.Errorf("--%s %d: no member with id %d in ring version %d", c.Op, c.ID, c.ID, prev.Version)
		}
		return i, nil
	}
	for _, c := range changes {
		switch c.Op {
		case OpAdd:
			if c.Member == nil {
				return nil, nil, errors.New("--add names no member")
			}
			next.Members = append(next.Members, *c.Member)
			note(c.Member.ID, "added")
		case OpRemove:
			i, err := find(c)
			if err != nil {
				return nil, nil, err
			}
			next.Members = slices.Delete(next.Members, i, i+1)
			note(c.ID, "removed")
		case OpDrain:
			i, err := find(c)
			if err != nil {
				return nil, nil, err
			}
			next.Members[i].State = ring.StateDraining
			note(c.ID, "drained")
		case OpWeight:
			i, err := find(c)
			if err != nil {
				return nil, nil, err
			}
			note(c.ID, fmt.Sprintf("weight %d -> %d", next.Members[i].Weight, c.Weight))
			next.Members[i].Weight = c.Weight
		default:
			return nil, nil, fmt.Errorf("unknown op %q: want add, remove, drain or weight", c.Op)
		}
	}
	return &next, notes, nil
}

// moves is what countMoves finds.
type moves struct {
	moved          int
	owned, out, in map[uint32]int
}

// countMoves looks the keys uid-0 … uid-(keys-1) up on both rings.
func countMoves(before, after *ring.Ring, keys int) moves {
	mv := moves{owned: map[uint32]int{}, out: map[uint32]int{}, in: map[uint32]int{}}
	buf := make([]byte, 0, 32)
	for i := 0; i < keys; i++ {
		buf = strconv.AppendInt(append(buf[:0], "uid-"...), int64(i), 10)
		b, a := before.Lookup(buf), after.Lookup(buf)
		mv.owned[b]++
		if b != a {
			mv.moved++
			mv.out[b]++
			mv.in[a]++
		}
	}
	return mv
}

// printMoves prints the "moved" and "ideal" lines of a change from before
// to after: the fraction of the keys uid-0 … uid-(keys-1) whose owner
// changes, and the least fraction any placement would have to move.
func printMoves(w io.Writer, before, after *ring.Ring, keys int) {
	mv := countMoves(before, after, keys)
	s := Simulation{Keys: keys, Moved: mv.moved, MovedFraction: float64(mv.moved) / float64(keys),
		IdealFraction: idealMove(before.Document(), after.Document())}
	s.printMoves(w)
}

// idealMove is the least fraction of users any placement must move from
// prev to next: the total variation distance between the active members'
// weight shares before and after.
func idealMove(prev, next *ring.Document) float64 {
	share := func(d *ring.Document) map[uint32]float64 {
		s, total := make(map[uint32]float64), 0
		for _, m := range d.Members {
			if m.Active() {
				total += m.Weight
			}
		}
		for _, m := range d.Members {
			if m.Active() {
				s[m.ID] = float64(m.Weight) / float64(total)
			}
		}
		return s
	}
	b, a := share(prev), share(next)
	moved := 0.0
	for id, x := range b {
		if x > a[id] {
			moved += x - a[id]
		}
	}
	return moved
}
