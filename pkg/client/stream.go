package client

import (
	"context"
	"errors"
	"io"
	"sync"
	"sync/atomic"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/metadata"
	"google.golang.org/grpc/status"

	pushv1 "github.com/pushcluster/push/proto/push/v1"
)

// pubStream multiplexes concurrent Publish calls to one edge over one
// PublishStream: a unary call costs an HTTP/2 stream with its headers and
// trailers on both sides, which at thousands of publishes a second is most
// of an edge's CPU per message.
//
// An edge serves the requests of a stream concurrently, so answers come
// back in any order; each carries its request_id, and receive hands it to
// the call waiting for that id, so a slow request holds nobody else. Calls
// never wait for one another to send either: they queue their request for
// one sender goroutine (gRPC streams take one sender at a time) and wait,
// for their answer as for their turn, only until their own context ends. A
// stream whose sender has been blocked for stuckAfter (the edge stopped
// reading) is dropped, and the next call opens a new one.
type pubStream struct {
	stream  pushv1.Push_PublishStreamClient
	cancel  context.CancelFunc
	sendq   chan streamReq
	dead    chan struct{} // closed once the stream broke
	sending atomic.Int64  // when the Send in progress started (UnixNano), 0 when none

	mu      sync.Mutex // guards the fields below
	pending map[uint64]chan *pushv1.PublishResponse
	next    uint64
	err     error // set once the stream broke; a new one is opened next time
}

type streamReq struct {
	ctx context.Context // the caller's: a request whose caller left is not sent
	req *pushv1.PublishRequest
}

// stuckAfter is how long one Send may block before the stream counts as
// stuck, in nanoseconds (a variable for tests).
var stuckAfter atomic.Int64

func init() { stuckAfter.Store(int64(time.Second)) }

// errStreamBroke is what a call waiting on a stream that broke gets; it is
// UNAVAILABLE, so Publish retries it (with the same idempotency key, so a
// request the edge had taken is not applied twice).
var errStreamBroke = status.Error(codes.Unavailable, "publish stream to the edge ended")

// errStreamStuck ends a stream whose sender is blocked.
var errStreamStuck = status.Error(codes.Unavailable, "publish stream to the edge stuck: the edge stopped reading")

func openPubStream(pc pushv1.PushClient) (*pubStream, error) {
	ctx, cancel := context.WithCancel(context.Background())
	st, err := pc.PublishStream(ctx)
	if err != nil {
		cancel()
		return nil, err
	}
	s := &pubStream{stream: st, cancel: cancel, sendq: make(chan streamReq, 256), dead: make(chan struct{}),
		pending: map[uint64]chan *pushv1.PublishResponse{}}
	go s.receive()
	go s.send()
	return s, nil
}

func (s *pubStream) receive() {
	for {
		resp, err := s.stream.Recv()
		if err != nil {
			s.fail(err)
			return
		}
		s.mu.Lock()
		ch := s.pending[resp.GetRequestId()]
		delete(s.pending, resp.GetRequestId())
		s.mu.Unlock()
		if ch != nil {
			ch <- resp // buffered: never blocks
		}
	}
}

func (s *pubStream) send() {
	for {
		select {
		case r := <-s.sendq:
			if r.ctx.Err() != nil {
				continue // its caller left and forgot its id
			}
			s.sending.Store(time.Now().UnixNano())
			err := s.stream.Send(r.req)
			s.sending.Store(0)
			if errors.Is(err, io.EOF) {
				return // the stream ended: receive learns why and fails it
			}
			if err != nil {
				s.fail(err)
				return
			}
		case <-s.dead:
			return
		}
	}
}

// fail ends the stream: every call waiting on it gets errStreamBroke.
func (s *pubStream) fail(err error) {
	s.mu.Lock()
	if s.err != nil {
		s.mu.Unlock()
		return
	}
	s.err = err
	close(s.dead)
	pending := s.pending
	s.pending = map[uint64]chan *pushv1.PublishResponse{}
	s.mu.Unlock()
	for _, ch := range pending {
		close(ch) // the waiter sees errStreamBroke
	}
	s.cancel()
}

// broken reports the error that ended the stream, if it did.
func (s *pubStream) broken() error {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.err
}

// stuck reports whether a Send has been blocked for stuckAfter.
func (s *pubStream) stuck() bool {
	t := s.sending.Load()
	return t != 0 && time.Since(time.Unix(0, t)) > time.Duration(stuckAfter.Load())
}

