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
// stream: a unary call costs an HTTP/2 stream with its headers and
// trailers on both sides, which at thousands of publishes a second is most
// of an edge's CPU per message. Over PublishBatchStream (batch set) the
// calls waiting to be sent go as one batch per message, which the edge
// applies in one pass; over PublishStream (an edge without
// PublishBatchStream) one request per message.
//
// An edge serves the requests of a stream concurrently, so answers come
// back in any order; each carries its request_id, and receive hands it to
// the call waiting for that id, so a slow request holds nobody else. Calls
// never wait for one another to send either: they queue their request for
// one sender goroutine (gRPC streams take one sender at a time) and wait,
// for their answer as for their turn, only until their own context ends. A
// stream whose sender has been blocked for stuckAfter (the edge stopped
// reading) is dropped, and the next call opens a new one.
//
// The sender takes the first request queued, then gathers more until the
// batch holds maxItems requests or maxBytes of payload, or linger has
// passed since the previous batch left; it then sends what it holds. A
// request after a quiet spell (the previous batch left over linger ago)
// therefore leaves at once with what else is queued, and under load
// batches leave at most once per linger. With linger 0 it always sends
// what is queued at once: requests that arrive while a send is in
// progress form the next batch.
type pubStream struct {
	stream  streamTransport
	batch   bool // over PublishBatchStream
	cfg     batchConfig
	cancel  context.CancelFunc
	sendq   chan streamReq
	dead    chan struct{} // closed once the stream broke
	sending atomic.Int64  // when the Send in progress started (UnixNano), 0 when none

	mu      sync.Mutex // guards the fields below
	pending map[uint64]chan *pushv1.PublishResponse
	next    uint64
	err     error // set once the stream broke; a new one is opened next time
}

// batchConfig is how the SDK forms batches (WithBatchSize,
// WithBatchLinger).
type batchConfig struct {
	maxItems int
	maxBytes int
	linger   time.Duration
}

type streamReq struct {
	ctx context.Context // the caller's: a request whose caller left is not sent
	req *pushv1.PublishRequest
}

// streamTransport is the one of PublishBatchStream and PublishStream a
// pubStream speaks.
type streamTransport interface {
	send(reqs []*pushv1.PublishRequest) error
	recv() ([]*pushv1.PublishResponse, error)
}

type batchTransport struct {
	st  pushv1.Push_PublishBatchStreamClient
	msg pushv1.PublishBatchRequest // reused: Send has encoded it when it returns
}

func (t *batchTransport) send(reqs []*pushv1.PublishRequest) error {
	t.msg.Requests = reqs
	err := t.st.Send(&t.msg)
	t.msg.Requests = nil
	return err
}

func (t *batchTransport) recv() ([]*pushv1.PublishResponse, error) {
	m, err := t.st.Recv()
	if err != nil {
		return nil, err
	}
	return m.GetResponses(), nil
}

type singleTransport struct {
	st pushv1.Push_PublishStreamClient
}

func (t singleTransport) send(reqs []*pushv1.PublishRequest) error {
	for _, r := range reqs {
		if err := t.st.Send(r); err != nil {
			return err
		}
	}
	return nil
}

