package proctest

import (
	"context"
	"fmt"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/pushcluster/push/pkg/ring"
	"github.com/pushcluster/push/pkg/store"
)

// Secret is the HS256 secret StartCluster's edges accept.
const Secret = "proctest-secret-proctest-secret-proctest-secret"

// Edge is one edge process of a Cluster.
type Edge struct {
	ID              uint32
	WS, GRPC, Admin string
	Proc            *Proc
}

// Cluster is a ring in a file store, edge processes and a router process
// on free loopback ports.
type Cluster struct {
	Bin                               string // where the binaries are (Build)
	Ring                              string // the store URL
	Env                               []string
	Edges                             []*Edge
	Router                            *Proc
	RouterWS, RouterGRPC, RouterAdmin string
}

// StartCluster builds edge, router and pushctl, writes a ring of n edges
// to a file store in a temporary directory, starts the edges and a router
// and waits until all are ready. Env holds PUSH_JWT_SECRET and PUSH_RING
// for pushctl.
func StartCluster(t testing.TB, n int) *Cluster {
	t.Helper()
	c := &Cluster{Bin: Build(t, "edge", "router", "pushctl"), Ring: "file:" + filepath.Join(t.TempDir(), "ring.json")}
	c.Env = []string{"PUSH_JWT_SECRET=" + Secret, "PUSH_RING=" + c.Ring}
	doc := &ring.Document{Version: 1, Algorithm: ring.AlgorithmBounded}
	for i := 1; i <= n; i++ {
		e := &Edge{ID: uint32(i), WS: Addr(t), GRPC: Addr(t), Admin: Addr(t)}
		c.Edges = append(c.Edges, e)
		doc.Members = append(doc.Members, ring.Member{ID: e.ID, Name: fmt.Sprintf("edge-%d", i), WS: e.WS, GRPC: e.GRPC, Weight: 1, State: ring.StateActive})
	}
	st, err := store.Open(c.Ring, nil)
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	err = st.CompareAndSwap(ctx, 0, doc, false)
	cancel()
	st.Close()
	if err != nil {
		t.Fatal(err)
	}
	dir := t.TempDir()
	for _, e := range c.Edges {
		e.Proc = Start(t, dir, c.Env, c.Bin+"/edge", "--id", fmt.Sprint(e.ID), "--listen", e.WS, "--grpc", e.GRPC, "--admin", e.Admin,
			"--ring", c.Ring, "--drain-period", "1s", "--migrate-rate", "1000", "--log-format", "text")
	}
	for _, e := range c.Edges {
		e.Proc.WaitFor(t, 60*time.Second, "edge ready", func() bool { return Ready("http://" + e.Admin + "/readyz") })
	}
	c.RouterWS, c.RouterGRPC, c.RouterAdmin = Addr(t), Addr(t), Addr(t)
	c.Router = Start(t, dir, c.Env, c.Bin+"/router", "--listen", c.RouterWS, "--grpc", c.RouterGRPC, "--admin", c.RouterAdmin,
		"--ring", c.Ring, "--drain-period", "1s", "--log-format", "text")
	c.Router.WaitFor(t, 60*time.Second, "router ready", func() bool { return Ready("http://" + c.RouterAdmin + "/readyz") })
	return c
}

// Pushctl runs pushctl with args (and the cluster's environment) to its
// end and returns its exit code, stdout and stderr.
func (c *Cluster) Pushctl(t testing.TB, args ...string) (int, string, string) {
	t.Helper()
	p := Start(t, t.TempDir(), c.Env, c.Bin+"/pushctl", args...)
	code := p.Wait(t, 60*time.Second)
	return code, p.Stdout(), p.Stderr()
}

// MustPushctl is Pushctl that fails the test unless pushctl exits 0.
func (c *Cluster) MustPushctl(t testing.TB, args ...string) string {
	t.Helper()
	code, out, errOut := c.Pushctl(t, args...)
	if code != 0 {
		t.Fatalf("pushctl %s: exit %d\n%s%s", strings.Join(args, " "), code, out, errOut)
	}
	return out
}
