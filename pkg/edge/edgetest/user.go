package edgetest

import (
	"context"
	"fmt"
	"sync"
	"time"

	"github.com/coder/websocket"

	"github.com/pushcluster/push/pkg/auth"
	"github.com/pushcluster/push/pkg/edge"
)

// User is a browser user that stays connected through a router (or an
// edge), reconnecting whenever its connection ends, and counts the 4003
// moves it is closed with. Make it with a UID and call Run in a goroutine.
type User struct {
	UID   string
	mu    sync.Mutex
	moved int
}

// Moved returns how many 4003 closes the user has seen.
func (u *User) Moved() int {
	u.mu.Lock()
	defer u.mu.Unlock()
	return u.moved
}

// Run connects the user to ws://addr/ws with a token minted from secret
// and keeps it connected until ctx ends.
func (u *User) Run(ctx context.Context, addr string, secret []byte) {
	tok, _ := auth.Mint(secret, u.UID, time.Hour, time.Now())
	url := fmt.Sprintf("ws://%s/ws?uid=%s&token=%s", addr, u.UID, tok)
	for ctx.Err() == nil {
		dctx, cancel := context.WithTimeout(ctx, 5*time.Second)
		conn, _, err := websocket.Dial(dctx, url, nil)
		cancel()
		if err != nil {
			select {
			case <-ctx.Done():
			case <-time.After(50 * time.Millisecond):
			}
			continue
		}
		for {
			if _, _, err := conn.Read(ctx); err != nil {
				if websocket.CloseStatus(err) == edge.CloseMoved {
					u.mu.Lock()
					u.moved++
					u.mu.Unlock()
				}
				conn.CloseNow()
				break
			}
		}
	}
}