func (t singleTransport) recv() ([]*pushv1.PublishResponse, error) {
	m, err := t.st.Recv()
	if err != nil {
		return nil, err
	}
	return []*pushv1.PublishResponse{m}, nil
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

// openPubStream opens a PublishBatchStream (batch) or a PublishStream.
func openPubStream(pc pushv1.PushClient, batch bool, cfg batchConfig) (*pubStream, error) {
	ctx, cancel := context.WithCancel(context.Background())
	var tr streamTransport
	if batch {
		st, err := pc.PublishBatchStream(ctx)
		if err != nil {
			cancel()
			return nil, err
		}
		tr = &batchTransport{st: st}
	} else {
		st, err := pc.PublishStream(ctx)
		if err != nil {
			cancel()
			return nil, err
		}
		tr = singleTransport{st: st}
	}
	s := &pubStream{stream: tr, batch: batch, cfg: cfg, cancel: cancel, sendq: make(chan streamReq, 4*cfg.maxItems),
		dead: make(chan struct{}), pending: map[uint64]chan *pushv1.PublishResponse{}}
	go s.receive()
	go s.send()
	return s, nil
}

func (s *pubStream) receive() {
	for {
		resps, err := s.stream.recv()
		if err != nil {
			s.fail(err)
			return
		}
		for _, resp := range resps {
			s.mu.Lock()
			ch := s.pending[resp.GetRequestId()]
			delete(s.pending, resp.GetRequestId())
			s.mu.Unlock()
			if ch != nil {
				ch <- resp // buffered: never blocks
			}
		}
	}
}

// send forms batches from sendq and sends them until the stream dies.
func (s *pubStream) send() {
	var (
		batch []*pushv1.PublishRequest
		bytes int
		carry *pushv1.PublishRequest // did not fit the last batch
		timer *time.Timer
		last  time.Time // when the previous batch left
	)
	add := func(r streamReq) bool { // false: it does not fit, carry it
		if r.ctx.Err() != nil {
			return true // its caller left and forgot its id
		}
		if len(batch) > 0 && bytes+len(r.req.Data) > s.cfg.maxBytes {
			carry = r.req
			return false
		}
		batch = append(batch, r.req)
		bytes += len(r.req.Data)
		return true
	}
	full := func() bool { return carry != nil || len(batch) >= s.cfg.maxItems || bytes >= s.cfg.maxBytes }
	for {
		batch, bytes = batch[:0], 0
		if carry != nil {
			batch, bytes, carry = append(batch, carry), len(carry.Data), nil
		} else {
			select {
			case r := <-s.sendq:
				add(r)
			case <-s.dead:
				return
			}
		}
		// The linger counts from the previous batch's departure: a request
		// after a quiet spell leaves at once, and under load batches leave
		// at most one per linger.
		if wait := s.cfg.linger - time.Since(last); wait > 0 && !full() {
			if timer == nil {
				timer = time.NewTimer(wait)
			} else {
				timer.Reset(wait)
			}
		gather:
			for !full() {
				select {
				case r := <-s.sendq:
					add(r)
				case <-timer.C:
					break gather
				case <-s.dead:
					return
				}
			}
			timer.Stop()
		} else {
		drain:
			for !full() {
				select {
				case r := <-s.sendq:
					add(r)
				default:
					break drain
				}
			}
		}
		if len(batch) == 0 {
			continue
		}
		last = time.Now()
		s.sending.Store(last.UnixNano())
		err := s.stream.send(batch)
		s.sending.Store(0)
		clear(batch) // the requests belong to their callers again
		if errors.Is(err, io.EOF) {
			return // the stream ended: receive learns why and fails it
		}
		if err != nil {
			s.fail(err)
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
// there is none (or the last one broke or is stuck): a PublishBatchStream,
// or a PublishStream for an edge without it (codes.Unimplemented), or
// unary calls for an edge without either (and for a payload over
// MaxBatchBytes, alone); a stream the edge ended as
// UNAUTHENTICATED or PERMISSION_DENIED fails the call with that status.
// It returns the owner a not-owner answer named (0: none).
func (c *Client) publishOn(ctx context.Context, addr string, pc pushv1.PushClient, req *pushv1.PublishRequest) (*pushv1.PublishResponse, uint32, error) {
	c.mu.Lock()
	s := c.streams[addr]
	unary := c.unaryOnly[addr]
	batch := !c.noBatch[addr]
	c.mu.Unlock()
	// A payload over what a batch may carry goes alone as a unary call: if
	// the edge's gRPC messages cannot hold it, its transport refuses that
	// call (RESOURCE_EXHAUSTED) instead of ending the stream that carries
	// everyone else's.
	if unary || len(req.Data) > c.batch.maxBytes {
		return publishUnary(ctx, pc, req)
	}
	if s == nil || !s.usable() || s.batch != batch {
		var err error
		if s, err = openPubStream(pc, batch, c.batch); err != nil {
			return publishUnary(ctx, pc, req)
		}
		c.mu.Lock()
		if old := c.streams[addr]; old != nil && old.broken() == nil && !old.stuck() && old.batch == batch {
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
				if s.batch {
					c.noBatch[addr] = true
				} else {
					c.unaryOnly[addr] = true
				}
			}
			c.mu.Unlock()
			if s.batch {
				return c.publishOn(ctx, addr, pc, req)
			}
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
