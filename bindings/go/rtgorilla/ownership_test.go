package rtgorilla_test

import (
	"context"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"
	"time"

	"github.com/gorilla/websocket"

	rt "github.com/ratethrottle/ratethrottle/bindings/go"
	"github.com/ratethrottle/ratethrottle/bindings/go/internal/poll"
	"github.com/ratethrottle/ratethrottle/bindings/go/rtgorilla"
)

// A handler that hands its socket to a goroutine and returns at once. With
// ConnFromContext the middleware frees the slot when the handler returns,
// while the socket is still open (its next message finds the Conn closed:
// 1011); with TakeConn the slot stays taken until the goroutine ends the
// socket and closes the Conn.
func TestHandlerReturningEarly(t *testing.T) {
	for _, take := range []bool{false, true} {
		name := map[bool]string{false: "ConnFromContext", true: "TakeConn"}[take]
		t.Run(name, func(t *testing.T) {
			lim, err := rt.New(limits())
			if err != nil {
				t.Fatal(err)
			}
			defer lim.Close()
			returned := make(chan struct{}, 1)
			up := websocket.Upgrader{}
			h := http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
				ws, err := up.Upgrade(w, r, nil)
				if err != nil {
					return
				}
				conn := rt.ConnFromContext(r.Context())
				if take {
					conn = rt.TakeConn(r.Context())
				}
				go func() {
					defer ws.Close()
					if take {
						defer conn.Close()
					}
					rd := rtgorilla.NewReader(ws, conn, rtgorilla.Options{})
					for {
						mt, p, err := rd.ReadMessage()
						if err != nil {
							return
						}
						if ws.WriteMessage(mt, p) != nil {
							return
						}
					}
				}()
				returned <- struct{}{}
			})
			srv := httptest.NewServer(rt.Middleware(lim, rt.MiddlewareOptions{})(h))
			defer srv.Close()
			ws := dial(t, "ws"+strings.TrimPrefix(srv.URL, "http"))
			poll.Next(t, returned, "the handler returned")
			if !take {
				poll.Until(t, "the slot freed when the handler returned", func() bool {
					return lim.ClientConnections("127.0.0.1") == 0
				})
			} else {
				time.Sleep(20 * time.Millisecond) // time for a wrong release to happen
			}
			live := lim.ClientConnections("127.0.0.1")
			ws.WriteMessage(websocket.TextMessage, []byte("hi"))
			_, p, rerr := ws.ReadMessage()
			if !take {
				if ce, ok := rerr.(*websocket.CloseError); live != 0 || !ok || ce.Code != rt.CloseInternalError {
					t.Fatalf("live %d, read %q %v: want 0 and a 1011 close (the pitfall TakeConn avoids)", live, p, rerr)
				}
				return
			}
			if live != 1 || rerr != nil || string(p) != "hi" {
				t.Fatalf("live %d while the socket is open, read %q %v", live, p, rerr)
			}
			ws.Close()
			poll.Until(t, "the slot freed after the goroutine ended the socket", func() bool {
				return lim.ClientConnections("127.0.0.1") == 0
			})
		})
	}
	if c := rt.TakeConn(context.Background()); c != nil {
		t.Fatal("TakeConn outside Middleware")
	}
}
