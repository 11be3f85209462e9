package pushctl

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"io"
	"math"
	"net/http"
	"strconv"
	"strings"
	"sync"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials/insecure"
	healthpb "google.golang.org/grpc/health/grpc_health_v1"
	"google.golang.org/grpc/status"

	"github.com/pushcluster/push/pkg/ring"
)

// connectionsMetric is the edge gauge of open WebSocket connections.
const connectionsMetric = "push_edge_connections"

// metricsFlag maps member ids to their edges' admin /metrics URLs:
// "1=http://h:9100/metrics,2=…", repeatable.
type metricsFlag map[uint32]string

func (f metricsFlag) String() string { return "" }

func (f metricsFlag) Set(v string) error {
	for _, kv := range strings.Split(v, ",") {
		ids, url, ok := strings.Cut(kv, "=")
		if !ok || url == "" {
			return fmt.Errorf("%q: want ID=URL", kv)
		}
		id, err := parseID(ids)
		if err != nil {
			return err
		}
		if _, dup := f[id]; dup {
			return fmt.Errorf("member %d given twice", id)
		}
		f[id] = url
	}
	return nil
}

// probeResult is what "ring show" prints in the LIVE and USERS columns.
type probeResult struct{ live, users string }

// probe checks every member at once: gRPC health at its grpc address
// within liveTimeout (skipped when 0), and push_edge_connections from
// metrics[id] within metricsTimeout. Failed metrics reads are reported on
// stderr. Results are in the order of members.
func (a *App) probe(members []ring.Member, liveTimeout time.Duration, metrics map[uint32]string, metricsTimeout time.Duration) []probeResult {
	res := make([]probeResult, len(members))
	var wg sync.WaitGroup
	sem := make(chan struct{}, 64) // ring.MaxMembers is 1024: bound the sockets open at once
	var errMu sync.Mutex
	var errs []string
	for i, m := range members {
		res[i] = probeResult{live: "-", users: "-"}
		url, hasMetrics := metrics[m.ID]
		if liveTimeout == 0 && !hasMetrics {
			continue
		}
		wg.Go(func() {
			sem <- struct{}{}
			defer func() { <-sem }()
			if liveTimeout > 0 {
				ctx, cancel := context.WithTimeout(context.Background(), liveTimeout)
				res[i].live = a.healthCheck(ctx, m.GRPC)
				cancel()
			}
			if hasMetrics {
				ctx, cancel := context.WithTimeout(context.Background(), metricsTimeout)
				n, err := edgeConnections(ctx, url)
				cancel()
				if err != nil {
					res[i].users = "?"
					errMu.Lock()
					errs = append(errs, fmt.Sprintf("member %d: %v", m.ID, err))
					errMu.Unlock()
					return
				}
				res[i].users = strconv.FormatInt(n, 10)
			}
		})
	}
	wg.Wait()
	for _, e := range errs {
		fmt.Fprintf(a.Stderr, "pushctl ring show: %s\n", e)
	}
	return res
}

// healthCheck asks the gRPC health service at addr about the whole
// server: "yes" when SERVING, "no" when it answers anything else (or has
// no health service), "unreachable" when no answer came in time.
func (a *App) healthCheck(ctx context.Context, addr string) string {
	err := a.checkHealth(ctx, addr)
	switch {
	case err == nil:
		return "yes"
	case errors.As(err, new(notServingError)), status.Code(err) == codes.Unimplemented, status.Code(err) == codes.NotFound:
		return "no"
	}
	return "unreachable"
}

// checkHealth asks the standard gRPC health service (grpc.health.v1) at
// addr about the whole server (service ""), on a connection of its own:
// nil when it answers SERVING, a notServingError when it answers anything
// else, the call's gRPC status otherwise (Unavailable when nothing listens,
// DeadlineExceeded when no answer came before ctx ended).
func (a *App) checkHealth(ctx context.Context, addr string) error {
	opts, err := a.dialOptions()
	if err != nil {
		return err
	}
	return checkHealth(ctx, addr, opts)
}

// checkHealth is App.checkHealth with the given dial options (plaintext
// when none).
func checkHealth(ctx context.Context, addr string, opts []grpc.DialOption) error {
	if len(opts) == 0 {
		opts = []grpc.DialOption{grpc.WithTransportCredentials(insecure.NewCredentials())}
	}
	cc, err := grpc.NewClient(addr, opts...)
	if err != nil {
		return err
	}
	defer cc.Close()
	resp, err := healthpb.NewHealthClient(cc).Check(ctx, &healthpb.HealthCheckRequest{})
	if err != nil {
		return err
	}
	if resp.Status != healthpb.HealthCheckResponse_SERVING {
		return notServingError{resp.Status}
	}
	return nil
}

// notServingError is a health answer other than SERVING.
type notServingError struct {
	status healthpb.HealthCheckResponse_ServingStatus
}

func (e notServingError) Error() string { return "it answers " + e.status.String() }

// maxMetricsBytes bounds what is read of a /metrics answer.
const maxMetricsBytes = 16 << 20

// edgeConnections reads the push_edge_connections gauge from an edge's
// admin /metrics (Prometheus text format).
func edgeConnections(ctx context.Context, url string) (int64, error) {
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, url, nil)
	if err != nil {
		return 0, fmt.Errorf("metrics %s: %w", url, err)
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		return 0, fmt.Errorf("metrics: %w", err)
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		return 0, fmt.Errorf("metrics %s: %s", url, resp.Status)
	}
	n, err := parseConnections(io.LimitReader(resp.Body, maxMetricsBytes))
	if err != nil {
		return 0, fmt.Errorf("metrics %s: %w", url, err)
	}
	return n, nil
}

// parseConnections sums the push_edge_connections samples of a Prometheus
// text exposition (an edge has one, without labels).
func parseConnections(r io.Reader) (int64, error) {
	sc := bufio.NewScanner(r)
	sc.Buffer(make([]byte, 0, 64<<10), 1<<20)
	found, sum := false, 0.0
	for sc.Scan() {
		rest, ok := strings.CutPrefix(sc.Text(), connectionsMetric)
		if !ok || rest == "" {
			continue
		}
		switch rest[0] {
		case '{':
			end := strings.IndexByte(rest, '}')
			if end < 0 {
				return 0, fmt.Errorf("malformed %s line", connectionsMetric)
			}
			rest = rest[end+1:]
		case ' ', '\t':
		default:
			continue // another metric with this prefix
		}
		fields := strings.Fields(rest)
		if len(fields) == 0 {
			return 0, fmt.Errorf("malformed %s line", connectionsMetric)
		}
		v, err := strconv.ParseFloat(fields[0], 64)
		if err != nil || v < 0 || math.IsInf(v, 0) || math.IsNaN(v) {
			return 0, fmt.Errorf("%s value %q", connectionsMetric, fields[0])
		}
		found, sum = true, sum+v
	}
	if err := sc.Err(); err != nil {
		return 0, err
	}
	if !found {
		return 0, errors.New("no " + connectionsMetric + " in the answer: is this an edge's admin /metrics?")
	}
	return int64(sum), nil
}
