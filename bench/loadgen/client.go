// Package loadgen opens and holds many WebSocket clients cheaply (raw
// non-blocking sockets on the project's epoll poller, no goroutine per
// client), spread over many loopback source addresses, and measures what
// they receive: end-to-end latency of messages carrying a send timestamp and
// the arrival time of each broadcast.
package loadgen

import (
	"bytes"
	"compress/flate"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"math/rand/v2"
	"net"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"golang.org/x/sys/unix"

	"github.com/pushcluster/push/pkg/poller"
)

type state uint8

const (
	connecting state = iota
	upgrading
	open
	closed
)

type client struct {
	mu    sync.Mutex
	fd    int
	gen   uint32
	state state
	level bool // watched level-triggered (after the connect)
	uid   string
	n     int    // index, picks the source address
	last  uint64 // highest seq received, for resuming
	req   []byte // handshake request still to send
	part  []byte // partial response head or frame
}

// Config says what to open.
type Config struct {
	Target  string   // host:port of a router or edge
	Sources []net.IP // local addresses to spread sockets over (nil: kernel's choice)
	Path    string   // request path prefix, default "/ws"
	Token   func(uid string) string
	// Query, when set, is the whole query string of the upgrade request
	// for uid (without "?"), instead of "uid=<uid>&token=<Token(uid)>":
	// for peers whose clients authenticate differently (Centrifugo's
	// cf_connect).
	Query     func(uid string) string
	PingEach  time.Duration // each client pings this often (0: never), spread evenly
	PollEvery time.Duration // nap between non-blocking polls (0: sleep in epoll_wait)
	PingSplit time.Duration // send each ping in two segments this far apart (0: one write)
	// Reconnect, when set, is where a client closed with 4003 "moved" or
	// 1001 "going away" connects again, resuming with last_seq (as the
	// browser client does through a router).
	Reconnect string
	// RetryJitter, when set (with Reconnect), also reconnects a client
	// whose connection ended without a close frame (EOF, reset: the edge
	// was killed) or whose connect or handshake failed, after a random
	// delay below RetryJitter, until the pool closes: browsers after an
	// edge restart.
	RetryJitter time.Duration
	// Deflate offers permessage-deflate (as browsers do) and inflates the
	// compressed messages it gets.
	Deflate bool
}

// Pool is a set of clients on one epoll loop.
type Pool struct {
	cfg     Config
	poll    *poller.Poller
	addr    unix.Sockaddr
	reconn  unix.Sockaddr // Config.Reconnect
	mu      sync.Mutex
	clients map[int]*client
	gen     uint32

	Opened   atomic.Int64
	Moved    atomic.Int64 // closes with 4003 or 1001 followed by a reconnect
	Failed   atomic.Int64
	Closed   atomic.Int64
	Received atomic.Int64
	LastErr  atomic.Value // string

	Stats *Stats
	// Compressed counts compressed messages received (Config.Deflate);
	// inf inflates them (used only by the loop goroutine).
	Compressed atomic.Int64
	inf        io.ReadCloser
	done       chan struct{}
	closing    atomic.Bool
}

// NewPool starts the event loop.
func NewPool(cfg Config) (*Pool, error) {
	if cfg.Path == "" {
		cfg.Path = "/ws"
	}
	sa, err := sockaddr(cfg.Target)
	if err != nil {
		return nil, err
	}
	var reconn unix.Sockaddr
	if cfg.Reconnect != "" {
		if reconn, err = sockaddr(cfg.Reconnect); err != nil {
			return nil, err
		}
	}
	p, err := poller.New(512)
	if err != nil {
		return nil, err
	}
	pl := &Pool{cfg: cfg, poll: p, addr: sa, reconn: reconn, clients: map[int]*client{}, Stats: NewStats(), done: make(chan struct{})}
	go pl.loop()
	if cfg.PingEach > 0 {
		go pl.pinger()
	}
	return pl, nil
}

func sockaddr(hostport string) (unix.Sockaddr, error) {
	ta, err := net.ResolveTCPAddr("tcp", hostport)
	if err != nil {
		return nil, err
	}
	ip4 := ta.IP.To4()
	if ip4 == nil {
		return nil, errors.New("loadgen: IPv4 targets only")
	}
	s := &unix.SockaddrInet4{Port: ta.Port}
	copy(s.Addr[:], ip4)
	return s, nil
}

