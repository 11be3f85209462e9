package grpcauth

import (
	"context"
	"strings"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	pushv1 "github.com/pushcluster/push/proto/push/v1"
)

// Identity is an authenticated caller.
type Identity struct {
	// Name is the certificate's common name (else its first DNS or URI
	// name) or the token's sub.
	Name string
	// Scope is what it may call; a member may call everything.
	Scope Scope
	// Member: a cluster member (cluster CA certificate or cluster token).
	Member bool
	// Via is "mtls" or "jwt".
	Via string
	// Expires is when the credential stops being valid (the token's exp,
	// the certificate's NotAfter): a stream opened with it ends then.
	Expires time.Time
}

type ctxKey struct{}

type call struct {
	id *Identity
	s  *Server
}

// FromContext returns the caller a checked call runs for; nil on an open
// port.
func FromContext(ctx context.Context) *Identity {
	if c, ok := ctx.Value(ctxKey{}).(*call); ok {
		return c.id
	}
	return nil
}

// Limit takes n tokens of kind from the caller's bucket and returns
// RESOURCE_EXHAUSTED when there are not that many. Calls on an open port
// and calls of members are not limited. The interceptors limit unary
// calls; a streaming handler calls Limit per message.
func Limit(ctx context.Context, kind Kind, n int) error {
	c, ok := ctx.Value(ctxKey{}).(*call)
	if !ok || c.id.Member {
		return nil
	}
	return c.s.limit(c.id, kind, n)
}

func (s *Server) limit(id *Identity, kind Kind, n int) error {
	if s.limiter.allow(id.Name, kind, n) {
		return nil
	}
	s.m.limited.WithLabelValues(s.m.label(id.Name), kind.String()).Add(float64(n))
	rate, burst := s.limiter.rate[kind], s.limiter.burst[kind]
	return status.Errorf(codes.ResourceExhausted, "%s %q is over its %s limit in this process (%g a second, burst %g)",
		id.Via, id.Name, kind, rate, burst)
}

// forwardable is every request with a forwarded field.
type forwardable interface{ GetForwarded() bool }

// forwarded reports whether a request asks to be taken as forwarded: its
// own field, or, in a batch, any of its requests'.
func forwarded(req any) bool {
	if b, ok := req.(*pushv1.PublishBatchRequest); ok {
		for _, r := range b.GetRequests() {
			if r.GetForwarded() {
				return true
			}
		}
	}
	f, ok := req.(forwardable)
	return ok && f.GetForwarded()
}

var errForwarded = status.Error(codes.PermissionDenied, "forwarded=true is honoured only from cluster members")

func (s *Server) unary(ctx context.Context, req any, info *grpc.UnaryServerInfo, handler grpc.UnaryHandler) (any, error) {
	if strings.HasPrefix(info.FullMethod, openPrefix) {
		return handler(ctx, req)
	}
	id, err := s.check(ctx, info.FullMethod)
	if err != nil {
		return nil, err
	}
	method := shortMethod(info.FullMethod)
	if forwarded(req) && !id.Member {
		s.m.failures.WithLabelValues("permission").Inc()
		s.m.calls.WithLabelValues(s.m.label(id.Name), method, codes.PermissionDenied.String()).Inc()
		return nil, errForwarded
	}
	if !id.Member {
		var err error
		switch r := req.(type) {
		case *pushv1.PublishRequest:
			err = s.limit(id, Publishes, 1)
		case *pushv1.PublishBatchRequest:
			err = s.limit(id, Publishes, max(len(r.GetRequests()), 1))
		case *pushv1.PublishMultiRequest:
			err = s.limit(id, Publishes, max(len(r.GetUserIds()), 1))
		case *pushv1.BroadcastRequest:
			err = s.limit(id, Broadcasts, 1)
		}
		if err != nil {
			s.m.calls.WithLabelValues(s.m.label(id.Name), method, codes.ResourceExhausted.String()).Inc()
			return nil, err
		}
	}
	resp, err := handler(context.WithValue(ctx, ctxKey{}, &call{id, s}), req)
	s.m.calls.WithLabelValues(s.m.label(id.Name), method, status.Code(err).String()).Inc()
	return resp, err
}

func (s *Server) stream(srv any, ss grpc.ServerStream, info *grpc.StreamServerInfo, handler grpc.StreamHandler) error {
	if strings.HasPrefix(info.FullMethod, openPrefix) {
		return handler(srv, ss)
	}
	id, err := s.check(ss.Context(), info.FullMethod)
	if err != nil {
		return err
	}
	err = handler(srv, &checkedStream{ServerStream: ss, ctx: context.WithValue(ss.Context(), ctxKey{}, &call{id, s}), s: s, id: id})
	s.m.calls.WithLabelValues(s.m.label(id.Name), shortMethod(info.FullMethod), status.Code(err).String()).Inc()
	return err
}

// checkedStream refuses a forwarded message from a non-member.
type checkedStream struct {
	grpc.ServerStream
	ctx context.Context
	s   *Server
	id  *Identity
}

func (c *checkedStream) Context() context.Context { return c.ctx }

// errExpiredOnStream ends a stream whose credential expired after it
// opened. UNAVAILABLE, so that a client opens a new stream, with the fresh
// credential it should have by then, and retries (the SDK does, with the
// same idempotency key): the message that met the expiry is not applied.
var errExpiredOnStream = status.Error(codes.Unavailable, "the stream's credential expired: open a new stream with a fresh one")

func (c *checkedStream) RecvMsg(m any) error {
	if err := c.ServerStream.RecvMsg(m); err != nil {
		return err
	}
	if !time.Now().Before(c.id.Expires) {
		return errExpiredOnStream
	}
	if forwarded(m) && !c.id.Member {
		c.s.m.failures.WithLabelValues("permission").Inc()
		return errForwarded
	}
	return nil
}

func shortMethod(full string) string {
	if i := strings.LastIndexByte(full, '/'); i >= 0 {
		return full[i+1:]
	}
	return full
}

// check authenticates the caller and checks the method's scope.
func (s *Server) check(ctx context.Context, method string) (*Identity, error) {
	id, err := s.identify(ctx)
	if err != nil {
		s.m.failures.WithLabelValues("unauthenticated").Inc()
		s.log.Debug("gRPC call refused", "method", method, "err", err)
		return nil, status.Error(codes.Unauthenticated, err.Error())
	}
	need, known := methodScopes[method]
	if known && !id.Member && id.Scope&need == 0 {
		s.m.failures.WithLabelValues("permission").Inc()
		s.m.calls.WithLabelValues(s.m.label(id.Name), shortMethod(method), codes.PermissionDenied.String()).Inc()
		if need == ScopeCluster {
			return nil, status.Errorf(codes.PermissionDenied, "%s is for cluster members only; %s %q is not one", shortMethod(method), id.Via, id.Name)
		}
		return nil, status.Errorf(codes.PermissionDenied, "%s %q may not call %s: it needs scope %q and has %q", id.Via, id.Name, shortMethod(method), need, id.Scope)
	}
	return id, nil
}
