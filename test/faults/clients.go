package faults

import (
	"context"
	"encoding/json"
	"fmt"
	"math/rand/v2"
	"net"
	"net/http"
	neturl "net/url"
	"strconv"
	"sync"
	"sync/atomic"
	"time"

	"github.com/coder/websocket"

	"github.com/pushcluster/push/pkg/auth"
)

// Received is one data message a client got.
type Received struct {
	P, N  int64 // the payload's publisher and counter
	Seq   uint64
	Epoch string
	At    time.Time
	Conn  int // which connection of the user (1, 2, ...)
}

// ConnRecord is one connection of a user: what it resumed from and how it
// ended.
type ConnRecord struct {
	Router   string
	Start    time.Time
	LastSeq  uint64    // last_seq sent (0: none)
	Epoch    string    // epoch sent ("": none)
	End      time.Time // zero while open
	Code     int       // close code, -1 without a close frame
	TimedOut bool
}

// User is one browser-like client: one WebSocket through a router,
// reconnecting and resuming after every close or silence.
type User struct {
	UID    string
	token  string
	router int // index into the router list, moved on when a dial fails

	mu        sync.Mutex
	epoch     string
	lastSeq   uint64
	got       []Received
	gaps      []time.Time // when gap notices arrived
	moves     int         // 4003 closes
	closes    map[int]int // close code (-1: dropped without a close frame) -> count
	timeouts  int         // read deadline passed (no frame for 3 pings)
	conns     int         // successful upgrades
	dialFails int
	connected bool
	fatal     string
	history   []ConnRecord
}

// UserStats is a snapshot of a user.
type UserStats struct {
	UID       string
	Got       []Received
	Gaps      []time.Time
	Moves     int
	Closes    map[int]int
	Timeouts  int
	Conns     int
	DialFails int
	Connected bool
	Fatal     string
	History   []ConnRecord
}

// Snapshot copies the user's state.
func (u *User) Snapshot() UserStats {
	u.mu.Lock()
	defer u.mu.Unlock()
	cl := map[int]int{}
	for k, v := range u.closes {
		cl[k] = v
	}
	return UserStats{UID: u.UID, Got: append([]Received(nil), u.got...), Gaps: append([]time.Time(nil), u.gaps...),
		Moves: u.moves, Closes: cl, Timeouts: u.timeouts, Conns: u.conns, DialFails: u.dialFails, Connected: u.connected, Fatal: u.fatal,
		History: append([]ConnRecord(nil), u.history...)}
}

const maxHistory = 200

// Clients is the population of users of a scenario.
type Clients struct {
	Users   []*User
	routers []string
	readTO  time.Duration
	http    *http.Client
	cancel  context.CancelFunc
	wg      sync.WaitGroup
	lastAny atomic.Int64 // unix nanos of the last data frame any user got
}

// frame is what the edge sends: data, heartbeat, broadcast or gap.
type frame struct {
	Seq       uint64          `json:"seq"`
	Epoch     json.RawMessage `json:"epoch"`
	Data      json.RawMessage `json:"data"`
	HB        bool            `json:"hb"`
	Broadcast bool            `json:"broadcast"`
	Gap       bool            `json:"gap"`
}

type payload struct {
	P *int64 `json:"p"`
	N *int64 `json:"n"`
}

// epochString reads "epoch" whether the edge sends it as a string or a
// number (absent: "").
func epochString(raw json.RawMessage) string {
	if len(raw) == 0 || string(raw) == "null" {
		return ""
	}
	var s string
	if json.Unmarshal(raw, &s) == nil {
		return s
	}
	return string(raw)
}

// StartClients starts n users u0..u<n-1>; user i starts on router i mod
// len(routers). readTimeout is how long a connection may be silent
// (heartbeats included) before the client drops it and reconnects.
func StartClients(n int, prefix string, routers []string, secret []byte, readTimeout time.Duration) (*Clients, error) {
	ctx, cancel := context.WithCancel(context.Background())
	cs := &Clients{routers: routers, readTO: readTimeout, cancel: cancel,
		http: &http.Client{Transport: &http.Transport{
			Proxy:               nil,
			DialContext:         (&net.Dialer{Timeout: 3 * time.Second}).DialContext,
			MaxIdleConnsPerHost: -1,
			DisableKeepAlives:   true,
		}}}
	for i := 0; i < n; i++ {
		uid := fmt.Sprintf("%s%d", prefix, i)
		tok, err := auth.Mint(secret, uid, 24*time.Hour, time.Now())
		if err != nil {
			cancel()
			return nil, err
		}
		u := &User{UID: uid, token: tok, router: i % len(routers), closes: map[int]int{}}
		cs.Users = append(cs.Users, u)
	}
	for i, u := range cs.Users {
		cs.wg.Add(1)
		go func() {
			defer cs.wg.Done()
			// Spread the first connections over ~1 s.
			sleepCtx(ctx, time.Duration(i%1000)*time.Millisecond)
			cs.run(ctx, u)
		}()
	}
	return cs, nil
}

func sleepCtx(ctx context.Context, d time.Duration) {
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-ctx.Done():
	case <-t.C:
	}
}

// Stop ends every client and waits for them.
func (cs *Clients) Stop() {
	cs.cancel()
	done := make(chan struct{})
	go func() { cs.wg.Wait(); close(done) }()
	select {
	case <-done:
	case <-time.After(15 * time.Second):
	}
	cs.http.CloseIdleConnections()
}

