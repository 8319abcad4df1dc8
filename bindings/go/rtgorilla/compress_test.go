package rtgorilla_test

import (
	"bytes"
	"errors"
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

// With permessage-deflate, gorilla's SetReadLimit counts the compressed
// bytes on the wire, not the message: ReadLimit must still bound the
// message the Reader buffers (a decompression bomb), with and without the
// idle timeout, and close with 1009 as gorilla does for its own limit.
func TestReadLimitBoundsCompressedMessages(t *testing.T) {
	for _, idle := range []time.Duration{0, -1} {
		l := limits()
		l.MaxMessageSize = 1 << 20 // the engine would allow it: only ReadLimit can refuse it
		lim, err := rt.New(l)
		if err != nil {
			t.Fatal(err)
		}
		errs := make(chan error, 1)
		got := make(chan int, 1)
		up := websocket.Upgrader{EnableCompression: true}
		h := http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
			ws, err := up.Upgrade(w, r, nil)
			if err != nil {
				return
			}
			defer ws.Close()
			rd := rtgorilla.NewReader(ws, rt.ConnFromContext(r.Context()), rtgorilla.Options{ReadLimit: 4096, IdleTimeout: idle})
			_, p, err := rd.ReadMessage()
			got <- len(p)
			errs <- err
		})
		srv := httptest.NewServer(rt.Middleware(lim, rt.MiddlewareOptions{})(h))
		d := websocket.Dialer{EnableCompression: true, HandshakeTimeout: 10 * time.Second}
		ws, _, err := d.Dial("ws"+strings.TrimPrefix(srv.URL, "http"), nil)
		if err != nil {
			t.Fatal(err)
		}
		// 512 KiB of zeroes compress to about 500 bytes on the wire.
		if err := ws.WriteMessage(websocket.BinaryMessage, bytes.Repeat([]byte{0}, 512<<10)); err != nil {
			t.Fatal(err)
		}
		n := poll.Next(t, got, "the server's read")
		err = poll.Next(t, errs, "the server's read error")
		if n != 0 || !errors.Is(err, websocket.ErrReadLimit) {
			t.Errorf("idle %v: ReadLimit 4096 let a %d-byte compressed message through (err %v)", idle, n, err)
		}
		ws.SetReadDeadline(time.Now().Add(10 * time.Second))
		_, _, cerr := ws.ReadMessage()
		if ce, ok := cerr.(*websocket.CloseError); err != nil && (!ok || ce.Code != websocket.CloseMessageTooBig) {
			t.Errorf("idle %v: client saw %v, want close 1009", idle, cerr)
		}
		ws.Close()
		srv.Close()
		lim.Close()
	}
}