// Open starts one client for uid; completion shows in Opened or Failed.
func (p *Pool) Open(uid string, n int) error { return p.open(p.addr, p.cfg.Target, uid, n, 0) }

func (p *Pool) open(addr unix.Sockaddr, host, uid string, n int, last uint64) error {
	fd, err := unix.Socket(unix.AF_INET, unix.SOCK_STREAM|unix.SOCK_NONBLOCK|unix.SOCK_CLOEXEC, 0)
	if err != nil {
		p.fail(err)
		return err
	}
	if len(p.cfg.Sources) > 0 {
		_ = unix.SetsockoptInt(fd, unix.IPPROTO_IP, unix.IP_BIND_ADDRESS_NO_PORT, 1)
		src := &unix.SockaddrInet4{}
		copy(src.Addr[:], p.cfg.Sources[n%len(p.cfg.Sources)].To4())
		if err := unix.Bind(fd, src); err != nil {
			unix.Close(fd)
			p.fail(err)
			return err
		}
	}
	_ = unix.SetsockoptInt(fd, unix.IPPROTO_TCP, unix.TCP_NODELAY, 1)
	if err := unix.Connect(fd, addr); err != nil && err != unix.EINPROGRESS {
		unix.Close(fd)
		p.fail(err)
		p.retry(uid, n, last)
		return err
	}
	resume := ""
	if last > 0 {
		resume = "&last_seq=" + strconv.FormatUint(last, 10)
	}
	ext := ""
	if p.cfg.Deflate {
		ext = "Sec-WebSocket-Extensions: permessage-deflate; client_max_window_bits\r\n"
	}
	var query string
	if p.cfg.Query != nil {
		query = p.cfg.Query(uid)
	} else {
		query = "uid=" + uid + "&token=" + p.cfg.Token(uid) + resume
	}
	req := fmt.Sprintf("GET %s?%s HTTP/1.1\r\nHost: %s\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"+
		"Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n%s\r\n", p.cfg.Path, query, host, ext)
	p.mu.Lock()
	p.gen++
	c := &client{fd: fd, gen: p.gen, uid: uid, n: n, last: last, req: []byte(req)}
	p.clients[fd] = c
	p.mu.Unlock()
	return p.poll.Start(fd, c.gen, poller.Write|poller.Read)
}

func (p *Pool) fail(err error) {
	p.Failed.Add(1)
	p.LastErr.Store(err.Error())
}

// Close closes every client and stops the loop.
func (p *Pool) Close() {
	p.closing.Store(true)
	p.mu.Lock()
	for fd, c := range p.clients {
		c.mu.Lock()
		if c.state != closed {
			c.state = closed
			unix.Close(fd)
		}
		c.mu.Unlock()
	}
	p.clients = map[int]*client{}
	p.mu.Unlock()
	close(p.done)
	p.poll.Close()
}

// loop handles the clients' events. With PollEvery set it never sleeps in
// epoll_wait: it polls without blocking and naps between polls. On loopback
// the kernel charges waking a sleeping reader to the writer, so a load
// generator that sleeps in epoll_wait between messages makes the server
// under test pay for its clients' wake-ups, which it would not with its
// clients on other machines; napping also lets messages arrive in batches.
func (p *Pool) loop() {
	buf := make([]byte, 256<<10)
	nap := unix.NsecToTimespec(int64(p.cfg.PollEvery))
	for {
		timeout := -1
		if p.cfg.PollEvery > 0 {
			timeout = 0
		}
		n, err := p.poll.Wait(timeout, func(fd int, gen uint32, ev poller.Event) {
			p.mu.Lock()
			c := p.clients[fd]
			p.mu.Unlock()
			if c == nil || c.gen != gen {
				return
			}
			c.mu.Lock()
			defer c.mu.Unlock()
			p.event(c, ev, buf)
		})
		if err != nil {
			return
		}
		if n == 0 && p.cfg.PollEvery > 0 {
			unix.Nanosleep(&nap, nil)
		}
	}
}

func (p *Pool) drop(c *client, err error) {
	if c.state == closed {
		return
	}
	if c.state == open {
		p.Closed.Add(1)
	} else {
		p.fail(err)
	}
	c.state = closed
	unix.Close(c.fd)
	p.mu.Lock()
	if p.clients[c.fd] == c {
		delete(p.clients, c.fd)
	}
	p.mu.Unlock()
	p.retry(c.uid, c.n, c.last)
}

