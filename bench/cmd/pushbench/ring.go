package main

import (
	"flag"
	"fmt"
	"os"
	"slices"
	"strconv"
	"testing"
	"time"

	"github.com/pushcluster/push/bench/report"
	"github.com/pushcluster/push/pkg/flagenv"
	"github.com/pushcluster/push/pkg/ring"
)

// HAProxy's own balance on the same kind of ring, measured with the real
// binary (hash-type consistent, 15 servers of weight 1, 100k keys): the
// reference the bounded algorithm is meant to beat.
const haproxyMaxMean, haproxyMinMean = 1.198, 0.805

func runRing(args []string) error {
	fs := flag.NewFlagSet("pushbench ring", flag.ContinueOnError)
	keys := fs.Int("keys", 1000000, "user ids uid-0 … uid-N-1 to place")
	members := fs.Int("members", 15, "members of the ring (ids 1..N, weight 1)")
	buildMembers := fs.Int("build-members", 100, "members of the ring whose build time is measured")
	out := fs.String("out", "bench/results", "results directory")
	flagenv.SetUsage(fs, "PUSHBENCH", "pushbench ring [flags]",
		"Computes in-process, with pkg/ring and no network, for the bounded and the haproxy algorithm: "+
			"the balance of --keys user ids over --members members (max/mean and min/mean of the per-member counts), "+
			"the users that move when a member is added and when one is removed (as a multiple of the ideal share), "+
			"lookup ns/op and allocations (testing.Benchmark), and the build time of a ring of --build-members members.")
	if _, err := flagenv.Parse(fs, "PUSHBENCH", args, nil); err != nil {
		return err
	}
	if *keys < 1 || *members < 2 || *members >= ring.MaxMembers || *buildMembers < 1 || *buildMembers > ring.MaxMembers {
		return fmt.Errorf("want --keys >= 1, 2 <= --members < %d, 1 <= --build-members <= %d", ring.MaxMembers, ring.MaxMembers)
	}
	r := report.New("ring", map[string]any{"keys": *keys, "members": *members, "build_members": *buildMembers})
	uids := make([][]byte, *keys)
	for i := range uids {
		uids[i] = strconv.AppendInt([]byte("uid-"), int64(i), 10)
	}
	for _, alg := range []string{ring.AlgorithmBounded, ring.AlgorithmHAProxy} {
		progress("%s: placing %d keys on %d members", alg, *keys, *members)
		if err := ringFigures(r, alg, uids, *members, *buildMembers); err != nil {
			return fmt.Errorf("%s: %w", alg, err)
		}
	}
	r.Print(os.Stdout)
	path, err := r.Save(*out)
	if err != nil {
		return err
	}
	fmt.Println("saved", path)
	return nil
}

// benchDoc is a document of n members with ids 1..n and weight 1.
func benchDoc(alg string, n int) *ring.Document {
	d := &ring.Document{Version: 1, Algorithm: alg}
	for i := 1; i <= n; i++ {
		d.Members = append(d.Members, benchMember(i))
	}
	return d
}

func benchMember(i int) ring.Member {
	return ring.Member{ID: uint32(i), Name: fmt.Sprintf("edge-%d", i),
		WS: fmt.Sprintf("10.%d.%d.%d:8080", i>>16, i>>8&255, i&255), GRPC: fmt.Sprintf("10.%d.%d.%d:9090", i>>16, i>>8&255, i&255),
		Weight: 1, State: ring.StateActive}
}

func ringFigures(r *report.Run, alg string, uids [][]byte, members, buildMembers int) error {
	doc := benchDoc(alg, members)
	base, err := ring.New(doc)
	if err != nil {
		return err
	}
	owners := make([]uint32, len(uids))
	count := make(map[uint32]int, members)
	for i, k := range uids {
		owners[i] = base.Lookup(k)
		count[owners[i]]++
	}
	mean := float64(len(uids)) / float64(members)
	lo, hi := len(uids), 0
	for _, m := range doc.Members {
		lo, hi = min(lo, count[m.ID]), max(hi, count[m.ID])
	}
	keyNote := fmt.Sprintf("%d keys on %d members", len(uids), members)
	if alg == ring.AlgorithmBounded {
		r.Add("bounded: busiest member, max/mean", float64(hi)/mean, "×", "<=", 1.03, keyNote)
		r.Add("bounded: idlest member, min/mean", float64(lo)/mean, "×", ">=", 0.95, keyNote)
	} else {
		r.Add("haproxy: busiest member, max/mean", float64(hi)/mean, "×", "", 0,
			fmt.Sprintf("%s; HAProxy binary %.3f on 100k keys", keyNote, haproxyMaxMean))
		r.Add("haproxy: idlest member, min/mean", float64(lo)/mean, "×", "", 0,
			fmt.Sprintf("%s; HAProxy binary %.3f on 100k keys", keyNote, haproxyMinMean))
	}

	// Moves: adding member n+1 ideally moves 1/(n+1) of the users (its
	// share), removing one moves 1/n (the removed member's share).
	added := benchDoc(alg, members)
	added.Version++
	added.Members = append(added.Members, benchMember(members+1))
	removed := benchDoc(alg, members)
	removed.Version++
	gone := (members + 1) / 2 // a member from the middle of the list
	removed.Members = slices.DeleteFunc(removed.Members, func(m ring.Member) bool { return m.ID == uint32(gone) })
	for _, c := range []struct {
		what  string
		doc   *ring.Document
		ideal float64
	}{
		{fmt.Sprintf("adding member %d", members+1), added, 1 / float64(members+1)},
		{fmt.Sprintf("removing member %d", gone), removed, 1 / float64(members)},
	} {
		after, err := ring.New(c.doc)
		if err != nil {
			return err
		}
		moved := 0
		for i, k := range uids {
			if after.Lookup(k) != owners[i] {
				moved++
			}
		}
		frac := float64(moved) / float64(len(uids))
		name := fmt.Sprintf("%s: users moved by %s, multiple of the ideal", alg, c.what)
		note := fmt.Sprintf("%.2f%% moved, ideal %.2f%%", 100*frac, 100*c.ideal)
		if alg == ring.AlgorithmBounded {
			r.Add(name, frac/c.ideal, "×", "<=", 1.05, note)
		} else {
			r.Add(name, frac/c.ideal, "×", "", 0, note)
		}
	}

	// Lookup cost on the ring just measured, over 1024 distinct keys.
	sample := uids[:min(len(uids), 1024)]
	res := testing.Benchmark(func(b *testing.B) {
		b.ReportAllocs()
		var sink uint32
		for i := 0; b.Loop(); i++ {
			sink += base.Lookup(sample[i%len(sample)])
		}
		_ = sink
	})
	r.Add(alg+": lookup", float64(res.NsPerOp()), "ns/op", "<=", 100, fmt.Sprintf("%d members, %d lookups", members, res.N))
	r.Add(alg+": lookup allocations", float64(res.AllocsPerOp()), "allocs/op", "<=", 0, "")

	// Build time: the median of a few builds of a ring of buildMembers.
	big := benchDoc(alg, buildMembers)
	var builds []time.Duration
	for range 5 {
		start := time.Now()
		if _, err := ring.New(big); err != nil {
			return err
		}
		builds = append(builds, time.Since(start))
	}
	slices.Sort(builds)
	r.Add(fmt.Sprintf("%s: build a ring of %d members", alg, buildMembers), float64(builds[len(builds)/2].Microseconds())/1000, "ms", "", 0,
		fmt.Sprintf("median of %d, fastest %.3f ms", len(builds), float64(builds[0].Microseconds())/1000))
	return nil
}
