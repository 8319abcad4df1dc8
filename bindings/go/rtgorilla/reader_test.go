package rtgorilla_test

import (
	"encoding/json"
	"errors"
	"fmt"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"
	"time"

	"github.com/gorilla/websocket"

	rt "github.com/ratethrottle/ratethrottle/bindings/go"
	"github.com/ratethrottle/ratethrottle/bindings/go/internal/rawclient"
	"github.com/ratethrottle/ratethrottle/bindings/go/rtgorilla"
)

// limits for real-clock tests: a window of 2^32-1 ms, so no window boundary
// passes during a test and every count is exact.
func limits() rt.Limits {
	l := rt.DefaultLimits()
	l.WindowMs = 1<<32 - 1
	l.MaxClients, l.MaxConnections = 64, 64
	return l
}

// echoServer: the middleware admits the upgrade, the Reader checks every
// message, allowed ones are echoed back.
func echoServer(t *testing.T, l rt.Limits, o rtgorilla.Options) (*rt.Limiter, string) {
	t.Helper()
	lim, url, _ := echoServerErrs(t, l, o)
	return lim, url
}

// echoServerErrs is echoServer that also sends, for each socket, the error
// that ended its ReadMessage loop (buffered: nothing blocks on it).
func echoServerErrs(t *testing.T, l rt.Limits, o rtgorilla.Options) (*rt.Limiter, string, <-chan error) {
	t.Helper()
	errs := make(chan error, 64)
	lim, err := rt.New(l)
	if err != nil {
		t.Fatal(err)
	}
	up := websocket.Upgrader{}
	h := http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		ws, err := up.Upgrade(w, r, nil)
		if err != nil {
			return
		}
		defer ws.Close()
		rd := rtgorilla.NewReader(ws, rt.ConnFromContext(r.Context()), o)
		for {
			mt, p, err := rd.ReadMessage()
			if err != nil {
				select {
				case errs <- err:
				default:
				}
				return
			}
			if err := ws.WriteMessage(mt, p); err != nil {
				return
			}
		}
	})
	srv := httptest.NewServer(rt.Middleware(lim, rt.MiddlewareOptions{})(h))
	t.Cleanup(func() {
		srv.Close()
		lim.Close()
	})
	return lim, "ws" + strings.TrimPrefix(srv.URL, "http"), errs
}

func dial(t *testing.T, url string) *websocket.Conn {
	t.Helper()
	ws, resp, err := websocket.DefaultDialer.Dial(url, nil)
	if err != nil {
		status := 0
		if resp != nil {
			status = resp.StatusCode
		}
		t.Fatalf("dial: %v (status %d)", err, status)
	}
	ws.SetReadDeadline(time.Now().Add(20 * time.Second))
	t.Cleanup(func() { ws.Close() })
	return ws
}

// waitLive polls (bounded) until the client has n live connections.
func waitLive(t *testing.T, lim *rt.Limiter, n int) {
	t.Helper()
	for i := 0; i < 2000; i++ {
		if lim.ClientConnections("127.0.0.1") == n {
			return
		}
		time.Sleep(5 * time.Millisecond)
	}
	t.Fatalf("live connections %d, want %d", lim.ClientConnections("127.0.0.1"), n)
}

func TestHonestClientUntouched(t *testing.T) {
	l := limits()
	l.MessagesPerWindow = 100
	lim, url := echoServer(t, l, rtgorilla.Options{})
	ws := dial(t, url)
	for i := 0; i < 20; i++ {
		msg := fmt.Sprintf("hello %d", i)
		ws.WriteMessage(websocket.TextMessage, []byte(msg))
		_, p, err := ws.ReadMessage()
		if err != nil || string(p) != msg {
			t.Fatalf("message %d: %q %v", i, p, err)
		}
	}
	s, _ := lim.Stats()
	if s.TotalMessages != 20 || s.Denied != ([rt.ReasonCount]uint64{}) {
		t.Fatalf("stats: %+v", s)
	}
}

