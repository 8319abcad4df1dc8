package rtcoder_test

import (
	"context"
	"errors"
	"net/http/httptest"
	"os"
	"strings"
	"testing"
	"time"

	"github.com/coder/websocket"

	rt "github.com/ratethrottle/ratethrottle/bindings/go"
	"github.com/ratethrottle/ratethrottle/bindings/go/internal/child"
	"github.com/ratethrottle/ratethrottle/bindings/go/internal/poll"
	"github.com/ratethrottle/ratethrottle/bindings/go/internal/rawws"
	"github.com/ratethrottle/ratethrottle/bindings/go/rtcoder"
)

// The child of TestKilledClientFreed: the test binary re-executed with
// RT_CODER_CLIENT set to a URL. It connects with coder, says "ready" and
// reads (answering pings) until it is killed.
func TestMain(m *testing.M) {
	child.Serve("RT_CODER_CLIENT", func(url string) (func() error, error) {
		c, _, err := websocket.Dial(context.Background(), url, nil)
		if err != nil {
			return nil, err
		}
		return func() error { _, _, err := c.Read(context.Background()); return err }, nil
	})
	os.Exit(m.Run())
}

func waitPingersStopped(t *testing.T) {
	t.Helper()
	poll.Until(t, "watchdogs still running", func() bool { return rtcoder.LivePingers() == 0 })
}

func live(lim *rt.Limiter) func() int {
	return func() int { return lim.ClientConnections("127.0.0.1") }
}

// echoOnce sends msg on c and waits (bounded) for its echo.
func echoOnce(t *testing.T, c *websocket.Conn, msg string) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	if err := c.Write(ctx, websocket.MessageText, []byte(msg)); err != nil {
		t.Fatal(err)
	}
	if _, p, err := c.Read(ctx); err != nil || string(p) != msg {
		t.Fatalf("echo of %q: %q %v", msg, p, err)
	}
}

// W7: a client that completes the handshake and then goes silent (never
// reads, writes, answers a ping nor closes) is ended by the idle timeout:
// its slot returns by itself, the socket is closed hard (no close frame),
// and the same client is admitted again with max concurrency 1.
func TestHalfOpenClientFreedByIdleTimeout(t *testing.T) {
	l := limits()
	l.MaxConcurrentConnections = 1
	lim, url, errs := echoServerErrs(t, l, rtcoder.Options{IdleTimeout: 300 * time.Millisecond})
	raw, err := rawws.Dial(url, 10*time.Second)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { raw.Close() })
	if n := live(lim)(); n != 1 {
		t.Fatalf("live connections %d after the handshake, want 1", n)
	}
	poll.Until(t, "the half-open connection still holds its slot", func() bool { return live(lim)() == 0 })
	if err := poll.Next(t, errs, "the handler's error"); !errors.Is(err, rt.ErrIdleTimeout) {
		t.Fatalf("Read ended with %v, want rt.ErrIdleTimeout", err)
	}
	raw.OnlyPingsThenEOF(t)
	waitPingersStopped(t)

	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	echoOnce(t, dial(t, ctx, url), "back") // admitted again: the slot was freed
}

// An honest client that sends nothing but whose library answers pings (coder
// does while a Read runs) stays connected across several idle timeouts.
func TestIdleHonestClientStaysConnected(t *testing.T) {
	const idle = 600 * time.Millisecond
	lim, url := echoServer(t, limits(), rtcoder.Options{IdleTimeout: idle, PingInterval: 150 * time.Millisecond})
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	c := dial(t, ctx, url)
	msgs := make(chan string, 1)
	go func() {
		defer close(msgs)
		for {
			_, p, err := c.Read(ctx)
			if err != nil {
				return
			}
			msgs <- string(p)
		}
	}()
	for end := time.Now().Add(5 * idle); time.Now().Before(end); {
		if n := live(lim)(); n != 1 {
			t.Fatalf("the honest idle client was dropped (live %d)", n)
		}
		time.Sleep(20 * time.Millisecond)
	}
	if err := c.Write(ctx, websocket.MessageText, []byte("still here")); err != nil {
		t.Fatal(err)
	}
	select {
	case p, ok := <-msgs:
		if !ok || p != "still here" {
			t.Fatalf("echo %q (open %v)", p, ok)
		}
	case <-time.After(10 * time.Second):
		t.Fatal("no echo")
	}
	if rtcoder.LivePingers() < 1 {
		t.Fatal("no watchdog running for the live socket")
	}
}