// Connected counts users with an open connection.
func (cs *Clients) Connected() int {
	n := 0
	for _, u := range cs.Users {
		u.mu.Lock()
		if u.connected {
			n++
		}
		u.mu.Unlock()
	}
	return n
}

// Moves is the total of 4003 closes so far.
func (cs *Clients) Moves() int {
	n := 0
	for _, u := range cs.Users {
		u.mu.Lock()
		n += u.moves
		u.mu.Unlock()
	}
	return n
}

// LastData is when any user last got a data message.
func (cs *Clients) LastData() time.Time { return time.Unix(0, cs.lastAny.Load()) }

func (cs *Clients) url(u *User) (string, ConnRecord) {
	u.mu.Lock()
	defer u.mu.Unlock()
	rec := ConnRecord{Router: cs.routers[u.router%len(cs.routers)], LastSeq: u.lastSeq, Epoch: u.epoch}
	url := fmt.Sprintf("ws://%s/ws?uid=%s&token=%s", rec.Router, u.UID, u.token)
	// A reconnect always says where it is, last_seq=0 included (nothing
	// seen yet: a message written into a connection that died before the
	// client read it must come again); a first connection has nothing to
	// resume.
	if u.conns > 0 || u.lastSeq > 0 || u.epoch != "" {
		url += "&last_seq=" + strconv.FormatUint(u.lastSeq, 10)
	}
	if u.epoch != "" {
		url += "&epoch=" + neturl.QueryEscape(u.epoch)
	}
	return url, rec
}

// run is one user's life: connect, read until the connection ends, wait a
// little, reconnect with last_seq (and epoch), until ctx ends.
func (cs *Clients) run(ctx context.Context, u *User) {
	for ctx.Err() == nil {
		url, rec := cs.url(u)
		dctx, cancel := context.WithTimeout(ctx, 5*time.Second)
		c, _, err := websocket.Dial(dctx, url, &websocket.DialOptions{HTTPClient: cs.http})
		cancel()
		if err != nil {
			if ctx.Err() != nil {
				return
			}
			u.mu.Lock()
			u.dialFails++
			// Another router next time: a dead router refuses connections.
			if len(cs.routers) > 1 {
				u.router = (u.router + 1) % len(cs.routers)
			}
			u.mu.Unlock()
			sleepCtx(ctx, time.Duration(100+rand.IntN(400))*time.Millisecond)
			continue
		}
		c.SetReadLimit(1 << 20)
		rec.Start = time.Now()
		rec.Code = 0 // still open
		u.mu.Lock()
		u.connected = true
		u.conns++
		conn := u.conns
		hi := -1
		if len(u.history) < maxHistory {
			hi = len(u.history)
			u.history = append(u.history, rec)
		}
		u.mu.Unlock()
		code, timedOut := cs.read(ctx, u, c, conn)
		c.CloseNow()
		end := time.Now()
		u.mu.Lock()
		u.connected = false
		if hi >= 0 {
			u.history[hi].End, u.history[hi].Code, u.history[hi].TimedOut = end, code, timedOut
		}
		if ctx.Err() == nil {
			u.closes[code]++
			if code == 4003 {
				u.moves++
			}
			if timedOut {
				u.timeouts++
			}
			if code == 4002 || code == 4004 || code == 4001 {
				u.fatal = fmt.Sprintf("closed with %d", code)
			}
		}
		u.mu.Unlock()
		if ctx.Err() != nil {
			return
		}
		// As a browser would: reconnect after a short random delay.
		sleepCtx(ctx, time.Duration(rand.IntN(300))*time.Millisecond)
	}
}

// read reads frames until the connection ends; it returns the close code
// (-1 without a close frame) and whether the read deadline passed.
func (cs *Clients) read(ctx context.Context, u *User, c *websocket.Conn, conn int) (int, bool) {
	for {
		rctx, cancel := context.WithTimeout(ctx, cs.readTO)
		_, b, err := c.Read(rctx)
		timedOut := rctx.Err() == context.DeadlineExceeded && ctx.Err() == nil
		cancel()
		if err != nil {
			return int(websocket.CloseStatus(err)), timedOut
		}
		now := time.Now()
		var f frame
		if json.Unmarshal(b, &f) != nil {
			continue
		}
		switch {
		case f.HB, f.Broadcast:
			continue
		case f.Gap:
			u.mu.Lock()
			u.gaps = append(u.gaps, now)
			if e := epochString(f.Epoch); e != "" && e != u.epoch {
				u.epoch, u.lastSeq = e, 0
			}
			u.mu.Unlock()
			continue
		}
		var p payload
		if json.Unmarshal(f.Data, &p) != nil || p.P == nil || p.N == nil {
			continue
		}
		cs.lastAny.Store(now.UnixNano())
		e := epochString(f.Epoch)
		u.mu.Lock()
		u.got = append(u.got, Received{P: *p.P, N: *p.N, Seq: f.Seq, Epoch: e, At: now, Conn: conn})
		switch {
		case e != u.epoch:
			u.epoch, u.lastSeq = e, f.Seq
		case f.Seq > u.lastSeq:
			u.lastSeq = f.Seq
		}
		u.mu.Unlock()
	}
}
