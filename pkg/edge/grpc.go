package edge

import (
	"context"
	"errors"
	"io"
	"strconv"
	"sync"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/metadata"
	"google.golang.org/grpc/status"

	"github.com/pushcluster/push/pkg/grpcauth"
	"github.com/pushcluster/push/pkg/owner"
	"github.com/pushcluster/push/pkg/userid"
	pushv1 "github.com/pushcluster/push/proto/push/v1"
)

// Trailer metadata of a not-owner answer to a unary call.
const (
	TrailerOwner       = owner.OwnerTrailer
	TrailerRingVersion = owner.RingVersionTrailer
)

// Service exposes a Server as the gRPC push.v1.Push service, and, between
// edges, push.v1.Cluster.
type Service struct {
	pushv1.UnimplementedPushServer
	pushv1.UnimplementedClusterServer
	s *Server
}

// NewService wraps s.
func NewService(s *Server) *Service { return &Service{s: s} }

// Register registers both services on g.
func (g *Service) Register(gs *grpc.Server) {
	pushv1.RegisterPushServer(gs, g)
	pushv1.RegisterClusterServer(gs, g)
}

func (g *Service) status(err error) error {
	var no *NotOwnerError
	if _, ok := err.(interface{ GRPCStatus() *status.Status }); ok {
		return err // already a status (grpcauth.Limit)
	}
	switch {
	case errors.As(err, &no):
		return status.Error(codes.Unavailable, err.Error())
	case errors.Is(err, ErrShuttingDown), errors.Is(err, ErrFenced):
		return status.Error(codes.Unavailable, err.Error())
	case errors.Is(err, context.DeadlineExceeded):
		return status.Error(codes.DeadlineExceeded, err.Error())
	case errors.Is(err, context.Canceled):
		return status.Error(codes.Canceled, err.Error())
	case errors.Is(err, userid.ErrInvalid), errors.Is(err, ErrPayloadTooBig), errors.Is(err, ErrBatchTooBig), errors.Is(err, ErrEmptyBatch),
		errors.Is(err, ErrEmptyPayload), errors.Is(err, userid.ErrTooMany), errors.Is(err, ErrBadKey):
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
	case NotOwner:
		return pushv1.Outcome_OUTCOME_NOT_OWNER
	}
	return pushv1.Outcome_OUTCOME_UNSPECIFIED
}

// publish answers one PublishRequest; a not-owner refusal is returned as
// the error, with its owner for the caller to put on the wire. With noWait
// it returns errWouldWait instead of waiting for a stream hand-over.
func (g *Service) publish(ctx context.Context, req *pushv1.PublishRequest, noWait bool) (*pushv1.PublishResponse, error) {
	s := g.s
	ttl := time.Duration(req.GetTtlSeconds()) * time.Second
	var r Result
	var err error
	if noWait {
		r, err = s.publishNow(req.GetUserId(), req.GetData(), ttl, req.GetIdempotencyKey())
	} else {
		r, err = s.PublishKey(ctx, req.GetUserId(), req.GetData(), ttl, req.GetIdempotencyKey())
	}
	if err != nil {
		return nil, err
	}
	return &pushv1.PublishResponse{Outcome: outcome(r.Outcome), Seq: r.Seq, Epoch: r.Epoch, Duplicate: r.Duplicate,
		Connections: uint32(r.Conns), Reason: r.Reason, EdgeId: s.cfg.ID}, nil
}

// Publish implements push.v1.Push: applied here if this edge holds the
// user's stream or owns the user; otherwise UNAVAILABLE at once with the
// owner in the trailer (push-owner, push-ring-version).
func (g *Service) Publish(ctx context.Context, req *pushv1.PublishRequest) (*pushv1.PublishResponse, error) {
	resp, err := g.publish(ctx, req, false)
	if err != nil {
		var no *NotOwnerError
		if errors.As(err, &no) {
			grpc.SetTrailer(ctx, metadata.Pairs(TrailerOwner, strconv.FormatUint(uint64(no.Owner), 10),
				TrailerRingVersion, strconv.FormatUint(no.RingVersion, 10)))
		}
		return nil, g.status(err)
	}
	return resp, nil
}

