package client

import (
	"context"
	"sync"
	"time"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	pushv1 "github.com/pushcluster/push/proto/push/v1"
)

// Server returns a push.v1.Push server that forwards every call through c:
// the router serves it for backends that do not embed the SDK. Requests
// with forwarded=true are forwarded all the same, since the router is not
// an edge and owns nobody (on an authenticated port grpcauth refuses them
// from non-members before they get here, and checks each caller's scope
// and limits: c calls the edges with the router's own credential).
//
// Each call runs on its own, concurrently with the others (Publish calls
// share each edge's PublishStream, where no call waits for another), with
// its own deadline: the caller's, capped at the forward timeout
// (WithForwardTimeout, DefaultForwardTimeout) from its arrival, so that
// nothing behind the forwarder waits on a dead edge. Retries stop a little
// before the caller's own deadline, so that the caller learns why its call
// failed instead of seeing DEADLINE_EXCEEDED. Publish and PublishMulti
// pass the caller's idempotency_key through unchanged (a key longer than
// MaxIdempotencyKeyLen is INVALID_ARGUMENT), or set a random one when the
// caller gave none, the same for every retry. Errors keep their gRPC
// codes; a Broadcast that some edges missed fails as a whole (gRPC carries
// no answer with an error).
//
// PublishBatch is served as that many Publish calls through c, the
// requests of one user one after another in request order and different
// users concurrently; c coalesces them again into batches per owning edge
// (WithBatchSize, WithBatchLinger), so a batch that spans edges reaches
// each in one pass. Each request gets its own answer or error_code and
// error; the call fails with INVALID_ARGUMENT for an empty batch, more
// than MaxBatchSize requests, or (with more than one request) more than
// MaxBatchBytes of payload.
func (c *Client) Server() pushv1.PushServer { return forwarder{c: c} }

type forwarder struct {
	pushv1.UnimplementedPushServer
	c *Client
}

// maxAnswerMargin caps the time kept back from the caller's deadline to
// carry the answer back to it.
const maxAnswerMargin = 100 * time.Millisecond

// bound gives one forwarded call its deadline: the forward timeout from
// now, or the caller's deadline less a tenth of what is left (at most
// maxAnswerMargin), whichever comes first.
func (f forwarder) bound(ctx context.Context) (context.Context, context.CancelFunc) {
	limit := time.Now().Add(f.c.fwdTimeout)
	if deadline, ok := ctx.Deadline(); ok {
		if answer := deadline.Add(-min(time.Until(deadline)/10, maxAnswerMargin)); answer.Before(limit) {
			limit = answer
		}
	}
	return context.WithDeadline(ctx, limit)
}

// keyed carries the caller's idempotency key into the SDK call.
func keyed(ctx context.Context, key string) context.Context {
	if key == "" {
		return ctx // the SDK sets one
	}
	return WithIdempotencyKey(ctx, key)
}

func (f forwarder) Publish(ctx context.Context, req *pushv1.PublishRequest) (*pushv1.PublishResponse, error) {
	ctx, cancel := f.bound(ctx)
	defer cancel()
	return f.c.Publish(keyed(ctx, req.GetIdempotencyKey()), req.GetUserId(), req.GetData(),
		time.Duration(req.GetTtlSeconds())*time.Second)
}

func (f forwarder) PublishMulti(ctx context.Context, req *pushv1.PublishMultiRequest) (*pushv1.PublishMultiResponse, error) {
	ctx, cancel := f.bound(ctx)
	defer cancel()
	return f.c.PublishMulti(keyed(ctx, req.GetIdempotencyKey()), req.GetUserIds(), req.GetData(),
		time.Duration(req.GetTtlSeconds())*time.Second)
}

func (f forwarder) Broadcast(ctx context.Context, req *pushv1.BroadcastRequest) (*pushv1.BroadcastResponse, error) {
	ctx, cancel := f.bound(ctx)
	defer cancel()
	resp, err := f.c.Broadcast(ctx, req.GetData())
	if err != nil {
		return nil, err
	}
	return resp, nil
}

func (f forwarder) Kick(ctx context.Context, req *pushv1.KickRequest) (*pushv1.KickResponse, error) {
	ctx, cancel := f.bound(ctx)
	defer cancel()
	resp, err := f.c.Kick(ctx, req.GetUserId(), req.GetReason())
	if err != nil {
		return nil, err
	}
	return resp, nil
}

func (f forwarder) Presence(ctx context.Context, req *pushv1.PresenceRequest) (*pushv1.PresenceResponse, error) {
	ctx, cancel := f.bound(ctx)
	defer cancel()
	return f.c.Presence(ctx, req.GetUserIds())
}

func (f forwarder) PublishBatch(ctx context.Context, req *pushv1.PublishBatchRequest) (*pushv1.PublishBatchResponse, error) {
	reqs := req.GetRequests()
	total := 0
	for _, r := range reqs {
		total += len(r.GetData())
	}
	switch {
	case len(reqs) == 0:
		return nil, status.Error(codes.InvalidArgument, "empty batch: requests is empty")
	case len(reqs) > MaxBatchSize:
		return nil, status.Errorf(codes.InvalidArgument, "batch too big: %d requests, limit %d", len(reqs), MaxBatchSize)
	case len(reqs) > 1 && total > MaxBatchBytes:
		return nil, status.Errorf(codes.InvalidArgument, "batch too big: %d bytes of payload, limit %d", total, MaxBatchBytes)
	}
	ctx, cancel := f.bound(ctx)
	defer cancel()
	// One goroutine per user keeps each user's requests in order.
	byUser := make(map[string][]int)
	var users []string
	for i, r := range reqs {
		if _, ok := byUser[r.GetUserId()]; !ok {
			users = append(users, r.GetUserId())
		}
		byUser[r.GetUserId()] = append(byUser[r.GetUserId()], i)
	}
	out := make([]*pushv1.PublishResponse, len(reqs))
	var wg sync.WaitGroup
	for _, uid := range users {
		wg.Go(func() {
			for _, i := range byUser[uid] {
				r := reqs[i]
				resp, err := f.c.Publish(keyed(ctx, r.GetIdempotencyKey()), uid, r.GetData(), time.Duration(r.GetTtlSeconds())*time.Second)
				if err != nil {
					st := status.Convert(err)
					resp = &pushv1.PublishResponse{ErrorCode: uint32(st.Code()), Error: st.Message()}
				}
				resp.RequestId = r.GetRequestId()
				out[i] = resp
			}
		})
	}
	wg.Wait()
	return &pushv1.PublishBatchResponse{Responses: out}, nil
}