// retry reconnects a user after a random delay below RetryJitter (see
// Config).
func (p *Pool) retry(uid string, n int, last uint64) {
	if p.cfg.RetryJitter <= 0 || p.reconn == nil || p.closing.Load() {
		return
	}
	p.Moved.Add(1)
	time.AfterFunc(rand.N(p.cfg.RetryJitter), func() {
		if !p.closing.Load() {
			p.open(p.reconn, p.cfg.Reconnect, uid, n, last)
		}
	})
}

func (p *Pool) event(c *client, ev poller.Event, buf []byte) {
	if c.state == closed {
		return
	}
	if c.state == connecting && ev&poller.Write != 0 {
		if e, _ := unix.GetsockoptInt(c.fd, unix.SOL_SOCKET, unix.SO_ERROR); e != 0 {
			p.drop(c, fmt.Errorf("connect: %w", unix.Errno(e)))
			return
		}
		n, err := unix.Write(c.fd, c.req)
		if err != nil || n != len(c.req) {
			p.drop(c, fmt.Errorf("write handshake: %v", err))
			return
		}
		c.req = nil
		c.state = upgrading
	}
	if ev&(poller.Read|poller.Hup|poller.Err) != 0 {
		for {
			n, err := unix.Read(c.fd, buf)
			if n <= 0 {
				if err == unix.EAGAIN {
					break
				}
				if err == nil {
					err = errors.New("EOF")
				}
				p.drop(c, err)
				return
			}
			p.input(c, buf[:n])
			if c.state == closed || n < len(buf) {
				break
			}
		}
	}
	if c.state == connecting {
		if err := p.poll.Resume(c.fd, c.gen, poller.Read|poller.Write); err != nil {
			p.drop(c, err)
		}
		return
	}
	if !c.level {
		// Connected: from now on level-triggered reads, so receiving a
		// message costs no epoll_ctl.
		c.level = true
		if err := p.poll.ModifyLevel(c.fd, c.gen, poller.Read); err != nil {
			p.drop(c, err)
		}
	}
}

var crlf2 = []byte("\r\n\r\n")

func (p *Pool) input(c *client, data []byte) {
	if len(c.part) > 0 {
		data = append(c.part, data...)
		c.part = nil
	}
	if c.state == upgrading {
		end := bytes.Index(data, crlf2)
		if end < 0 {
			c.part = append([]byte(nil), data...)
			return
		}
		if !bytes.HasPrefix(data, []byte("HTTP/1.1 101")) {
			line, _, _ := bytes.Cut(data, []byte("\r\n"))
			p.drop(c, fmt.Errorf("upgrade refused: %s", line))
			return
		}
		c.state = open
		p.Opened.Add(1)
		data = data[end+4:]
	}
	for len(data) >= 2 {
		op := data[0] & 0x0f
		n := uint64(data[1] & 0x7f)
		h := 2
		switch n {
		case 126:
			if len(data) < 4 {
				break
			}
			n, h = uint64(binary.BigEndian.Uint16(data[2:])), 4
		case 127:
			if len(data) < 10 {
				break
			}
			n, h = binary.BigEndian.Uint64(data[2:]), 10
		}
		if (data[1]&0x7f == 126 && len(data) < 4) || (data[1]&0x7f == 127 && len(data) < 10) || uint64(len(data)-h) < n {
			break
		}
		payload := data[h : h+int(n)]
		switch op {
		case 0x1:
			p.Received.Add(1)
			if data[0]&0x40 != 0 {
				p.Compressed.Add(1)
				var err error
				if payload, err = p.inflate(payload); err != nil {
					p.drop(c, err)
					return
				}
			}
			if seq, ok := field(payload, "seq"); ok && uint64(seq) > c.last {
				c.last = uint64(seq)
			}
			p.Stats.record(payload, time.Now().UnixNano())
		case 0x9:
			p.control(c, 0xA, payload)
		case 0x8:
			p.control(c, 0x8, payload)
			p.drop(c, errors.New("closed by server"))
			if len(payload) >= 2 && p.reconn != nil && p.cfg.RetryJitter <= 0 {
				if code := binary.BigEndian.Uint16(payload); code == 4003 || code == 1001 {
					p.Moved.Add(1)
					uid, n, last := c.uid, c.n, c.last
					go p.open(p.reconn, p.cfg.Reconnect, uid, n, last)
				}
			}
			return
		}
		data = data[h+int(n):]
	}
	if len(data) > 0 {
		c.part = append([]byte(nil), data...)
	}
}

