package rtcoder_test

import (
	"bytes"
	"context"
	"errors"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"
	"time"

	"github.com/coder/websocket"

	rt "github.com/ratethrottle/ratethrottle/bindings/go"
	"github.com/ratethrottle/ratethrottle/bindings/go/internal/poll"
	"github.com/ratethrottle/ratethrottle/bindings/go/rtcoder"
)

// With permessage-deflate, ReadLimit bounds the inflated message (coder's
// limit counts the bytes it inflates), as the README says: a message of a
// few hundred bytes on the wire that inflates past it is refused with 1009.
func TestReadLimitBoundsCompressedMessages(t *testing.T) {
	l := limits()
	l.MaxMessageSize = 1 << 20 // the engine would allow it: only ReadLimit can refuse it
	lim, err := rt.New(l)
	if err != nil {
		t.Fatal(err)
	}
	defer lim.Close()
	errs := make(chan error, 1)
	h := http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		c, err := websocket.Accept(w, r, &websocket.AcceptOptions{CompressionMode: websocket.CompressionContextTakeover})
		if err != nil {
			return
		}
		defer c.CloseNow()
		rd := rtcoder.NewReader(c, rt.ConnFromContext(r.Context()), rtcoder.Options{ReadLimit: 4096})
		_, _, err = rd.Read(r.Context())
		errs <- err
	})
	srv := httptest.NewServer(rt.Middleware(lim, rt.MiddlewareOptions{})(h))
	defer srv.Close()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	c, _, err := websocket.Dial(ctx, "ws"+strings.TrimPrefix(srv.URL, "http"), &websocket.DialOptions{CompressionMode: websocket.CompressionContextTakeover})
	if err != nil {
		t.Fatal(err)
	}
	defer c.CloseNow()
	if err := c.Write(ctx, websocket.MessageBinary, bytes.Repeat([]byte{0}, 512<<10)); err != nil {
		t.Fatal(err)
	}
	if err := poll.Next(t, errs, "the server's read"); !errors.Is(err, websocket.ErrMessageTooBig) {
		t.Fatalf("a 512 KiB message that compresses well passed ReadLimit 4096: %v", err)
	}
	if _, _, err := c.Read(ctx); websocket.CloseStatus(err) != websocket.StatusMessageTooBig {
		t.Fatalf("client saw %v, want close 1009", err)
	}
}
