package client

import (
	"context"
	"sync"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	pushv1 "github.com/pushcluster/push/proto/push/v1"
)

// pubStream multiplexes concurrent Publish calls to one edge over one
// PublishStream: a unary call costs an HTTP/2 stream with its headers and
// trailers on both sides, which at thousands of publishes a second is most
// of an edge's CPU per message. Answers carry the request_id.
//
// mu guards send (gRPC streams take one sender at a time), pending, next
// and err.
type pubStream struct {
	mu      sync.Mutex
	stream  pushv1.Push_PublishStreamClient
	cancel  context.CancelFunc
	pending map[uint64]chan *pushv1.PublishResponse
	next    uint64
	err     error // set once the stream broke; a new one is opened next time
}

// errStreamBroke is what a call waiting on a stream that broke gets; it is
// UNAVAILABLE, so Publish retries it (on the newest ring).
var errStreamBroke = status.Error(codes.Unavailable, "publish stream to the edge ended")

func openPubStream(pc pushv1.PushClient) (*pubStream, error) {
	ctx, cancel := context.WithCancel(context.Background())
	st, err := pc.PublishStream(ctx)
	if err != nil {
		cancel()
		return nil, err
	}
	s := &pubStream{stream: st, cancel: cancel, pending: map[uint64]chan *pushv1.PublishResponse{}}
	go s.receive()
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
			ch <- resp
		}
	}
}

func (s *pubStream) fail(err error) {
	s.mu.Lock()
	if s.err == nil {
		s.err = err
	}
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

// publish sends req (its request_id is set here) and waits for its answer.
func (s *pubStream) publish(ctx context.Context, req *pushv1.PublishRequest) (*pushv1.PublishResponse, error) {
	ch := make(chan *pushv1.PublishResponse, 1)
	s.mu.Lock()
	if s.err != nil {
		s.mu.Unlock()
		return nil, errStreamBroke
	}
	s.next++
	id := s.next
	s.pending[id] = ch
	r := &pushv1.PublishRequest{UserId: req.UserId, Data: req.Data, TtlSeconds: req.TtlSeconds,
		Forwarded: req.Forwarded, RequestId: id}
	err := s.stream.Send(r)
	s.mu.Unlock()
	if err != nil {
		s.fail(err)
		return nil, errStreamBroke
	}
	select {
	case resp, ok := <-ch:
		if !ok {
			return nil, errStreamBroke
		}
		if resp.GetErrorCode() != 0 {
			return nil, status.Error(codes.Code(resp.GetErrorCode()), resp.GetError())
		}
		return resp, nil
	case <-ctx.Done():
		s.mu.Lock()
		delete(s.pending, id)
		s.mu.Unlock()
		return nil, status.FromContextError(ctx.Err()).Err()
	}
}

// publishOn sends req to the edge at addr over its stream, opening one when
// there is none (or the last one broke); an edge without PublishStream
// (codes.Unimplemented) gets unary calls from then on.
func (c *Client) publishOn(ctx context.Context, addr string, pc pushv1.PushClient, req *pushv1.PublishRequest) (*pushv1.PublishResponse, error) {
	c.mu.Lock()
	s := c.streams[addr]
	unary := c.unaryOnly[addr]
	if s == nil || s.broken() != nil {
		s = nil
	}
	c.mu.Unlock()
	if unary {
		return pc.Publish(ctx, req)
	}
	if s == nil {
		var err error
		if s, err = openPubStream(pc); err != nil {
			return pc.Publish(ctx, req)
		}
		c.mu.Lock()
		if old := c.streams[addr]; old != nil && old.broken() == nil {
			s.cancel() // lost a race: use the one already there
			s = old
		} else if c.streams != nil {
			c.streams[addr] = s
		}
		c.mu.Unlock()
	}
	resp, err := s.publish(ctx, req)
	if err == errStreamBroke && status.Code(s.broken()) == codes.Unimplemented {
		c.mu.Lock()
		c.unaryOnly[addr] = true
		c.mu.Unlock()
		return pc.Publish(ctx, req)
	}
	return resp, err
}
