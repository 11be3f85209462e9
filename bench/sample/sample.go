// Package sample reads the resource figures of a process under test from
// /proc and its Prometheus endpoint: RSS, Go heap and stacks, threads,
// descriptors, CPU seconds, plus the kernel's socket and slab memory.
package sample

import (
	"bufio"
	"bytes"
	"fmt"
	"io"
	"net/http"
	"os"
	"strconv"
	"strings"
	"time"
)

// Proc is one sample of a process.
type Proc struct {
	At        time.Time `json:"at"`
	RSS       int64     `json:"rss_bytes"`
	Threads   int       `json:"threads"`
	FDs       int       `json:"fds"`
	UserSec   float64   `json:"user_cpu_s"`
	SysSec    float64   `json:"sys_cpu_s"`
	HeapInuse int64     `json:"heap_inuse_bytes,omitempty"`
	StackUse  int64     `json:"stack_inuse_bytes,omitempty"`
	Goroutine int64     `json:"goroutines,omitempty"`
}

// GoBytes is the Go heap and stack in use: the user-space cost the edge
// controls.
func (p Proc) GoBytes() int64 { return p.HeapInuse + p.StackUse }

// CPU is user+system seconds.
func (p Proc) CPU() float64 { return p.UserSec + p.SysSec }

var clkTck = 100.0 // USER_HZ on Linux

// Read samples pid; metricsURL (may be empty) is a Prometheus endpoint of
// a Go process, gcURL (may be empty) is fetched first to force a GC so heap
// figures are live data only.
func Read(pid int, metricsURL, gcURL string) (Proc, error) {
	s := Proc{At: time.Now()}
	if gcURL != "" {
		if r, err := http.Get(gcURL); err == nil {
			io.Copy(io.Discard, r.Body)
			r.Body.Close()
		}
	}
	status, err := os.ReadFile(fmt.Sprintf("/proc/%d/status", pid))
	if err != nil {
		return s, err
	}
	for _, line := range strings.Split(string(status), "\n") {
		f := strings.Fields(line)
		if len(f) < 2 {
			continue
		}
		switch f[0] {
		case "VmRSS:":
			kb, _ := strconv.ParseInt(f[1], 10, 64)
			s.RSS = kb * 1024
		case "Threads:":
			s.Threads, _ = strconv.Atoi(f[1])
		}
	}
	if ents, err := os.ReadDir(fmt.Sprintf("/proc/%d/fd", pid)); err == nil {
		s.FDs = len(ents)
	}
	stat, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		return s, err
	}
	// Fields after the command name (which may contain spaces).
	rest := stat[bytes.LastIndexByte(stat, ')')+2:]
	f := strings.Fields(string(rest))
	if len(f) > 13 {
		u, _ := strconv.ParseFloat(f[11], 64)
		k, _ := strconv.ParseFloat(f[12], 64)
		s.UserSec, s.SysSec = u/clkTck, k/clkTck
	}
	if metricsURL != "" {
		m, err := Metrics(metricsURL)
		if err != nil {
			return s, err
		}
		s.HeapInuse = int64(m["go_memstats_heap_inuse_bytes"])
		s.StackUse = int64(m["go_memstats_stack_inuse_bytes"])
		s.Goroutine = int64(m["go_goroutines"])
	}
	return s, nil
}

// Metrics fetches a Prometheus text endpoint into name{labels} → value.
func Metrics(url string) (map[string]float64, error) {
	c := http.Client{Timeout: 10 * time.Second}
	r, err := c.Get(url)
	if err != nil {
		return nil, err
	}
	defer r.Body.Close()
	out := map[string]float64{}
	sc := bufio.NewScanner(r.Body)
	sc.Buffer(make([]byte, 1<<20), 1<<20)
	for sc.Scan() {
		line := sc.Text()
		if line == "" || line[0] == '#' {
			continue
		}
		i := strings.LastIndexByte(line, ' ')
		if i < 0 {
			continue
		}
		v, err := strconv.ParseFloat(line[i+1:], 64)
		if err == nil {
			out[line[:i]] = v
		}
	}
	return out, sc.Err()
}

// Kernel is the machine-wide kernel memory that sockets use.
type Kernel struct {
	SlabBytes     int64 `json:"slab_bytes"`
	TCPMemBytes   int64 `json:"tcp_mem_bytes"` // /proc/net/sockstat "mem", in pages
	TCPInUse      int64 `json:"tcp_inuse"`
	TCPTimeWait   int64 `json:"tcp_tw"`
	TCPAllocation int64 `json:"tcp_alloc"`
}

// ReadKernel samples /proc/meminfo and /proc/net/sockstat.
func ReadKernel() Kernel {
	var k Kernel
	if b, err := os.ReadFile("/proc/meminfo"); err == nil {
		for _, line := range strings.Split(string(b), "\n") {
			f := strings.Fields(line)
			if len(f) >= 2 && f[0] == "Slab:" {
				kb, _ := strconv.ParseInt(f[1], 10, 64)
				k.SlabBytes = kb * 1024
			}
		}
	}
	if b, err := os.ReadFile("/proc/net/sockstat"); err == nil {
		for _, line := range strings.Split(string(b), "\n") {
			if !strings.HasPrefix(line, "TCP:") {
				continue
			}
			f := strings.Fields(line)
			for i := 1; i+1 < len(f); i += 2 {
				v, _ := strconv.ParseInt(f[i+1], 10, 64)
				switch f[i] {
				case "inuse":
					k.TCPInUse = v
				case "tw":
					k.TCPTimeWait = v
				case "alloc":
					k.TCPAllocation = v
				case "mem":
					k.TCPMemBytes = v * int64(os.Getpagesize())
				}
			}
		}
	}
	return k
}

// TCPExt reads the kernel's TcpExt counters from /proc/net/netstat
// (ListenOverflows, ListenDrops, SyncookiesSent, …): machine-wide, so take
// differences over a period when nothing else opens many connections.
func TCPExt() map[string]int64 {
	out := map[string]int64{}
	b, err := os.ReadFile("/proc/net/netstat")
	if err != nil {
		return out
	}
	var keys []string
	for _, line := range strings.Split(string(b), "\n") {
		if !strings.HasPrefix(line, "TcpExt:") {
			continue
		}
		f := strings.Fields(line)[1:]
		if keys == nil {
			keys = f
			continue
		}
		for i, v := range f {
			if i < len(keys) {
				out[keys[i]], _ = strconv.ParseInt(v, 10, 64)
			}
		}
		break
	}
	return out
}