func TestMessageFloodThrottled(t *testing.T) {
	l := limits()
	l.MessagesPerWindow = 5
	lim, url := echoServer(t, l, rtgorilla.Options{})
	ws := dial(t, url)
	for i := 0; i < 20; i++ {
		if err := ws.WriteMessage(websocket.TextMessage, []byte(fmt.Sprint("m", i))); err != nil {
			t.Fatal(err)
		}
	}
	echoes, denied := 0, 0
	for i := 0; i < 20; i++ {
		_, p, err := ws.ReadMessage()
		if err != nil {
			t.Fatalf("reply %d: %v", i, err)
		}
		if strings.HasPrefix(string(p), "m") {
			echoes++
			continue
		}
		var e struct {
			Error      string `json:"error"`
			RetryAfter int64  `json:"retry_after_ms"`
		}
		if err := json.Unmarshal(p, &e); err != nil || e.Error != "rate_limit_exceeded" || e.RetryAfter <= 0 {
			t.Fatalf("reply %q", p)
		}
		denied++
	}
	if echoes != 5 || denied != 15 {
		t.Fatalf("echoes %d denied %d, want 5 and 15", echoes, denied)
	}
	if s, _ := lim.Stats(); s.Denied[rt.ReasonMessageRate] != 15 {
		t.Fatalf("engine denied %d", s.Denied[rt.ReasonMessageRate])
	}
}

func TestOversizedClosesWith1009(t *testing.T) {
	l := limits()
	l.MaxMessageSize = 1024
	lim, url := echoServer(t, l, rtgorilla.Options{ReadLimit: 1 << 20})
	ws := dial(t, url)
	ws.WriteMessage(websocket.BinaryMessage, make([]byte, 1024)) // exactly the limit: fine
	if _, p, err := ws.ReadMessage(); err != nil || len(p) != 1024 {
		t.Fatalf("1024 bytes: %v", err)
	}
	ws.WriteMessage(websocket.BinaryMessage, make([]byte, 2000))
	_, _, err := ws.ReadMessage()
	var ce *websocket.CloseError
	if !errors.As(err, &ce) || ce.Code != websocket.CloseMessageTooBig || ce.Text != "message_too_large" {
		t.Fatalf("want close 1009, got %v", err)
	}
	waitLive(t, lim, 0) // the handler returned and the middleware released the connection
	if s, _ := lim.Stats(); s.Denied[rt.ReasonMessageTooLarge] != 1 {
		t.Fatalf("engine denied %d too large", s.Denied[rt.ReasonMessageTooLarge])
	}
}

func TestPolicyCloseWith1008(t *testing.T) {
	l := limits()
	l.MessagesPerWindow = 1
	_, url := echoServer(t, l, rtgorilla.Options{Policy: rt.MessagePolicy{OnDenied: rt.ActionClose}})
	ws := dial(t, url)
	ws.WriteMessage(websocket.TextMessage, []byte("one"))
	ws.WriteMessage(websocket.TextMessage, []byte("two"))
	if _, p, err := ws.ReadMessage(); err != nil || string(p) != "one" {
		t.Fatalf("first: %q %v", p, err)
	}
	_, _, err := ws.ReadMessage()
	var ce *websocket.CloseError
	if !errors.As(err, &ce) || ce.Code != websocket.ClosePolicyViolation {
		t.Fatalf("want close 1008, got %v", err)
	}
}

func TestConnectionSpamGets429(t *testing.T) {
	l := limits()
	l.ConnectionsPerWindow = 3
	_, url := echoServer(t, l, rtgorilla.Options{})
	for i := 0; i < 3; i++ {
		dial(t, url).Close()
	}
	_, resp, err := websocket.DefaultDialer.Dial(url, nil)
	if !errors.Is(err, websocket.ErrBadHandshake) || resp == nil || resp.StatusCode != 429 {
		t.Fatalf("4th dial: %v %v", err, resp)
	}
	if resp.Header.Get("Retry-After") == "" {
		t.Fatal("no Retry-After")
	}
}

func TestConcurrencyFreedOnClose(t *testing.T) {
	l := limits()
	l.MaxConcurrentConnections = 1
	lim, url := echoServer(t, l, rtgorilla.Options{})
	first := dial(t, url)
	_, resp, err := websocket.DefaultDialer.Dial(url, nil)
	if err == nil || resp == nil || resp.StatusCode != 429 {
		t.Fatalf("second concurrent dial: %v", err)
	}
	first.WriteMessage(websocket.CloseMessage, websocket.FormatCloseMessage(websocket.CloseNormalClosure, ""))
	first.Close()
	waitLive(t, lim, 0)
	third := dial(t, url)
	third.WriteMessage(websocket.TextMessage, []byte("hi"))
	if _, p, err := third.ReadMessage(); err != nil || string(p) != "hi" {
		t.Fatalf("after the first closed: %q %v", p, err)
	}
}

