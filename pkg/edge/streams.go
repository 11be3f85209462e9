package edge

import (
	"context"
	"errors"
	"fmt"
	"sync"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/pushcluster/push/pkg/mailbox"
	"github.com/pushcluster/push/pkg/owner"
	"github.com/pushcluster/push/pkg/registry"
	pushv1 "github.com/pushcluster/push/proto/push/v1"
)

// takeTimeout bounds one Take call to a member that may hold a stream: a
// member that does not answer in time is taken for dead (if it was only
// slow, its lease runs out and it fences itself before it can serve again).
const takeTimeout = 500 * time.Millisecond

// goneKeep is how long a stream hand-over is remembered, so that publishes
// from callers whose view lags are sent to the new holder; for goneHold this
// edge does not take the stream back even if its own view says it owns the
// user (its view may be the one lagging: views agree within a liveness
// reading, 250 ms, plus a read).
const (
	goneKeep = 30 * time.Second
	goneHold = 2 * time.Second
)

// estCall is one stream establishment in progress; concurrent callers for
// the same user wait for it.
type estCall struct {
	done chan struct{}
	err  error
}

// streams holds the edge's side of stream hand-over: establishments in
// flight and the gRPC connections to peers. mu guards both maps.
type streams struct {
	mu    sync.Mutex
	est   map[string]*estCall
	peers map[string]*grpc.ClientConn // by gRPC address
	sem   chan struct{}               // bounds background establishments
	// handed: when each connection's stream was handed over (Unix ns);
	// the migrator moves it a settling time later.
	handed map[*conn]int64
}

// markHanded records that c's stream was handed over at now.
func (st *streams) markHanded(c *conn, now int64) {
	st.mu.Lock()
	defer st.mu.Unlock()
	if _, ok := st.handed[c]; !ok {
		st.handed[c] = now
	}
}

// handedSince returns how long ago c's stream was handed over.
func (st *streams) handedSince(c *conn, now int64) time.Duration {
	st.mu.Lock()
	defer st.mu.Unlock()
	at, ok := st.handed[c]
	if !ok {
		return 0
	}
	return time.Duration(now - at)
}

// sweepHanded forgets hand-overs older than goneKeep (their connections
// closed by themselves meanwhile).
func (st *streams) sweepHanded(now int64) {
	st.mu.Lock()
	defer st.mu.Unlock()
	for c, at := range st.handed {
		if now-at > int64(goneKeep) {
			delete(st.handed, c)
		}
	}
}

func (st *streams) forgetHanded(c *conn) {
	st.mu.Lock()
	defer st.mu.Unlock()
	delete(st.handed, c)
}

func (st *streams) init() {
	st.est = make(map[string]*estCall)
	st.peers = make(map[string]*grpc.ClientConn)
	st.sem = make(chan struct{}, 64)
	st.handed = make(map[*conn]int64)
}

// peer returns a Cluster client for member id.
func (s *Server) peer(id uint32) (pushv1.ClusterClient, bool) {
	m, ok := s.member(id)
	if !ok {
		return nil, false
	}
	st := &s.streams
	st.mu.Lock()
	defer st.mu.Unlock()
	cc := st.peers[m.GRPC]
	if cc == nil {
		var err error
		cc, err = grpc.NewClient(m.GRPC, s.cfg.ClusterDial...)
		if err != nil {
			return nil, false
		}
		st.peers[m.GRPC] = cc
	}
	return pushv1.NewClusterClient(cc), true
}

func (s *Server) closePeers() {
	st := &s.streams
	st.mu.Lock()
	defer st.mu.Unlock()
	for a, cc := range st.peers {
		cc.Close()
		delete(st.peers, a)
	}
}