// usable reports whether new calls may use the stream, and ends it if it
// is stuck.
func (s *pubStream) usable() bool {
	if s.stuck() {
		s.fail(errStreamStuck)
	}
	return s.broken() == nil
}

func (s *pubStream) forget(id uint64) {
	s.mu.Lock()
	delete(s.pending, id)
	s.mu.Unlock()
}

// publish sends req with a request_id of the stream's own and waits for
// its answer, until ctx ends. It returns the owner a not-owner answer
// named (0: none).
func (s *pubStream) publish(ctx context.Context, req *pushv1.PublishRequest) (*pushv1.PublishResponse, uint32, error) {
	ch := make(chan *pushv1.PublishResponse, 1)
	s.mu.Lock()
	if s.err != nil {
		s.mu.Unlock()
		return nil, 0, errStreamBroke
	}
	s.next++
	id := s.next
	s.pending[id] = ch
	s.mu.Unlock()
	r := &pushv1.PublishRequest{UserId: req.UserId, Data: req.Data, TtlSeconds: req.TtlSeconds,
		Forwarded: req.Forwarded, RequestId: id, IdempotencyKey: req.IdempotencyKey}
	left := func() (*pushv1.PublishResponse, uint32, error) {
		s.forget(id)
		s.usable() // a stuck stream is dropped for the calls after this one
		return nil, 0, status.FromContextError(ctx.Err()).Err()
	}
	select {
	case s.sendq <- streamReq{ctx: ctx, req: r}:
	case <-s.dead:
		return nil, 0, errStreamBroke
	case <-ctx.Done():
		return left()
	}
	select {
	case resp, ok := <-ch:
		if !ok {
			return nil, 0, errStreamBroke
		}
		if code := codes.Code(resp.GetErrorCode()); code != codes.OK {
			var named uint32
			if code == codes.Unavailable {
				named = resp.GetOwnerId()
			}
			return nil, named, status.Error(code, resp.GetError())
		}
		resp.RequestId = 0 // the stream's, not the caller's
		return resp, 0, nil
	case <-ctx.Done():
		return left()
	}
}

// publishOn sends req to the edge at addr over its stream, opening one when
// there is none (or the last one broke or is stuck); an edge without
// PublishStream (codes.Unimplemented) gets unary calls from then on; a
// stream the edge ended as UNAUTHENTICATED or PERMISSION_DENIED fails the
// call with that status. It returns the owner a not-owner answer named
// (0: none).
func (c *Client) publishOn(ctx context.Context, addr string, pc pushv1.PushClient, req *pushv1.PublishRequest) (*pushv1.PublishResponse, uint32, error) {
	c.mu.Lock()
	s := c.streams[addr]
	unary := c.unaryOnly[addr]
	c.mu.Unlock()
	if unary {
		return publishUnary(ctx, pc, req)
	}
	if s == nil || !s.usable() {
		var err error
		if s, err = openPubStream(pc); err != nil {
			return publishUnary(ctx, pc, req)
		}
		c.mu.Lock()
		if old := c.streams[addr]; old != nil && old.broken() == nil && !old.stuck() {
			s.cancel() // lost a race: use the one already there
			s = old
		} else if c.streams != nil {
			c.streams[addr] = s
		}
		c.mu.Unlock()
	}
	resp, named, err := s.publish(ctx, req)
	if err == errStreamBroke {
		switch why := s.broken(); status.Code(why) {
		case codes.Unimplemented:
			c.mu.Lock()
			if c.unaryOnly != nil {
				c.unaryOnly[addr] = true
			}
			c.mu.Unlock()
			return publishUnary(ctx, pc, req)
		case codes.Unauthenticated, codes.PermissionDenied:
			// The edge refused the stream's credential or scope (or a
			// forwarded request): another attempt would be refused the
			// same way, so the caller learns why at once.
			return nil, 0, why
		}
	}
	return resp, named, err
}

// publishUnary is one unary Publish; a not-owner answer names the owner in
// the trailer.
func publishUnary(ctx context.Context, pc pushv1.PushClient, req *pushv1.PublishRequest) (*pushv1.PublishResponse, uint32, error) {
	var md metadata.MD
	resp, err := pc.Publish(ctx, req, grpc.Trailer(&md))
	if err != nil {
		var named uint32
		if status.Code(err) == codes.Unavailable {
			named = trailerOwner(md)
		}
		return nil, named, err
	}
	return resp, 0, nil
}
