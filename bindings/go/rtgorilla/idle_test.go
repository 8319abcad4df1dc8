package rtgorilla_test

import (
	"errors"
	"os"
	"sync/atomic"
	"testing"
	"time"

	"github.com/gorilla/websocket"

	rt "github.com/ratethrottle/ratethrottle/bindings/go"
	"github.com/ratethrottle/ratethrottle/bindings/go/internal/child"
	"github.com/ratethrottle/ratethrottle/bindings/go/internal/poll"
	"github.com/ratethrottle/ratethrottle/bindings/go/internal/rawws"
	"github.com/ratethrottle/ratethrottle/bindings/go/rtgorilla"
)

// The child of TestKilledClientFreed: the test binary re-executed with
// RT_GORILLA_CLIENT set to a URL. It connects with gorilla, says "ready" and
// reads (answering pings) until it is killed.
func TestMain(m *testing.M) {
	child.Serve("RT_GORILLA_CLIENT", func(url string) (func() error, error) {
		ws, _, err := websocket.DefaultDialer.Dial(url, nil)
		if err != nil {
			return nil, err
		}
		return func() error { _, _, err := ws.ReadMessage(); return err }, nil
	})
	os.Exit(m.Run())
}

func waitPingersStopped(t *testing.T) {
	t.Helper()
	poll.Until(t, "pingers still running", func() bool { return rtgorilla.LivePingers() == 0 })
}

// W7: a client that completes the handshake and then goes silent (never
// reads, writes, answers a ping nor closes) is ended by the idle timeout:
// its slot returns by itself, the socket is closed hard (no close frame),
// and the same client is admitted again with max concurrency 1.
func TestHalfOpenClientFreedByIdleTimeout(t *testing.T) {
	l := limits()
	l.MaxConcurrentConnections = 1
	lim, url, errs := echoServerErrs(t, l, rtgorilla.Options{IdleTimeout: 300 * time.Millisecond})
	raw, err := rawws.Dial(url, 10*time.Second)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { raw.Close() })
	if n := lim.ClientConnections("127.0.0.1"); n != 1 {
		t.Fatalf("live connections %d after the handshake, want 1", n)
	}
	poll.Until(t, "the half-open connection still holds its slot", func() bool {
		return lim.ClientConnections("127.0.0.1") == 0
	})
	if err := poll.Next(t, errs, "the handler's error"); !errors.Is(err, rt.ErrIdleTimeout) {
		t.Fatalf("ReadMessage ended with %v, want rt.ErrIdleTimeout", err)
	}
	raw.OnlyPingsThenEOF(t)
	waitPingersStopped(t)

	ws := dial(t, url) // admitted again: the slot was freed
	ws.WriteMessage(websocket.TextMessage, []byte("back"))
	if _, p, err := ws.ReadMessage(); err != nil || string(p) != "back" {
		t.Fatalf("after the idle timeout: %q %v", p, err)
	}
}

// An honest client that sends nothing but whose library answers pings stays
// connected across several idle timeouts.
func TestIdleHonestClientStaysConnected(t *testing.T) {
	const idle = 600 * time.Millisecond
	lim, url := echoServer(t, limits(), rtgorilla.Options{IdleTimeout: idle, PingInterval: 150 * time.Millisecond})
	ws := dial(t, url)
	var pings atomic.Int64
	answer := ws.PingHandler()
	ws.SetPingHandler(func(s string) error { pings.Add(1); return answer(s) })
	msgs := make(chan string, 1)
	go func() { // gorilla answers pings while a read runs
		defer close(msgs)
		for {
			_, p, err := ws.ReadMessage()
			if err != nil {
				return
			}
			msgs <- string(p)
		}
	}()
	for end := time.Now().Add(5 * idle); time.Now().Before(end); {
		if n := lim.ClientConnections("127.0.0.1"); n != 1 {
			t.Fatalf("the honest idle client was dropped (live %d)", n)
		}
		time.Sleep(20 * time.Millisecond)
	}
	if err := ws.WriteMessage(websocket.TextMessage, []byte("still here")); err != nil {
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
	if pings.Load() == 0 {
		t.Fatal("the server sent no ping")
	}
	if rtgorilla.LivePingers() < 1 {
		t.Fatal("no pinger running for the live socket")
	}
}

// A negative IdleTimeout turns it off: a silent client keeps its slot and
// gets no pings.
func TestIdleTimeoutDisabled(t *testing.T) {
	waitPingersStopped(t) // sockets of earlier tests
	lim, url := echoServer(t, limits(), rtgorilla.Options{IdleTimeout: -1, PingInterval: 50 * time.Millisecond})
	raw, err := rawws.Dial(url, 10*time.Second)
	if err != nil {
		t.Fatal(err)
	}
	defer raw.Close()
	time.Sleep(time.Second)
	if n := lim.ClientConnections("127.0.0.1"); n != 1 || rtgorilla.LivePingers() != 0 {
		t.Fatalf("disabled: live %d, pingers %d; want 1 and 0", n, rtgorilla.LivePingers())
	}
}

// W7: a killed client process (the kernel closes its socket, no close
// frame) frees its slot through the socket's close, well before the
// default 60 s idle timeout.
func TestKilledClientFreed(t *testing.T) {
	l := limits()
	l.MaxConcurrentConnections = 1
	lim, url, errs := echoServerErrs(t, l, rtgorilla.Options{})
	kill := child.Start(t, "RT_GORILLA_CLIENT", url)
	poll.Until(t, "the child's connection is not live", func() bool {
		return lim.ClientConnections("127.0.0.1") == 1
	})
	kill()
	poll.Until(t, "the killed client's slot was not freed", func() bool {
		return lim.ClientConnections("127.0.0.1") == 0
	})
	if err := poll.Next(t, errs, "the handler's error"); errors.Is(err, rt.ErrIdleTimeout) {
		t.Fatalf("freed by the idle timeout, want the socket's close: %v", err)
	}
	waitPingersStopped(t)
	ws := dial(t, url)
	ws.WriteMessage(websocket.TextMessage, []byte("next"))
	if _, p, err := ws.ReadMessage(); err != nil || string(p) != "next" {
		t.Fatalf("after the kill: %q %v", p, err)
	}
}

// A large message that arrives slowly but steadily (frames spaced below the
// idle timeout, the whole taking longer than it) is not cut: every chunk of
// data restarts the idle clock. No pings here, and the client does not read
// meanwhile, so only the data keeps the socket alive.
func TestSlowMessageNotCut(t *testing.T) {
	const idle = 600 * time.Millisecond
	_, url := echoServer(t, limits(), rtgorilla.Options{IdleTimeout: idle, PingInterval: -1})
	ws := dial(t, url)
	w, err := ws.NextWriter(websocket.BinaryMessage)
	if err != nil {
		t.Fatal(err)
	}
	chunk := make([]byte, 5000) // above gorilla's 4096-byte write buffer: each Write sends a frame
	for i := 0; i < 8; i++ {
		if _, err := w.Write(chunk); err != nil {
			t.Fatal(err)
		}
		time.Sleep(idle / 4)
	}
	if err := w.Close(); err != nil {
		t.Fatal(err)
	}
	if _, p, err := ws.ReadMessage(); err != nil || len(p) != 8*len(chunk) {
		t.Fatalf("echo of the slow message: %d bytes, %v", len(p), err)
	}
}