// deflateEnd completes a permessage-deflate message for a DEFLATE reader
// (RFC 7692 §7.2.2) and ends the stream.
const deflateEnd = "\x00\x00\xff\xff\x01\x00\x00\xff\xff"

// inflate decompresses one message with the pool's reusable reader.
func (p *Pool) inflate(z []byte) ([]byte, error) {
	in := io.MultiReader(bytes.NewReader(z), strings.NewReader(deflateEnd))
	if p.inf == nil {
		p.inf = flate.NewReader(in)
	} else if err := p.inf.(flate.Resetter).Reset(in, nil); err != nil {
		return nil, err
	}
	b, err := io.ReadAll(p.inf)
	if err != nil {
		return nil, fmt.Errorf("inflate: %w", err)
	}
	return b, nil
}

// control sends a masked control frame (clients must mask).
func (p *Pool) control(c *client, op byte, payload []byte) {
	f := make([]byte, 0, 6+len(payload))
	f = append(f, 0x80|op, 0x80|byte(len(payload)), 1, 2, 3, 4)
	for i, b := range payload {
		f = append(f, b^byte(i%4+1))
	}
	unix.Write(c.fd, f)
}

// pinger makes every open client send a ping once per PingEach, spread
// evenly over the period.
func (p *Pool) pinger() {
	tick := time.NewTicker(100 * time.Millisecond)
	defer tick.Stop()
	slices := int(p.cfg.PingEach / (100 * time.Millisecond))
	if slices < 1 {
		slices = 1
	}
	for i := 0; ; i++ {
		select {
		case <-p.done:
			return
		case <-tick.C:
		}
		p.mu.Lock()
		var batch []*client
		for fd, c := range p.clients {
			if fd%slices == i%slices {
				batch = append(batch, c)
			}
		}
		p.mu.Unlock()
		for _, c := range batch {
			c.mu.Lock()
			if c.state == open {
				if p.cfg.PingSplit > 0 {
					p.splitPing(c)
				} else {
					p.control(c, 0x9, nil)
				}
			}
			c.mu.Unlock()
		}
	}
}

// splitPing sends a ping whose frame arrives in two TCP segments PingSplit
// apart, as happens on real networks: a server that reads with blocking
// I/O holds a thread for the gap.
func (p *Pool) splitPing(c *client) {
	f := []byte{0x89, 0x80 | 4, 1, 2, 3, 4, 'p' ^ 1, 'i' ^ 2, 'n' ^ 3, 'g' ^ 4}
	unix.Write(c.fd, f[:6])
	time.AfterFunc(p.cfg.PingSplit, func() {
		c.mu.Lock()
		if c.state == open {
			unix.Write(c.fd, f[6:])
		}
		c.mu.Unlock()
	})
}

// Count returns the clients that are open now.
func (p *Pool) Count() int64 { return p.Opened.Load() - p.Closed.Load() }

// Sources parses "127.0.0.2-127.0.0.40" or a comma list into addresses.
func Sources(spec string) ([]net.IP, error) {
	if spec == "" {
		return nil, nil
	}
	var out []net.IP
	for _, part := range bytes.Split([]byte(spec), []byte(",")) {
		lo, hi, isRange := bytes.Cut(part, []byte("-"))
		a := net.ParseIP(string(lo)).To4()
		if a == nil {
			return nil, fmt.Errorf("source %q is not an IPv4 address", lo)
		}
		if !isRange {
			out = append(out, a)
			continue
		}
		b := net.ParseIP(string(hi)).To4()
		if b == nil || binary.BigEndian.Uint32(b) < binary.BigEndian.Uint32(a) {
			return nil, fmt.Errorf("bad source range %q", part)
		}
		for v := binary.BigEndian.Uint32(a); v <= binary.BigEndian.Uint32(b); v++ {
			ip := make(net.IP, 4)
			binary.BigEndian.PutUint32(ip, v)
			out = append(out, ip)
		}
	}
	return out, nil
}

// Shuffle returns uids in random order (publishers pick targets from it).
func Shuffle(uids []string) []string {
	out := append([]string(nil), uids...)
	rand.Shuffle(len(out), func(i, j int) { out[i], out[j] = out[j], out[i] })
	return out
}

// UID names the i-th simulated user.
func UID(prefix string, i int) string { return prefix + strconv.Itoa(i) }