// establish makes this edge the holder of uid's stream: it takes the stream
// from the members that may hold it (candidates plus extra) and installs it,
// or starts a new epoch when none has it. Concurrent calls for one user share
// one establishment. It fails with a *NotOwnerError when a holder refuses
// (it owns the user in a newer ring).
func (s *Server) establish(ctx context.Context, uid string, extra ...uint32) error {
	return s.establishMode(ctx, uid, false, extra)
}

// establishMode is establish; with claim (a holder offered its stream) it
// takes what the holders have and starts no stream when they have none.
func (s *Server) establishMode(ctx context.Context, uid string, claim bool, extra []uint32) error {
	st := &s.streams
	st.mu.Lock()
	if c := st.est[uid]; c != nil {
		st.mu.Unlock()
		select {
		case <-c.done:
			return c.err
		case <-ctx.Done():
			return ctx.Err()
		}
	}
	c := &estCall{done: make(chan struct{})}
	st.est[uid] = c
	st.mu.Unlock()
	defer func() {
		st.mu.Lock()
		delete(st.est, uid)
		st.mu.Unlock()
		close(c.done)
	}()
	c.err = s.establishNow(ctx, uid, claim, extra)
	return c.err
}

func (s *Server) establishNow(ctx context.Context, uid string, claim bool, extra []uint32) error {
	// Already here (another path installed it meanwhile)?
	here := false
	var gone uint32
	var gaveEpoch string // the stream this edge last handed over, if it did
	var gaveLast uint64
	s.reg.Do(uid, false, func(u *registry.User[*conn]) {
		if u != nil {
			here = u.Box != nil && u.Handed == nil
			gone = u.GoneTo()
			if u.Handed != nil && u.Handed.Gave != nil {
				gaveEpoch, gaveLast = u.Handed.Gave.Epoch, u.Handed.Gave.Last
			}
		}
	})
	if here && len(extra) == 0 {
		return nil
	}
	if gone != 0 {
		extra = append(extra, gone)
	}
	v := s.View()
	var ver uint64
	if v != nil {
		ver = v.Version()
	}
	var got []mailbox.Stream
	from := s.candidates(uid, extra...)
	if here {
		// A holder asked this edge to take its stream (Claim) although
		// one is here already: take it anyway and merge, or what it
		// stored would be stranded there.
		from = nil
		for _, id := range extra {
			if id != s.cfg.ID {
				from = append(from, id)
			}
		}
	}
	for _, id := range from {
		pc, ok := s.peer(id)
		if !ok {
			continue
		}
		resp, err := s.take(ctx, pc, id, uid, ver)
		if err != nil {
			s.m.takeFailed.Inc()
			s.log.Debug("take stream", "user", uid, "from", id, "err", err)
			if ctx.Err() != nil {
				return ctx.Err()
			}
			// A member that refuses connections has lost its memory: go
			// on without it. One that is alive but did not answer may
			// still hold the stream: starting another would split it,
			// so the caller retries until it answers or its lease ends.
			if status.Code(err) != codes.Unavailable {
				if v := s.View(); v != nil && v.Alive(id) {
					return fmt.Errorf("%w: user %q: member %d, which may hold the stream, did not hand it over: %v", ErrShuttingDown, uid, id, err)
				}
			}
			continue
		}
		if len(resp.GetRefused()) > 0 {
			return &NotOwnerError{User: uid, Owner: id, RingVersion: resp.GetRingVersion()}
		}
		for _, us := range resp.GetStreams() {
			if us.GetUserId() != uid {
				continue
			}
			st := streamFromProto(us)
			if st.Epoch == gaveEpoch && st.Last < gaveLast {
				// A copy from before this edge held the stream (its
				// earlier holder answering again): the stream went on
				// from here, so this copy would reuse numbers.
				s.m.staleStreams.Inc()
				continue
			}
			got = append(got, st)
		}
	}
	// Several members may answer with copies of one epoch (the holder
	// now and one that handed it over earlier): the furthest along wins.
	got = mailbox.Newest(got)
	if !s.serving() {
		return ErrFenced
	}
	if claim && len(got) == 0 {
		return nil // nothing was held: no stream to start for a claim
	}
	now := time.Now().UnixNano()
	s.reg.Do(uid, true, func(u *registry.User[*conn]) {
		if u.Box != nil && u.Handed == nil {
			for _, g := range got {
				u.Box = u.Box.Adopt(g, now)
			}
		} else {
			switch {
			case len(got) > 0:
				u.Box = mailbox.Restore(s.cfg.MailboxSize, got[0])
				for _, g := range got[1:] {
					u.Box = u.Box.Adopt(g, now)
				}
				s.m.streamsTaken.Inc()
			default:
				u.Box = mailbox.New(s.cfg.MailboxSize, s.newEpoch())
				s.m.epochsStarted.Inc()
			}
		}
		u.Handed = nil
		s.deliverUnsentInShard(u, now)
		s.attachWaitingInShard(u, now)
	})
	return nil
}

