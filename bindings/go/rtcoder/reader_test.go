package rtcoder_test

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"
	"time"

	"github.com/coder/websocket"

	rt "github.com/ratethrottle/ratethrottle/bindings/go"
	"github.com/ratethrottle/ratethrottle/bindings/go/internal/rawclient"
	"github.com/ratethrottle/ratethrottle/bindings/go/rtcoder"
)

func limits() rt.Limits {
	l := rt.DefaultLimits()
	l.WindowMs = 1<<32 - 1 // no window boundary passes during a test
	l.MaxClients, l.MaxConnections = 64, 64
	return l
}

func echoServer(t *testing.T, l rt.Limits, o rtcoder.Options) (*rt.Limiter, string) {
	t.Helper()
	lim, url, _ := echoServerErrs(t, l, o)
	return lim, url
}

// echoServerErrs is echoServer that also sends, for each socket, the error
// that ended its Read loop (buffered: nothing blocks on it).
func echoServerErrs(t *testing.T, l rt.Limits, o rtcoder.Options) (*rt.Limiter, string, <-chan error) {
	t.Helper()
	errs := make(chan error, 64)
	lim, err := rt.New(l)
	if err != nil {
		t.Fatal(err)
	}
	h := echoHandler(o, errs, 0)
	srv := httptest.NewServer(rt.Middleware(lim, rt.MiddlewareOptions{})(h))
	t.Cleanup(func() {
		srv.Close()
		lim.Close()
	})
	return lim, "ws" + strings.TrimPrefix(srv.URL, "http"), errs
}

// echoHandler reads each socket with a Reader and echoes every allowed
// message, after spending delay outside Read. It sends the error that ended
// a socket's Read loop to errs when there is room (nil errs: none sent).
func echoHandler(o rtcoder.Options, errs chan<- error, delay time.Duration) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		c, err := websocket.Accept(w, r, nil)
		if err != nil {
			return
		}
		defer c.CloseNow()
		rd := rtcoder.NewReader(c, rt.ConnFromContext(r.Context()), o)
		for {
			mt, p, err := rd.Read(r.Context())
			if err != nil {
				select {
				case errs <- err:
				default:
				}
				return
			}
			time.Sleep(delay)
			if err := c.Write(r.Context(), mt, p); err != nil {
				return
			}
		}
	})
}

func dial(t *testing.T, ctx context.Context, url string) *websocket.Conn {
	t.Helper()
	c, _, err := websocket.Dial(ctx, url, nil)
	if err != nil {
		t.Fatal(err)
	}
	c.SetReadLimit(-1)
	t.Cleanup(func() { c.CloseNow() })
	return c
}

func TestHonestAndFlood(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	l := limits()
	l.MessagesPerWindow = 10
	lim, url := echoServer(t, l, rtcoder.Options{ReadLimit: 1 << 20})
	honest := dial(t, ctx, url)
	for i := 0; i < 10; i++ {
		msg := fmt.Sprint("hello ", i)
		honest.Write(ctx, websocket.MessageText, []byte(msg))
		if _, p, err := honest.Read(ctx); err != nil || string(p) != msg {
			t.Fatalf("honest %d: %q %v", i, p, err)
		}
	}
	flood := dial(t, ctx, url)
	for i := 0; i < 30; i++ {
		flood.Write(ctx, websocket.MessageText, []byte(fmt.Sprint("m", i)))
	}
	echoes, denied := 0, 0
	for i := 0; i < 30; i++ {
		_, p, err := flood.Read(ctx)
		if err != nil {
			t.Fatal(err)
		}
		var e struct {
			Error string `json:"error"`
		}
		switch {
		case strings.HasPrefix(string(p), "m"):
			echoes++
		case json.Unmarshal(p, &e) == nil && e.Error == "rate_limit_exceeded":
			denied++
		default:
			t.Fatalf("reply %q", p)
		}
	}
	if echoes != 10 || denied != 20 {
		t.Fatalf("flood: %d echoes %d denied", echoes, denied)
	}
	// The honest connection has its own budget, untouched by the flood.
	if s, _ := lim.Stats(); s.Denied[rt.ReasonMessageRate] != 20 || s.TotalMessages != 20 {
		t.Fatalf("stats %+v", s)
	}
}

