package ring

import (
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
