package cluster_test

import (
	"context"
	"fmt"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"testing"
	"time"

	"github.com/pushcluster/push/pkg/client"
	"github.com/pushcluster/push/pkg/ring"
	"github.com/pushcluster/push/pkg/router"
	"github.com/pushcluster/push/pkg/store"
	"github.com/pushcluster/push/pkg/store/etcdtest"
)

func freePort(t *testing.T) string {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	return l.Addr().String()
}

// TestKilledEdgeLeavesTheRing: three real edge processes on an etcd ring;
// one is killed with SIGKILL (no drain, no revoke). Its lease expires, it
// is not live for anybody, its users land on their next owners through the
// router, and messages published after the change reach every user.
func TestKilledEdgeLeavesTheRing(t *testing.T) {
	if testing.Short() {
		t.Skip("builds and runs edge processes")
	}
	bin := filepath.Join(t.TempDir(), "edge")
	build := exec.Command("go", "build", "-o", bin, "github.com/pushcluster/push/cmd/edge")
	build.Stderr = os.Stderr
	if err := build.Run(); err != nil {
		t.Fatalf("build edge: %v", err)
	}
	etcd := etcdtest.Start(t)
	url := etcd.URL("/crash")
	st, err := store.Open(url, quiet())
	if err != nil {
		t.Fatal(err)
	}
	defer st.Close()

	type proc struct {
		cmd             *exec.Cmd
		ws, grpc, admin string
	}
	procs := map[uint32]*proc{}
	doc := &ring.Document{Version: 1, Algorithm: ring.AlgorithmBounded}
	for id := uint32(1); id <= 3; id++ {
		p := &proc{ws: freePort(t), grpc: freePort(t), admin: freePort(t)}
		procs[id] = p
		doc.Members = append(doc.Members, ring.Member{ID: id, Name: fmt.Sprintf("edge-%d", id), WS: p.ws, GRPC: p.grpc, Weight: 1})
	}
	if err := st.CompareAndSwap(ctxT(t, 10*time.Second), 0, doc, false); err != nil {
		t.Fatal(err)
	}
	for id, p := range procs {
		p.cmd = exec.Command(bin, "--id", fmt.Sprint(id), "--listen", p.ws, "--grpc", p.grpc, "--admin", p.admin,
			"--ring", url, "--lease-ttl", "2s", "--log-level", "warn", "--drain-period", "500ms")
		p.cmd.Env = append(os.Environ(), "PUSH_JWT_SECRET="+string(secret))
		logf, _ := os.Create(filepath.Join(t.TempDir(), fmt.Sprintf("edge-%d.log", id)))
		p.cmd.Stdout, p.cmd.Stderr = logf, logf
		if err := p.cmd.Start(); err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { p.cmd.Process.Kill(); p.cmd.Wait() })
	}
	for id, p := range procs {
		waitFor(t, fmt.Sprintf("edge %d ready", id), func() bool {
			r, err := http.Get("http://" + p.admin + "/readyz")
			if err != nil {
				return false
			}
			r.Body.Close()
			return r.StatusCode == 200
		})
	}

	sdk, err := client.New(ctxT(t, 20*time.Second), st, client.WithLogger(quiet()))
	if err != nil {
		t.Fatal(err)
	}
	defer sdk.Close()
	rt, err := router.New(router.Config{Listen: "127.0.0.1:0", Check: router.CheckGRPC,
		CheckInterval: 200 * time.Millisecond, CheckTimeout: 5 * time.Second, Rise: 1, Fall: 3, Logger: quiet()})
	if err != nil {
		t.Fatal(err)
	}
	f, err := store.Follow(context.Background(), st, store.FollowOptions{Log: quiet()})
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	rt.Follow(f)
	waitFor(t, "router ring", func() bool { return rt.Ring() != nil })
	if err := rt.Start(); err != nil {
		t.Fatal(err)
	}
	defer rt.Shutdown(context.Background())

	const n = 300
	us := make([]*user, n)
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	for i := range us {
		us[i] = &user{uid: fmt.Sprintf("crash-%d", i)}
		go us[i].run(ctx, rt.Addr().String())
	}
	// Everyone connected, then one message each so last_seq is set.
	presence := func(ids []string) map[string]uint32 {
		out := map[string]uint32{}
		p, err := sdk.Presence(ctxT(t, 10*time.Second), ids)
		if err != nil {
			return out
		}
		for _, u := range p.Users {
			if u.Online {
				out[u.UserId] = u.EdgeId
			}
		}
		return out
	}
	uids := make([]string, n)
	for i, u := range us {
		uids[i] = u.uid
	}
	waitFor(t, "every user online", func() bool { return len(presence(uids)) == n })
	before := presence(uids)
	onTwo := 0
	for _, e := range before {
		if e == 2 {
			onTwo++
		}
	}
	if onTwo == 0 {
		t.Fatal("no user on edge 2: nothing to test")
	}
	for _, u := range us {
		if _, err := sdk.Publish(ctxT(t, 10*time.Second), u.uid, []byte(`{"n":1}`), 0); err != nil {
			t.Fatal(err)
		}
	}
	waitFor(t, "first message everywhere", func() bool {
		for _, u := range us {
			if _, _, got, _, _ := u.snapshot(); len(got) < 1 {
				return false
			}
		}
		return true
	})

	procs[2].cmd.Process.Kill() // SIGKILL: no drain, no lease revoke
	waitFor(t, "edge 2 not live for the SDK (lease expired)", func() bool {
		return !sdk.View().Alive(2)
	})
	waitFor(t, "every user online on a live edge", func() bool {
		p := presence(uids)
		if len(p) != n {
			return false
		}
		for _, e := range p {
			if e == 2 {
				return false
			}
		}
		return true
	})
	for _, u := range us {
		if _, err := sdk.Publish(ctxT(t, 10*time.Second), u.uid, []byte(`{"n":2}`), 0); err != nil {
			t.Fatalf("publish after the ring changed: %v", err)
		}
	}
	waitFor(t, "the message published after the change reaches every user", func() bool {
		for _, u := range us {
			if _, _, got, _, _ := u.snapshot(); len(got) < 2 || got[len(got)-1] != 2 {
				return false
			}
		}
		return true
	})
	for _, u := range us {
		if _, _, got, gaps, fatal := u.snapshot(); fatal != "" || len(got) != 2 || got[0] != 1 || got[1] != 2 {
			t.Errorf("%s: received %v (gaps %d) %s", u.uid, got, gaps, fatal)
		}
	}
	t.Logf("edge 2 killed with %d of %d users; all of them moved to live edges and got the next message", onTwo, n)
}
