package edge

import (
	"context"
	"errors"
	"io"
	"time"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/pushcluster/push/pkg/userid"
	pushv1 "github.com/pushcluster/push/proto/push/v1"
)

// Service exposes a Server as the gRPC push.v1.Push service.
type Service struct {
	pushv1.UnimplementedPushServer
	s *Server
}

// NewService wraps s.
func NewService(s *Server) *Service { return &Service{s: s} }

func (g *Service) status(err error) error {
	switch {
	case errors.Is(err, ErrShuttingDown):
		return status.Error(codes.Unavailable, err.Error())
	case errors.Is(err, userid.ErrInvalid), errors.Is(err, ErrPayloadTooBig),
		errors.Is(err, ErrEmptyPayload), errors.Is(err, userid.ErrTooMany):
		return status.Error(codes.InvalidArgument, err.Error())
	}
	return status.Error(codes.Internal, err.Error())
}

func outcome(o Outcome) pushv1.Outcome {
	switch o {
	case Delivered:
		return pushv1.Outcome_OUTCOME_DELIVERED
	case Stored:
		return pushv1.Outcome_OUTCOME_STORED
	case Rejected:
		return pushv1.Outcome_OUTCOME_REJECTED
	}
	return pushv1.Outcome_OUTCOME_UNSPECIFIED
}

// forward reports whether a call for uid goes to its owner: this edge has
// a Forwarder, the call was not forwarded already, and the edge neither
// owns nor holds the user.
func (g *Service) forward(forwarded bool, uid string) bool {
	return g.s.forwarder() != nil && !forwarded && !g.s.local(uid)
}

// Publish implements push.v1.Push: delivered here if this edge holds or
// owns the user, else forwarded once to the owner.
func (g *Service) Publish(ctx context.Context, req *pushv1.PublishRequest) (*pushv1.PublishResponse, error) {
	s := g.s
	ttl := time.Duration(req.GetTtlSeconds()) * time.Second
	if err := s.admit(req.GetData(), req.GetUserId()); err != nil {
		return nil, g.status(err)
	}
	if g.forward(req.GetForwarded(), req.GetUserId()) {
		s.m.forwarded.Inc()
		return s.forwarder().Publish(ctx, req.GetUserId(), req.GetData(), ttl)
	}
	r := s.publish(req.GetUserId(), req.GetData(), ttl)
	if r.Outcome == Stored && !req.GetForwarded() && s.forwarder() != nil && !s.owns(req.GetUserId()) {
		if resp := s.handOverNow(ctx, req.GetUserId()); resp != nil {
			return resp, nil
		}
	}
	return &pushv1.PublishResponse{Outcome: outcome(r.Outcome), Seq: r.Seq,
		Connections: uint32(r.Conns), Reason: r.Reason, EdgeId: s.cfg.ID}, nil
}

// PublishMulti implements push.v1.Push: the users this edge holds or owns
// are served here, the rest forwarded to their owners in one call; results
// come back in request order.
func (g *Service) PublishMulti(ctx context.Context, req *pushv1.PublishMultiRequest) (*pushv1.PublishMultiResponse, error) {
	s := g.s
	ids := req.GetUserIds()
	ttl := time.Duration(req.GetTtlSeconds()) * time.Second
	if err := s.admit(req.GetData(), ids...); err != nil {
		return nil, g.status(err)
	}
	var here, there []int
	for i, uid := range ids {
		if g.forward(req.GetForwarded(), uid) {
			there = append(there, i)
		} else {
			here = append(here, i)
		}
	}
	out := &pushv1.PublishMultiResponse{Results: make([]*pushv1.PublishResult, len(ids))}
	if len(there) > 0 {
		s.m.forwarded.Inc()
		remote, err := s.forwarder().PublishMulti(ctx, pick(ids, there), req.GetData(), ttl)
		if err != nil {
			return nil, err
		}
		for j, i := range there {
			out.Results[i] = remote.Results[j]
		}
	}
	if len(here) > 0 {
		rs := s.publishMulti(pick(ids, here), req.GetData(), ttl)
		for j, i := range here {
			r := rs[j]
			out.Results[i] = &pushv1.PublishResult{UserId: ids[i], Outcome: outcome(r.Outcome),
				Seq: r.Seq, Connections: uint32(r.Conns), Reason: r.Reason, EdgeId: s.cfg.ID}
		}
	}
	return out, nil
}

