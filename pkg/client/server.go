package client

import (
	"context"
	"time"

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
