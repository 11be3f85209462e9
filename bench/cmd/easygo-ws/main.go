// Command easygo-ws is the comparison server for the netpoll decision
// (docs/decisions.md): the same gobwas/ws upgrade and HS256 check as the
// edge, but connections watched with github.com/mailru/easygo/netpoll in
// its documented pattern (HandleRead, then Start with a callback that
// reads one frame on a goroutine and Resumes). It answers pings and
// nothing else. Not for production: it exists to be measured.
package main

import (
	"flag"
	"log"
	"net"
	"net/http"
	"os"
	"os/signal"
	"strings"
	"syscall"

	"github.com/gobwas/ws"
	"github.com/gobwas/ws/wsutil"
	"github.com/mailru/easygo/netpoll"

	"github.com/pushcluster/push/pkg/auth"
)

func main() {
	listen := flag.String("listen", "127.0.0.1:18081", "WebSocket address")
	admin := flag.String("admin", "127.0.0.1:19101", "readiness address (/readyz)")
	flag.Parse()
	secret, err := auth.LoadSecret("")
	if err != nil {
		log.Fatal(err)
	}
	v, err := auth.NewVerifier(auth.Config{HMACSecret: secret})
	if err != nil {
		log.Fatal(err)
	}
	poller, err := netpoll.New(nil)
	if err != nil {
		log.Fatal(err)
	}
	ln, err := net.Listen("tcp", *listen)
	if err != nil {
		log.Fatal(err)
	}
	go http.ListenAndServe(*admin, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {}))
	go func() {
		for {
			conn, err := ln.Accept()
			if err != nil {
				return
			}
			go serve(conn, v, poller)
		}
	}()
	ch := make(chan os.Signal, 1)
	signal.Notify(ch, os.Interrupt, syscall.SIGTERM)
	<-ch
}

func serve(conn net.Conn, v *auth.Verifier, poller netpoll.Poller) {
	var uid, token string
	u := ws.Upgrader{
		OnRequest: func(uri []byte) error {
			q, _ := parseQuery(string(uri))
			uid, token = q["uid"], q["token"]
			return nil
		},
		OnBeforeUpgrade: func() (ws.HandshakeHeader, error) {
			if err := v.Verify(token, uid); err != nil {
				return nil, ws.RejectConnectionError(ws.RejectionStatus(401))
			}
			return nil, nil
		},
	}
	if _, err := u.Upgrade(conn); err != nil {
		conn.Close()
		return
	}
	desc, err := netpoll.HandleRead(conn)
	if err != nil {
		conn.Close()
		return
	}
	poller.Start(desc, func(ev netpoll.Event) {
		if ev&(netpoll.EventReadHup|netpoll.EventHup) != 0 {
			poller.Stop(desc)
			conn.Close()
			return
		}
		go func() {
			if _, _, err := wsutil.ReadClientData(conn); err != nil {
				poller.Stop(desc)
				conn.Close()
				return
			}
			poller.Resume(desc)
		}()
	})
}

func parseQuery(uri string) (map[string]string, error) {
	out := map[string]string{}
	_, q, _ := strings.Cut(uri, "?")
	for q != "" {
		var kv string
		kv, q, _ = strings.Cut(q, "&")
		k, val, _ := strings.Cut(kv, "=")
		if _, seen := out[k]; !seen {
			out[k] = val
		}
	}
	return out, nil
}
