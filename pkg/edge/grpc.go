package edge

import (
	"context"
	"errors"
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

// Publish implements push.v1.Push.
func (g *Service) Publish(ctx context.Context, req *pushv1.PublishRequest) (*pushv1.PublishResponse, error) {
	r, err := g.s.Publish(req.GetUserId(), req.GetData(), time.Duration(req.GetTtlSeconds())*time.Second)
	if err != nil {
		return nil, g.status(err)
	}
	return &pushv1.PublishResponse{Outcome: outcome(r.Outcome), Seq: r.Seq,
		Connections: uint32(r.Conns), Reason: r.Reason, EdgeId: g.s.cfg.ID}, nil
}

// PublishMulti implements push.v1.Push.
func (g *Service) PublishMulti(ctx context.Context, req *pushv1.PublishMultiRequest) (*pushv1.PublishMultiResponse, error) {
	if len(req.GetUserIds()) == 0 {
		return nil, status.Error(codes.InvalidArgument, "user_ids is empty")
	}
	rs, err := g.s.PublishMulti(req.GetUserIds(), req.GetData(), time.Duration(req.GetTtlSeconds())*time.Second)
	if err != nil {
		return nil, g.status(err)
	}
	out := &pushv1.PublishMultiResponse{Results: make([]*pushv1.PublishResult, len(rs))}
	for i, r := range rs {
		out.Results[i] = &pushv1.PublishResult{UserId: req.UserIds[i], Outcome: outcome(r.Outcome),
			Seq: r.Seq, Connections: uint32(r.Conns), Reason: r.Reason, EdgeId: g.s.cfg.ID}
	}
	return out, nil
}

// Broadcast implements push.v1.Push.
func (g *Service) Broadcast(ctx context.Context, req *pushv1.BroadcastRequest) (*pushv1.BroadcastResponse, error) {
	n, err := g.s.Broadcast(req.GetData())
	if err != nil {
		return nil, g.status(err)
	}
	return &pushv1.BroadcastResponse{Connections: uint64(n), Edges: 1}, nil
}

// Kick implements push.v1.Push.
func (g *Service) Kick(ctx context.Context, req *pushv1.KickRequest) (*pushv1.KickResponse, error) {
	n, err := g.s.Kick(req.GetUserId(), req.GetReason())
	if err != nil {
		return nil, g.status(err)
	}
	return &pushv1.KickResponse{Connections: uint32(n)}, nil
}

// Presence implements push.v1.Push.
func (g *Service) Presence(ctx context.Context, req *pushv1.PresenceRequest) (*pushv1.PresenceResponse, error) {
	ids := req.GetUserIds()
	if len(ids) == 0 {
		return nil, status.Error(codes.InvalidArgument, "user_ids is empty")
	}
	if err := userid.CheckAll(ids); err != nil {
		return nil, g.status(err)
	}
	out := &pushv1.PresenceResponse{Users: make([]*pushv1.UserPresence, len(ids))}
	for i, uid := range ids {
		n := g.s.Presence(uid)
		p := &pushv1.UserPresence{UserId: uid, Online: n > 0, Connections: uint32(n)}
		if n > 0 {
			p.EdgeId = g.s.cfg.ID
		}
		out.Users[i] = p
	}
	return out, nil
}