func TestOversizedClosesWith1009(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	l := limits()
	l.MaxMessageSize = 40000 // above coder's own 32768 default: the Reader's ReadLimit lets the engine decide
	lim, url := echoServer(t, l, rtcoder.Options{ReadLimit: 1 << 20})
	c := dial(t, ctx, url)
	c.Write(ctx, websocket.MessageBinary, make([]byte, 40000))
	if _, p, err := c.Read(ctx); err != nil || len(p) != 40000 {
		t.Fatalf("40000 bytes: %v", err)
	}
	c.Write(ctx, websocket.MessageBinary, make([]byte, 40001))
	_, _, err := c.Read(ctx)
	if websocket.CloseStatus(err) != websocket.StatusMessageTooBig {
		t.Fatalf("want 1009, got %v", err)
	}
	for i := 0; i < 2000 && lim.ClientConnections("127.0.0.1") != 0; i++ {
		time.Sleep(5 * time.Millisecond)
	}
	if n := lim.ClientConnections("127.0.0.1"); n != 0 {
		t.Fatalf("%d live after close", n)
	}
	if s, _ := lim.Stats(); s.Denied[rt.ReasonMessageTooLarge] != 1 {
		t.Fatalf("engine denied %d", s.Denied[rt.ReasonMessageTooLarge])
	}
}

func TestPolicyClose1008AndSpam429(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	l := limits()
	l.MessagesPerWindow = 1
	l.ConnectionsPerWindow = 2
	_, url := echoServer(t, l, rtcoder.Options{Policy: rt.MessagePolicy{OnDenied: rt.ActionClose}})
	c := dial(t, ctx, url)
	c.Write(ctx, websocket.MessageText, []byte("one"))
	c.Write(ctx, websocket.MessageText, []byte("two"))
	if _, p, err := c.Read(ctx); err != nil || string(p) != "one" {
		t.Fatalf("%q %v", p, err)
	}
	if _, _, err := c.Read(ctx); websocket.CloseStatus(err) != websocket.StatusPolicyViolation {
		t.Fatalf("want 1008, got %v", err)
	}
	dial(t, ctx, url).Close(websocket.StatusNormalClosure, "")
	_, resp, err := websocket.Dial(ctx, url, nil)
	if err == nil || resp == nil || resp.StatusCode != 429 || resp.Header.Get("Retry-After") == "" {
		t.Fatalf("3rd dial: %v %v", err, resp)
	}
}

// A client that floods and never reads: the error replies fill the TCP
// buffers until the reply's write blocks, where no idle timeout applies.
// The reply timeout ends the socket and frees the slot.
func TestNonReadingFlooderEndedByReplyTimeout(t *testing.T) {
	l := limits()
	l.MessagesPerWindow = 1
	lim, url, errs := echoServerErrs(t, l, rtcoder.Options{ReplyTimeout: 300 * time.Millisecond, IdleTimeout: -1})
	c, sent := rawclient.FloodWithoutReading(t, url)
	defer c.Close()
	select {
	case err := <-errs:
		if !errors.Is(err, rt.ErrReplyTimeout) {
			t.Fatalf("Read returned %v, want an error wrapping ErrReplyTimeout", err)
		}
	case <-time.After(30 * time.Second):
		t.Fatalf("after %d messages the handler is still blocked in the reply's write", sent)
	}
	deadline := time.Now().Add(10 * time.Second)
	for lim.ClientConnections("127.0.0.1") != 0 {
		if time.Now().After(deadline) {
			t.Fatal("the slot was not freed")
		}
		time.Sleep(10 * time.Millisecond)
	}
}