func pick(ids []string, idx []int) []string {
	out := make([]string, len(idx))
	for j, i := range idx {
		out[j] = ids[i]
	}
	return out
}

// Broadcast implements push.v1.Push. It reaches this edge's connections
// only: the SDK and the router fan a broadcast out to every edge.
func (g *Service) Broadcast(ctx context.Context, req *pushv1.BroadcastRequest) (*pushv1.BroadcastResponse, error) {
	n, err := g.s.Broadcast(req.GetData())
	if err != nil {
		return nil, g.status(err)
	}
	return &pushv1.BroadcastResponse{Connections: uint64(n), Edges: 1}, nil
}

// Kick implements push.v1.Push: the user's connections here are closed,
// and, if another edge owns the user, theirs there too.
func (g *Service) Kick(ctx context.Context, req *pushv1.KickRequest) (*pushv1.KickResponse, error) {
	s := g.s
	n, err := s.Kick(req.GetUserId(), req.GetReason())
	if err != nil {
		return nil, g.status(err)
	}
	if s.forwarder() != nil && !req.GetForwarded() && !s.owns(req.GetUserId()) {
		s.m.forwarded.Inc()
		r, err := s.forwarder().Kick(ctx, req.GetUserId(), req.GetReason())
		if err != nil {
			return nil, err
		}
		n += int(r.GetConnections())
	}
	return &pushv1.KickResponse{Connections: uint32(n)}, nil
}

// Presence implements push.v1.Push: users connected here are answered
// here; the others, if another edge owns them, by that edge.
func (g *Service) Presence(ctx context.Context, req *pushv1.PresenceRequest) (*pushv1.PresenceResponse, error) {
	s := g.s
	ids := req.GetUserIds()
	if err := userid.CheckAll(ids); err != nil {
		return nil, g.status(err)
	}
	out := &pushv1.PresenceResponse{Users: make([]*pushv1.UserPresence, len(ids))}
	var there []int
	for i, uid := range ids {
		n := s.Presence(uid)
		p := &pushv1.UserPresence{UserId: uid, Online: n > 0, Connections: uint32(n)}
		if n > 0 {
			p.EdgeId = s.cfg.ID
		} else if s.forwarder() != nil && !req.GetForwarded() && !s.owns(uid) {
			there = append(there, i)
		}
		out.Users[i] = p
	}
	if len(there) > 0 {
		s.m.forwarded.Inc()
		remote, err := s.forwarder().Presence(ctx, pick(ids, there))
		if err != nil {
			return nil, err
		}
		for j, i := range there {
			out.Users[i] = remote.Users[j]
		}
	}
	return out, nil
}

// PublishStream implements push.v1.Push: each request is handled as
// Publish is and answered on the stream with its request_id, or with the
// error code and message when it fails; one bad request does not end the
// stream.
func (g *Service) PublishStream(stream pushv1.Push_PublishStreamServer) error {
	for {
		req, err := stream.Recv()
		if err != nil {
			if err == io.EOF {
				return nil
			}
			return err
		}
		resp, err := g.Publish(stream.Context(), req)
		if err != nil {
			st := status.Convert(err)
			resp = &pushv1.PublishResponse{ErrorCode: uint32(st.Code()), Error: st.Message()}
		}
		resp.RequestId = req.GetRequestId()
		if err := stream.Send(resp); err != nil {
			return err
		}
	}
}
