package faults

import (
	"context"
	"fmt"
	"math/rand/v2"
	"sync"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/grpc/resolver"
	"google.golang.org/grpc/resolver/manual"
	"google.golang.org/grpc/status"

	"github.com/pushcluster/push/pkg/client"
	"github.com/pushcluster/push/pkg/store"
	pushv1 "github.com/pushcluster/push/proto/push/v1"
)

// Publish is the record of one publish.
type Publish struct {
	P, N    int64 // publisher id (1: router forwarder, 2: SDK) and its counter
	User    int   // index of the user
	Sent    time.Time
	Done    time.Time // when the answer (ack or error) came
	Acked   bool      // answered DELIVERED, STORED or FORWARDED without error
	Outcome string    // outcome name, or the gRPC code of the error
	Err     string
}

// Latency is Done - Sent.
func (p *Publish) Latency() time.Duration { return p.Done.Sub(p.Sent) }

// publishFunc sends one payload to uid.
type publishFunc func(ctx context.Context, uid string, data []byte) (*pushv1.PublishResponse, error)

// Publishers are the two publishers of a scenario: 1 through the routers'
// gRPC forwarder (round robin over the routers, as behind a load balancer),
// 2 through the Go SDK on the ring store.
type Publishers struct {
	users   []string
	rate    float64 // per publisher
	timeout time.Duration

	conn *grpc.ClientConn
	sdk  *client.Client
	st   store.Store

	mu   sync.Mutex
	recs []*Publish

	cancel context.CancelFunc
	wg     sync.WaitGroup
}

// NewPublishers dials the routers' forwarders and starts the SDK on the
// store. total is the combined rate in messages per second.
func NewPublishers(users []string, routerGRPCs []string, storeURL string, total float64) (*Publishers, error) {
	ps := &Publishers{users: users, rate: total / 2, timeout: time.Second}
	r := manual.NewBuilderWithScheme("faults")
	var addrs []resolver.Address
	for _, a := range routerGRPCs {
		addrs = append(addrs, resolver.Address{Addr: a})
	}
	r.InitialState(resolver.State{Addresses: addrs})
	conn, err := grpc.NewClient(r.Scheme()+":///routers", grpc.WithResolvers(r),
		grpc.WithTransportCredentials(insecure.NewCredentials()),
		grpc.WithDefaultServiceConfig(`{"loadBalancingConfig":[{"round_robin":{}}]}`))
	if err != nil {
		return nil, err
	}
	ps.conn = conn
	st, err := store.Open(storeURL, quietLogger())
	if err != nil {
		conn.Close()
		return nil, err
	}
	ps.st = st
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	sdk, err := client.New(ctx, st, client.WithLogger(quietLogger()))
	if err != nil {
		conn.Close()
		st.Close()
		return nil, fmt.Errorf("SDK: %w", err)
	}
	ps.sdk = sdk
	return ps, nil
}

// Start begins publishing at the configured rate until Stop.
func (ps *Publishers) Start() {
	ctx, cancel := context.WithCancel(context.Background())
	ps.cancel = cancel
	fwd := pushv1.NewPushClient(ps.conn)
	viaRouter := func(ctx context.Context, uid string, data []byte) (*pushv1.PublishResponse, error) {
		return fwd.Publish(ctx, &pushv1.PublishRequest{UserId: uid, Data: data})
	}
	viaSDK := func(ctx context.Context, uid string, data []byte) (*pushv1.PublishResponse, error) {
		return ps.sdk.Publish(ctx, uid, data, 0)
	}
	for i, f := range []publishFunc{viaRouter, viaSDK} {
		ps.wg.Add(1)
		go func() {
			defer ps.wg.Done()
			ps.loop(ctx, int64(i+1), f)
		}()
	}
}

// loop publishes at ps.rate on a fixed schedule; each publish runs in its
// own goroutine with its own 1 s deadline, at most 2 s worth in flight.
func (ps *Publishers) loop(ctx context.Context, id int64, f publishFunc) {
	period := time.Duration(float64(time.Second) / ps.rate)
	maxInFlight := int(2*ps.rate) + 16
	sem := make(chan struct{}, maxInFlight)
	var inflight sync.WaitGroup
	defer inflight.Wait()
	start := time.Now()
	rnd := rand.New(rand.NewPCG(uint64(id), uint64(start.UnixNano())))
	for n := int64(1); ; n++ {
		next := start.Add(time.Duration(n-1) * period)
		if d := time.Until(next); d > 0 {
			sleepCtx(ctx, d)
		}
		if ctx.Err() != nil {
			return
		}
		select {
		case sem <- struct{}{}:
		default:
			// Never happens with a 1 s deadline; counted as a failure if it does.
			ps.record(&Publish{P: id, N: n, User: -1, Sent: time.Now(), Done: time.Now(), Outcome: "NOT_SENT", Err: "too many in flight"})
			continue
		}
		ui := rnd.IntN(len(ps.users))
		rec := &Publish{P: id, N: n, User: ui}
		ps.record(rec)
		inflight.Add(1)
		go func() {
			defer inflight.Done()
			defer func() { <-sem }()
			data := fmt.Appendf(nil, `{"p":%d,"n":%d}`, id, n)
			pctx, cancel := context.WithTimeout(context.Background(), ps.timeout)
			defer cancel()
			sent := time.Now()
			resp, err := f(pctx, ps.users[ui], data)
			done := time.Now()
			ps.mu.Lock()
			defer ps.mu.Unlock()
			rec.Sent, rec.Done = sent, done
			switch {
			case err != nil:
				rec.Outcome, rec.Err = status.Code(err).String(), err.Error()
			default:
				rec.Outcome = resp.GetOutcome().String()
				switch resp.GetOutcome() {
				case pushv1.Outcome_OUTCOME_DELIVERED, pushv1.Outcome_OUTCOME_STORED, pushv1.Outcome_OUTCOME_FORWARDED:
					rec.Acked = true
				default:
					rec.Err = resp.GetReason()
				}
			}
		}()
	}
}

func (ps *Publishers) record(p *Publish) {
	ps.mu.Lock()
	ps.recs = append(ps.recs, p)
	ps.mu.Unlock()
}

// Stop ends publishing and waits for the publishes in flight.
func (ps *Publishers) Stop() {
	if ps.cancel != nil {
		ps.cancel()
	}
	ps.wg.Wait()
}

// Records returns a copy of every publish record so far (in flight ones
// have a zero Done).
func (ps *Publishers) Records() []Publish {
	ps.mu.Lock()
	defer ps.mu.Unlock()
	out := make([]Publish, len(ps.recs))
	for i, r := range ps.recs {
		out[i] = *r
	}
	return out
}

// Close releases the connections (after Stop).
func (ps *Publishers) Close() {
	ps.Stop()
	ps.sdk.Close()
	ps.st.Close()
	ps.conn.Close()
}
