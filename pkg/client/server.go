package client

import (
	"context"
	"time"

	pushv1 "github.com/pushcluster/push/proto/push/v1"
)

// Server returns a push.v1.Push server that forwards every call through c:
// the router serves it for backends that do not embed the SDK. Requests
// with forwarded=true are forwarded all the same, since the router is not
// an edge and owns nobody. Errors keep their gRPC codes; a Broadcast that
// some edges missed fails as a whole (gRPC carries no answer with an
// error). Retries stop a little before the caller's deadline, so that the
// caller learns why its call failed instead of seeing DEADLINE_EXCEEDED.
func (c *Client) Server() pushv1.PushServer { return forwarder{c: c} }

type forwarder struct {
	pushv1.UnimplementedPushServer
	c *Client
}

// maxAnswerMargin caps the time kept back from the caller's deadline to
// carry the answer back to it.
const maxAnswerMargin = 100 * time.Millisecond

// answerable shortens ctx's deadline by a tenth of what is left, at most
// maxAnswerMargin.
func answerable(ctx context.Context) (context.Context, context.CancelFunc) {
	deadline, ok := ctx.Deadline()
	if !ok {
		return context.WithCancel(ctx)
	}
	return context.WithDeadline(ctx, deadline.Add(-min(time.Until(deadline)/10, maxAnswerMargin)))
}

func (f forwarder) Publish(ctx context.Context, req *pushv1.PublishRequest) (*pushv1.PublishResponse, error) {
	ctx, cancel := answerable(ctx)
	defer cancel()
	return f.c.Publish(ctx, req.GetUserId(), req.GetData(), time.Duration(req.GetTtlSeconds())*time.Second)
}

func (f forwarder) PublishMulti(ctx context.Context, req *pushv1.PublishMultiRequest) (*pushv1.PublishMultiResponse, error) {
	ctx, cancel := answerable(ctx)
	defer cancel()
	return f.c.PublishMulti(ctx, req.GetUserIds(), req.GetData(), time.Duration(req.GetTtlSeconds())*time.Second)
}

func (f forwarder) Broadcast(ctx context.Context, req *pushv1.BroadcastRequest) (*pushv1.BroadcastResponse, error) {
	ctx, cancel := answerable(ctx)
	defer cancel()
	resp, err := f.c.Broadcast(ctx, req.GetData())
	if err != nil {
		return nil, err
	}
	return resp, nil
}

func (f forwarder) Kick(ctx context.Context, req *pushv1.KickRequest) (*pushv1.KickResponse, error) {
	ctx, cancel := answerable(ctx)
	defer cancel()
	return f.c.Kick(ctx, req.GetUserId(), req.GetReason())
}

func (f forwarder) Presence(ctx context.Context, req *pushv1.PresenceRequest) (*pushv1.PresenceResponse, error) {
	ctx, cancel := answerable(ctx)
	defer cancel()
	return f.c.Presence(ctx, req.GetUserIds())
}