// An upgrade the middleware admitted but the handler refused (Origin check):
// the lease is released once, when the handler returns.
func TestRefusedUpgradeReleasesLease(t *testing.T) {
	lim, err := rt.New(limits())
	if err != nil {
		t.Fatal(err)
	}
	defer lim.Close()
	up := websocket.Upgrader{CheckOrigin: func(r *http.Request) bool { return false }}
	h := http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if ws, err := up.Upgrade(w, r, nil); err == nil {
			ws.Close()
		}
	})
	srv := httptest.NewServer(rt.Middleware(lim, rt.MiddlewareOptions{})(h))
	defer srv.Close()
	url := "ws" + strings.TrimPrefix(srv.URL, "http")
	for i := 0; i < 10; i++ {
		_, resp, err := websocket.DefaultDialer.Dial(url, http.Header{"Origin": {"http://evil.example"}})
		if err == nil || resp == nil || resp.StatusCode != http.StatusForbidden {
			t.Fatalf("dial %d: %v", i, err)
		}
	}
	s, _ := lim.Stats()
	if s.ActiveConnections != 0 || s.ConnectionsAllowed != 10 || lim.ClientConnections("127.0.0.1") != 0 {
		t.Fatalf("after refused upgrades: %+v", s)
	}
}

// W3: a ping flood. With CountControlFrames each ping is checked like a
// message, so the 6th of a 5-message budget closes the socket with 1008;
// without it the same pings are answered and the socket stays open.
func TestPingFloodCountsOnlyWhenAsked(t *testing.T) {
	for _, count := range []bool{true, false} {
		t.Run(fmt.Sprintf("count=%v", count), func(t *testing.T) {
			l := limits()
			l.MessagesPerWindow = 5
			lim, url, errs := echoServerErrs(t, l, rtgorilla.Options{CountControlFrames: count, IdleTimeout: -1})
			ws := dial(t, url)
			pongs := make(chan struct{}, 16)
			ws.SetPongHandler(func(string) error { pongs <- struct{}{}; return nil })
			for i := 0; i < 10; i++ {
				if err := ws.WriteControl(websocket.PingMessage, []byte("ping"), time.Now().Add(5*time.Second)); err != nil {
					break // the server closed after the denial
				}
			}
			if count {
				_, _, err := ws.ReadMessage()
				var ce *websocket.CloseError
				if !errors.As(err, &ce) || ce.Code != rt.ClosePolicyViolation || ce.Text != rt.ReasonMessageRate.String() {
					t.Fatalf("want close 1008 %s, got %v", rt.ReasonMessageRate, err)
				}
				var de *rt.MessageDeniedError
				if err := <-errs; !errors.As(err, &de) || de.CloseCode != rt.ClosePolicyViolation {
					t.Fatalf("server: %v", err)
				}
				if n := len(pongs); n != 5 {
					t.Fatalf("%d pongs before the close, want the 5 pings within the budget", n)
				}
				s, _ := lim.Stats()
				if s.Denied[rt.ReasonMessageRate] != 1 {
					t.Fatalf("stats: %+v", s)
				}
				return
			}
			// Not counted: all 10 pings answered, and a message still passes.
			ws.WriteMessage(websocket.TextMessage, []byte("after"))
			_, p, err := ws.ReadMessage()
			if err != nil || string(p) != "after" {
				t.Fatalf("echo after pings: %q %v", p, err)
			}
			if n := len(pongs); n != 10 {
				t.Fatalf("%d pongs, want 10", n)
			}
		})
	}
}

// A client that floods and never reads: the error replies fill the TCP
// buffers until the reply's write blocks, where no idle timeout applies.
// The reply timeout ends the socket and frees the slot.
func TestNonReadingFlooderEndedByReplyTimeout(t *testing.T) {
	l := limits()
	l.MessagesPerWindow = 1
	lim, url, errs := echoServerErrs(t, l, rtgorilla.Options{ReplyTimeout: 300 * time.Millisecond, IdleTimeout: -1})
	c, sent := rawclient.FloodWithoutReading(t, url)
	defer c.Close()
	select {
	case err := <-errs:
		if !errors.Is(err, rt.ErrReplyTimeout) {
			t.Fatalf("ReadMessage returned %v, want an error wrapping ErrReplyTimeout", err)
		}
	case <-time.After(30 * time.Second):
		t.Fatalf("after %d messages the handler is still blocked in the reply's write", sent)
	}
	waitLive(t, lim, 0)
}