// Time the handler spends outside Read (processing a message) does not
// count as idle, even when it is longer than the idle timeout.
func TestIdleClockOnlyWhileReading(t *testing.T) {
	lim, err := rt.New(limits())
	if err != nil {
		t.Fatal(err)
	}
	defer lim.Close()
	const idle = 200 * time.Millisecond
	srv, url := slowServer(t, lim, rtcoder.Options{IdleTimeout: idle, PingInterval: -1}, 3*idle)
	defer srv()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	c := dial(t, ctx, url)
	echoOnce(t, c, "slow") // answered after 3 idle timeouts spent outside Read
}

// A negative IdleTimeout turns it off: a silent client keeps its slot and
// gets no pings.
func TestIdleTimeoutDisabled(t *testing.T) {
	waitPingersStopped(t) // sockets of earlier tests
	lim, url := echoServer(t, limits(), rtcoder.Options{IdleTimeout: -1, PingInterval: 50 * time.Millisecond})
	raw, err := rawws.Dial(url, 10*time.Second)
	if err != nil {
		t.Fatal(err)
	}
	defer raw.Close()
	time.Sleep(time.Second)
	if n := live(lim)(); n != 1 || rtcoder.LivePingers() != 0 {
		t.Fatalf("disabled: live %d, watchdogs %d; want 1 and 0", n, rtcoder.LivePingers())
	}
}

// W7: a killed client process (the kernel closes its socket, no close
// frame) frees its slot through the socket's close, well before the
// default 60 s idle timeout.
func TestKilledClientFreed(t *testing.T) {
	l := limits()
	l.MaxConcurrentConnections = 1
	lim, url, errs := echoServerErrs(t, l, rtcoder.Options{ReadLimit: 1 << 20})
	kill := child.Start(t, "RT_CODER_CLIENT", url)
	poll.Until(t, "the child's connection is not live", func() bool { return live(lim)() == 1 })
	kill()
	poll.Until(t, "the killed client's slot was not freed", func() bool { return live(lim)() == 0 })
	if err := poll.Next(t, errs, "the handler's error"); errors.Is(err, rt.ErrIdleTimeout) {
		t.Fatalf("freed by the idle timeout, want the socket's close: %v", err)
	}
	waitPingersStopped(t)
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	echoOnce(t, dial(t, ctx, url), "next")
}

// slowServer echoes each message after spending delay outside Read; it
// returns a stop function and the URL.
func slowServer(t *testing.T, lim *rt.Limiter, o rtcoder.Options, delay time.Duration) (func(), string) {
	t.Helper()
	h := echoHandler(o, nil, delay)
	srv := httptest.NewServer(rt.Middleware(lim, rt.MiddlewareOptions{})(h))
	return srv.Close, "ws" + strings.TrimPrefix(srv.URL, "http")
}

// A large message that arrives slowly but steadily (frames spaced below the
// idle timeout, the whole taking longer than it) is not cut: every chunk of
// data restarts the idle clock. No pings here, so only the data keeps the
// socket alive.
func TestSlowMessageNotCut(t *testing.T) {
	const idle = 600 * time.Millisecond
	_, url := echoServer(t, limits(), rtcoder.Options{IdleTimeout: idle, PingInterval: -1, ReadLimit: 1 << 20})
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	c := dial(t, ctx, url)
	w, err := c.Writer(ctx, websocket.MessageBinary)
	if err != nil {
		t.Fatal(err)
	}
	chunk := make([]byte, 5000) // each Write sends a frame
	for i := 0; i < 8; i++ {
		if _, err := w.Write(chunk); err != nil {
			t.Fatal(err)
		}
		time.Sleep(idle / 4)
	}
	if err := w.Close(); err != nil {
		t.Fatal(err)
	}
	if _, p, err := c.Read(ctx); err != nil || len(p) != 8*len(chunk) {
		t.Fatalf("echo of the slow message: %d bytes, %v", len(p), err)
	}
}