// PublishMulti implements push.v1.Push: the users this edge holds or owns
// are served here; the others get OUTCOME_NOT_OWNER with the owner it sees;
// results come back in request order.
func (g *Service) PublishMulti(ctx context.Context, req *pushv1.PublishMultiRequest) (*pushv1.PublishMultiResponse, error) {
	s := g.s
	ids := req.GetUserIds()
	ttl := time.Duration(req.GetTtlSeconds()) * time.Second
	rs, err := s.PublishMultiKey(ctx, ids, req.GetData(), ttl, req.GetIdempotencyKey())
	if err != nil {
		return nil, g.status(err)
	}
	out := &pushv1.PublishMultiResponse{Results: make([]*pushv1.PublishResult, len(ids))}
	for i, r := range rs {
		out.Results[i] = &pushv1.PublishResult{UserId: ids[i], Outcome: outcome(r.Outcome), Epoch: r.Epoch,
			Duplicate: r.Duplicate, Seq: r.Seq, Connections: uint32(r.Conns), Reason: r.Reason, EdgeId: s.cfg.ID, OwnerId: r.Owner}
	}
	return out, nil
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

// Kick implements push.v1.Push: the user's connections on this edge are
// closed with 4004 (the SDK asks every edge that may hold one).
func (g *Service) Kick(ctx context.Context, req *pushv1.KickRequest) (*pushv1.KickResponse, error) {
	n, err := g.s.Kick(req.GetUserId(), req.GetReason())
	if err != nil {
		return nil, g.status(err)
	}
	return &pushv1.KickResponse{Connections: uint32(n)}, nil
}

// Presence implements push.v1.Push for the connections on this edge.
func (g *Service) Presence(ctx context.Context, req *pushv1.PresenceRequest) (*pushv1.PresenceResponse, error) {
	s := g.s
	ids := req.GetUserIds()
	if err := userid.CheckAll(ids); err != nil {
		return nil, g.status(err)
	}
	out := &pushv1.PresenceResponse{Users: make([]*pushv1.UserPresence, len(ids))}
	for i, uid := range ids {
		n := s.Presence(uid)
		p := &pushv1.UserPresence{UserId: uid, Online: n > 0, Connections: uint32(n)}
		if n > 0 {
			p.EdgeId = s.cfg.ID
		}
		out.Users[i] = p
	}
	return out, nil
}

// maxStreamInFlight bounds the requests of one PublishStream served at once.
const maxStreamInFlight = 256

// PublishStream implements push.v1.Push: each request is handled as
// Publish is and answered on the stream with its request_id, or with
// error_code and error (and owner_id, ring_version for a not-owner refusal;
// RESOURCE_EXHAUSTED beyond the caller's publish limit) when it fails; one
// bad request does not end the stream. Requests are
// served in order as they come, except one that must wait for a user's
// stream to be handed over: it is served on its own (up to 256 per stream),
// so it holds no other, and its answer may come after later ones.
func (g *Service) PublishStream(stream pushv1.Push_PublishStreamServer) error {
	var (
		sendMu  sync.Mutex
		sendErr error
		wg      sync.WaitGroup
	)
	sem := make(chan struct{}, maxStreamInFlight)
	defer wg.Wait()
	// Recv runs apart so that a stream idling in Recv ends when the edge
	// stops (a graceful gRPC stop would otherwise wait for the caller to
	// close it); the caller's SDK opens a new one elsewhere.
	reqs := make(chan *pushv1.PublishRequest)
	recvErr := make(chan error, 1)
	go func() {
		for {
			req, err := stream.Recv()
			if err != nil {
				recvErr <- err
				return
			}
			select {
			case reqs <- req:
			case <-stream.Context().Done():
				return
			}
		}
	}()
	for {
		var req *pushv1.PublishRequest
		select {
		case req = <-reqs:
		case err := <-recvErr:
			if err == io.EOF {
				return nil
			}
			return err
		case <-g.s.stop:
			return status.Error(codes.Unavailable, ErrShuttingDown.Error())
		}
		answer := func(resp *pushv1.PublishResponse, err error) {
			if err != nil {
				st := status.Convert(g.status(err))
				resp = &pushv1.PublishResponse{ErrorCode: uint32(st.Code()), Error: st.Message(), EdgeId: g.s.cfg.ID}
				var no *NotOwnerError
				if errors.As(err, &no) {
					resp.OwnerId, resp.RingVersion = no.Owner, no.RingVersion
				}
			}
			resp.RequestId = req.GetRequestId()
			sendMu.Lock()
			if sendErr == nil {
				sendErr = stream.Send(resp)
			}
			sendMu.Unlock()
		}
		// The interceptor checked the stream's caller; each message
		// counts against its publish limit, answered like any failure.
		if err := grpcauth.Limit(stream.Context(), grpcauth.Publishes, 1); err != nil {
			answer(nil, err)
			continue
		}
		resp, err := g.publish(stream.Context(), req, true)
		if !errors.Is(err, errWouldWait) {
			answer(resp, err)
			continue
		}
		sem <- struct{}{}
		wg.Add(1)
		go func() {
			defer func() { <-sem; wg.Done() }()
			answer(g.publish(stream.Context(), req, false))
		}()
	}
}

// Take implements push.v1.Cluster: see Server.takeStreams.
func (g *Service) Take(ctx context.Context, req *pushv1.TakeRequest) (*pushv1.TakeResponse, error) {
	if err := userid.CheckAll(req.GetUserIds()); err != nil {
		return nil, g.status(err)
	}
	resp, err := g.s.takeStreams(req.GetClaimantId(), req.GetRingVersion(), req.GetUserIds())
	if err != nil {
		return nil, status.Error(codes.PermissionDenied, err.Error())
	}
	return resp, nil
}

// Claim implements push.v1.Cluster: see Server.claimStreams.
func (g *Service) Claim(ctx context.Context, req *pushv1.ClaimRequest) (*pushv1.ClaimResponse, error) {
	if err := userid.CheckAll(req.GetUserIds()); err != nil {
		return nil, g.status(err)
	}
	n, err := g.s.claimStreams(req.GetHolderId(), req.GetUserIds())
	if err != nil {
		return nil, status.Error(codes.PermissionDenied, err.Error())
	}
	return &pushv1.ClaimResponse{Taken: uint32(n)}, nil
}

// LeaseStatus implements push.v1.Cluster: how this edge sees the store and
// the asking member's lease.
func (g *Service) LeaseStatus(ctx context.Context, req *pushv1.LeaseStatusRequest) (*pushv1.LeaseStatusResponse, error) {
	reachable, live := g.s.storeStatus(req.GetMemberId())
	return &pushv1.LeaseStatusResponse{StoreReachable: reachable, MemberLive: live, ResponderId: g.s.cfg.ID}, nil
}

// batchItems converts a batch's requests.
func batchItems(reqs []*pushv1.PublishRequest) []BatchItem {
	items := make([]BatchItem, len(reqs))
	for i, r := range reqs {
		items[i] = BatchItem{User: r.GetUserId(), Data: r.GetData(), TTL: time.Duration(r.GetTtlSeconds()) * time.Second, Key: r.GetIdempotencyKey()}
	}
	return items
}

// response is one request's answer in a batch or stream: its result, or
// error_code and error (and owner_id, ring_version for a not-owner
// refusal).
func (g *Service) response(r Result, err error, requestID uint64) *pushv1.PublishResponse {
	if err != nil {
		st := status.Convert(g.status(err))
		resp := &pushv1.PublishResponse{ErrorCode: uint32(st.Code()), Error: st.Message(), EdgeId: g.s.cfg.ID, RequestId: requestID}
		var no *NotOwnerError
		if errors.As(err, &no) {
			resp.OwnerId, resp.RingVersion = no.Owner, no.RingVersion
		}
		return resp
	}
	return &pushv1.PublishResponse{Outcome: outcome(r.Outcome), Seq: r.Seq, Epoch: r.Epoch, Duplicate: r.Duplicate,
		Connections: uint32(r.Conns), Reason: r.Reason, EdgeId: g.s.cfg.ID, RequestId: requestID}
}

// PublishBatch implements push.v1.Push: every request is answered as
// Publish answers it, in request order, one PublishResponse each (a
// failed one with error_code and error); the batch is applied in one pass
// (Server.PublishBatch). The call fails with INVALID_ARGUMENT only for an
// empty batch or one over MaxBatchRequests or MaxBatchBytes.
func (g *Service) PublishBatch(ctx context.Context, req *pushv1.PublishBatchRequest) (*pushv1.PublishBatchResponse, error) {
	reqs := req.GetRequests()
	rs, errs, err := g.s.PublishBatch(ctx, batchItems(reqs))
	if err != nil {
		return nil, g.status(err)
	}
	out := &pushv1.PublishBatchResponse{Responses: make([]*pushv1.PublishResponse, len(reqs))}
	for i, r := range reqs {
		out.Responses[i] = g.response(rs[i], errs[i], r.GetRequestId())
	}
	return out, nil
}

// PublishBatchStream implements push.v1.Push: PublishStream with a batch
// per message. Each batch is applied in one pass and answered with one
// message holding the answers of the requests that did not wait; the
// requests of a user whose stream must be handed over first are served
// on their own (up to 256 users at once per stream), in order, and
// answered in a message of their own. A batch over the bounds, or over
// the caller's publish limit, is answered with the error for every
// request in it; the stream goes on.
func (g *Service) PublishBatchStream(stream pushv1.Push_PublishBatchStreamServer) error {
	var (
		sendMu  sync.Mutex
		sendErr error
		wg      sync.WaitGroup
	)
	sem := make(chan struct{}, maxStreamInFlight)
	send := func(resp *pushv1.PublishBatchResponse) {
		sendMu.Lock()
		if sendErr == nil {
			sendErr = stream.Send(resp)
		}
		sendMu.Unlock()
	}
	// Batches are served on the goroutine that receives them (a batch is
	// applied without waiting on anybody, so nothing queues behind it but
	// the next batch, and no hand-off to another goroutine is paid per
	// message); this one returns when the edge stops, so that a stream
	// idling in Recv does not hold a graceful stop (the caller's SDK opens
	// a new one elsewhere).
	var (
		serving sync.Mutex // held while a batch is served
		closed  bool       // the handler is returning: serve nothing more
	)
	defer func() {
		serving.Lock()
		closed = true
		serving.Unlock()
		wg.Wait() // hand-overs still running answer before the stream ends
	}()
	done := make(chan error, 1)
	go func() {
		for {
			req, err := stream.Recv()
			if err != nil {
				done <- err
				return
			}
			serving.Lock()
			if closed {
				serving.Unlock()
				return
			}
			g.serveBatch(stream.Context(), req.GetRequests(), send, sem, &wg)
			serving.Unlock()
		}
	}()
	select {
	case err := <-done:
		if err == io.EOF {
			return nil
		}
		return err
	case <-g.s.stop:
		return status.Error(codes.Unavailable, ErrShuttingDown.Error())
	}
}

// serveBatch applies one PublishBatchStream message and answers it (see
// PublishBatchStream); the users that wait for a hand-over are served on
// goroutines of their own, bounded by sem and counted in wg.
func (g *Service) serveBatch(ctx context.Context, rq []*pushv1.PublishRequest, send func(*pushv1.PublishBatchResponse), sem chan struct{}, wg *sync.WaitGroup) {
	if len(rq) == 0 {
		return // nothing to answer
	}
	// The interceptor checked the stream's caller; each request counts
	// against its publish limit.
	err := grpcauth.Limit(ctx, grpcauth.Publishes, len(rq))
	var b *pubBatch
	if err == nil {
		b, err = g.s.applyBatch(batchItems(rq))
	}
	if err != nil {
		out := &pushv1.PublishBatchResponse{Responses: make([]*pushv1.PublishResponse, len(rq))}
		for i, r := range rq {
			out.Responses[i] = g.response(Result{}, err, r.GetRequestId())
		}
		send(out)
		return
	}
	out := &pushv1.PublishBatchResponse{Responses: make([]*pushv1.PublishResponse, 0, len(rq))}
	for i, r := range rq {
		if b.errs[i] != errWouldWait {
			out.Responses = append(out.Responses, g.response(b.rs[i], b.errs[i], r.GetRequestId()))
		}
	}
	if len(out.Responses) > 0 {
		send(out)
	}
	for _, run := range b.waiting() {
		sem <- struct{}{}
		wg.Add(1)
		go func() {
			defer func() { <-sem; wg.Done() }()
			b.finishWaiting(ctx, g.s, run)
			out := &pushv1.PublishBatchResponse{Responses: make([]*pushv1.PublishResponse, len(run))}
			for k, i := range run {
				out.Responses[k] = g.response(b.rs[i], b.errs[i], rq[i].GetRequestId())
			}
			send(out)
		}()
	}
}
