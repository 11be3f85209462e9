package ring

import (
	"fmt"
	"strconv"
	"sync"
	"testing"
)

// TestConcurrentLookups: many goroutines share one Ring (run with -race).
func TestConcurrentLookups(t *testing.T) {
	for _, alg := range []string{AlgorithmBounded, AlgorithmHAProxy} {
		r, err := New(testDoc(alg, 15))
		if err != nil {
			t.Fatal(err)
		}
		want := make([]uint32, 5000)
		for i := range want {
			want[i] = r.LookupString("uid-" + strconv.Itoa(i))
		}
		up := func(id uint32) bool { return id != 3 }
		var wg sync.WaitGroup
		for g := 0; g < 4; g++ {
			wg.Add(1)
			go func() {
				defer wg.Done()
				for i := range want {
					k := "uid-" + strconv.Itoa(i)
					if got := r.Lookup([]byte(k)); got != want[i] {
						t.Errorf("%s %s: %d != %d", alg, k, got, want[i])
						return
					}
					if id, ok := r.LookupLive([]byte(k), up); !ok || id == 3 {
						t.Errorf("%s %s: LookupLive %d %v", alg, k, id, ok)
						return
					}
				}
				_ = r.Shares()
				_, _ = r.Member(1)
				_ = r.Document()
			}()
		}
		wg.Wait()
	}
}

// TestLookupLiveString holds the string form to the []byte form on both
// algorithms, with some members down.
func TestLookupLiveString(t *testing.T) {
	for _, alg := range []string{AlgorithmBounded, AlgorithmHAProxy} {
		d := &Document{Version: 1, Algorithm: alg}
		for i := uint32(1); i <= 5; i++ {
			d.Members = append(d.Members, Member{ID: i, Name: fmt.Sprintf("e%d", i), WS: fmt.Sprintf("127.0.0.1:%d", 8000+i), GRPC: fmt.Sprintf("127.0.0.1:%d", 9000+i), Weight: 1, State: StateActive})
		}
		r, err := New(d)
		if err != nil {
			t.Fatal(err)
		}
		up := func(id uint32) bool { return id != 2 && id != 4 }
		for i := 0; i < 2000; i++ {
			k := fmt.Sprintf("user-%d", i)
			a, okA := r.LookupLive([]byte(k), up)
			b, okB := r.LookupLiveString(k, up)
			if a != b || okA != okB || !okA || a == 2 || a == 4 {
				t.Fatalf("%s %q: []byte %d %v, string %d %v", alg, k, a, okA, b, okB)
			}
		}
	}
}