// deliverUnsentInShard gives the user's open connections that were here
// all along (those this edge had handed the stream away from, and those
// open while another stream was merged in) what no connection has had:
// they saw everything up to the hand-over, and what the stream gained
// elsewhere was never sent. Called with the shard lock held, the stream here.
func (s *Server) deliverUnsentInShard(u *registry.User[*conn], now int64) {
	msgs, _ := u.Box.Resume(nil, 0, false, now)
	delivered := false
	for _, c := range u.Conns {
		c.mu.Lock()
		if c.state == stOpen && c.resume == nil {
			if c.handedOff {
				c.handedOff = false
				s.streams.forgetHanded(c)
			}
			if len(msgs) > 0 {
				s.replayLocked(c, mailbox.Gap{}, u.Box.Epoch, msgs)
				delivered = true
			}
		}
		c.mu.Unlock()
	}
	if len(msgs) > 0 && !delivered {
		u.Box.Unmark(msgs)
	}
}

// take asks member id for uid's stream. A call that timed out may have
// been applied there (the stream given, the answer lost), so while the
// member is alive in the view it is asked again, and it answers with the
// same stream; a member that refuses the connection is taken for dead.
func (s *Server) take(ctx context.Context, pc pushv1.ClusterClient, id uint32, uid string, ver uint64) (*pushv1.TakeResponse, error) {
	var err error
	for attempt := 0; attempt < 2; attempt++ {
		tctx, cancel := context.WithTimeout(ctx, takeTimeout)
		var resp *pushv1.TakeResponse
		resp, err = pc.Take(tctx, &pushv1.TakeRequest{ClaimantId: s.cfg.ID, RingVersion: ver, UserIds: []string{uid}})
		cancel()
		if err == nil {
			return resp, nil
		}
		if ctx.Err() != nil || status.Code(err) != codes.DeadlineExceeded {
			return nil, err
		}
		if v := s.View(); v == nil || !v.Alive(id) {
			return nil, err
		}
	}
	return nil, err
}

// establishLater establishes uid's stream in the background (a connection
// arrived for a user whose stream is elsewhere, or a holder offered it),
// bounded in concurrency; extra are members to take it from besides the
// candidates.
func (s *Server) establishLater(uid string, extra ...uint32) {
	s.streamWork(func() {
		ctx, cancel := context.WithTimeout(context.Background(), 4*takeTimeout)
		defer cancel()
		if err := s.establish(ctx, uid, extra...); err != nil {
			s.log.Debug("establish stream in the background", "user", uid, "err", err)
		}
	})
}

// streamWork runs f in a goroutine once one of the streams.sem slots is
// free (background stream work is bounded in concurrency); not at all if
// the server stops first.
func (s *Server) streamWork(f func()) {
	go func() {
		select {
		case s.streams.sem <- struct{}{}:
		case <-s.stop:
			return
		}
		defer func() { <-s.streams.sem }()
		f()
	}()
}

// attachWaitingInShard resumes the user's connections that arrived before
// the stream was here. Called with the user's shard lock held.
func (s *Server) attachWaitingInShard(u *registry.User[*conn], now int64) {
	for i := 0; i < len(u.Conns); i++ {
		c := u.Conns[i]
		c.mu.Lock()
		if c.resume != nil && c.state == stOpen {
			rp := *c.resume
			c.resume = nil
			msgs, gap := s.resumeInShard(u, rp, now)
			s.replayLocked(c, gap, u.Box.Epoch, msgs)
		}
		if c.registered && c.state >= stClosing {
			c.registered = false
			u.Remove(c)
			i--
		}
		c.mu.Unlock()
	}
}

// takeStreams is the giving side of a hand-over (Cluster.Take): for each
// user this edge holds a stream or connections of, it gives up the stream
// (answers later publishes with the claimant as owner) and has the user's
// connections moved (4003) so they reconnect to the claimant. A user
// this edge owns in a newer ring than the claimant's is refused.
func (s *Server) takeStreams(claimant uint32, ver uint64, uids []string) (*pushv1.TakeResponse, error) {
	resp := &pushv1.TakeResponse{}
	v := s.View()
	// A member of the ring document, not necessarily live in this view: a
	// claimant that just registered may be seen live here a reading later.
	if _, ok := s.member(claimant); v == nil || !ok || claimant == s.cfg.ID {
		return nil, fmt.Errorf("%w: claimant %d is not a member of ring version %d", ErrNotMember, claimant, viewVersion(v))
	}
	resp.RingVersion = v.Version()
	now := time.Now().UnixNano()
	for _, uid := range uids {
		if v != nil && v.Version() > ver && s.owns(uid) {
			resp.Refused = append(resp.Refused, uid)
			continue
		}
		var moved []*conn
		s.reg.Do(uid, false, func(u *registry.User[*conn]) {
			if u == nil {
				return
			}
			if h := u.Handed; u.Box == nil && h != nil && h.To == claimant && h.Gave != nil {
				// The claimant asks again: its first answer was lost.
				resp.Streams = append(resp.Streams, streamToProto(uid, *h.Gave))
				return
			}
			if u.Box == nil && len(u.Conns) == 0 {
				return
			}
			var gave *mailbox.Stream
			if u.Box != nil && u.Handed == nil {
				st := u.Box.Snapshot(now)
				resp.Streams = append(resp.Streams, streamToProto(uid, st))
				u.Box, gave = nil, &st
				s.m.streamsGiven.Inc()
			}
			u.Handed = &registry.Handoff{To: claimant, At: now, Gave: gave}
			moved = append(moved, u.Conns...)
		})
		// The connections move on the migrator's next pass, once every
		// view has caught up (a router that still sees this edge as the
		// owner would send the user straight back); until then nothing
		// reaches them, and what is published waits in the stream.
		for _, c := range moved {
			c.mu.Lock()
			c.handedOff = true
			c.mu.Unlock()
			s.streams.markHanded(c, now)
		}
		if len(moved) > 0 {
			select {
			case s.ringChanged <- struct{}{}:
			default:
			}
		}
	}
	return resp, nil
}

// claimStreams is the owner's side of Cluster.Claim: take the listed
// users' streams from holder, in the background, one after another (the
// cost follows the users this edge owns, not the request), starting no
// stream where the holder has none. A holder that is not an alive member of
// this edge's view is refused.
func (s *Server) claimStreams(holder uint32, uids []string) (int, error) {
	if _, ok := s.member(holder); !ok || holder == s.cfg.ID {
		return 0, fmt.Errorf("%w: holder %d is not a member of ring version %d", ErrNotMember, holder, viewVersion(s.View()))
	}
	var mine []string
	for _, uid := range uids {
		if s.owns(uid) {
			mine = append(mine, uid)
		}
	}
	if len(mine) == 0 {
		return 0, nil
	}
	s.streamWork(func() {
		for _, uid := range mine {
			ctx, cancel := context.WithTimeout(context.Background(), 4*takeTimeout)
			err := s.establishMode(ctx, uid, true, []uint32{holder})
			cancel()
			if err != nil {
				s.log.Debug("take an offered stream", "user", uid, "holder", holder, "err", err)
			}
			select {
			case <-s.stop:
				return
			default:
			}
		}
	})
	return len(mine), nil
}

func viewVersion(v *owner.View) uint64 {
	if v == nil {
		return 0
	}
	return v.Version()
}

// ErrNotMember: a Cluster call named an id that is not a member of this
// edge's ring document.
var ErrNotMember = errors.New("not a member")

// offerStreams asks owners to take the streams this edge holds for absent
// users it does not own (stored messages must reach the owner before the
// user does), in one Claim per owner.
func (s *Server) offerStreams() {
	if s.View() == nil {
		return
	}
	by := map[uint32][]string{}
	now := time.Now().UnixNano()
	s.reg.Sweep(func(uid string, u *registry.User[*conn]) {
		if u.Handed != nil && now-u.Handed.At > int64(goneKeep) {
			u.Handed = nil
		}
		if len(u.Conns) > 0 || u.Box == nil || u.Handed != nil || u.Box.Len() == 0 {
			return
		}
		if id, _ := s.ownerOf(uid); id != 0 && id != s.cfg.ID {
			by[id] = append(by[id], uid)
		}
	})
	for id, uids := range by {
		pc, ok := s.peer(id)
		if !ok {
			continue
		}
		for len(uids) > 0 {
			n := min(len(uids), 1000)
			ctx, cancel := context.WithTimeout(context.Background(), time.Second)
			_, err := pc.Claim(ctx, &pushv1.ClaimRequest{HolderId: s.cfg.ID, UserIds: uids[:n]})
			cancel()
			if err != nil {
				s.log.Debug("offer streams", "owner", id, "users", n, "err", err)
				break
			}
			uids = uids[n:]
		}
	}
}

func streamToProto(uid string, st mailbox.Stream) *pushv1.UserStream {
	us := &pushv1.UserStream{UserId: uid, Epoch: st.Epoch, LastSeq: st.Last, Floor: st.Floor,
		LostUnsent: st.LostUnsent, Shown: st.Shown}
	for _, m := range st.Messages {
		us.Messages = append(us.Messages, &pushv1.StoredMessage{Seq: m.Seq, Body: m.Body, ExpiresUnixNano: m.Expires, Sent: m.Sent})
	}
	for _, k := range st.Keys {
		us.Keys = append(us.Keys, &pushv1.IdempotencyRecord{Key: k.Key, Seq: k.Seq, Outcome: pushv1.Outcome(k.Outcome), ExpiresUnixNano: k.Expires, Epoch: k.Epoch})
	}
	return us
}

// streamFromProto is streamToProto's inverse. Key records keep the epoch
// of the stream they came with.
func streamFromProto(us *pushv1.UserStream) mailbox.Stream {
	st := mailbox.Stream{Epoch: us.GetEpoch(), Last: us.GetLastSeq(), Floor: us.GetFloor(),
		LostUnsent: us.GetLostUnsent(), Shown: us.GetShown()}
	for _, m := range us.GetMessages() {
		st.Messages = append(st.Messages, mailbox.Message{Seq: m.GetSeq(), Body: m.GetBody(), Expires: m.GetExpiresUnixNano(), Sent: m.GetSent()})
	}
	for _, k := range us.GetKeys() {
		e := k.GetEpoch()
		if e == "" {
			e = us.GetEpoch()
		}
		st.Keys = append(st.Keys, mailbox.KeyRecord{Key: k.GetKey(), Epoch: e, Seq: k.GetSeq(), Outcome: uint8(k.GetOutcome()), Expires: k.GetExpiresUnixNano()})
	}
	return st
}
