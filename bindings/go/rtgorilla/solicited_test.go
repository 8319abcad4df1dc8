package rtgorilla_test

import (
	"testing"
	"time"

	"github.com/gorilla/websocket"

	rt "github.com/ratethrottle/ratethrottle/bindings/go"
	"github.com/ratethrottle/ratethrottle/bindings/go/rtgorilla"
)

// With CountControlFrames, the pongs an honest client sends in answer to
// the Reader's own keep-alive pings are not the peer's traffic: they must
// not use its message budget, nor get it closed with 1008. Here the
// budget is 2 messages, the Reader pings every 25 ms, and the client
// (gorilla, answering pings while it reads) stays quiet for 10 pings.
func TestOwnPingsPongsNotCounted(t *testing.T) {
	l := limits()
	l.MessagesPerWindow = 2
	lim, url, errs := echoServerErrs(t, l, rtgorilla.Options{
		CountControlFrames: true, IdleTimeout: time.Second, PingInterval: 25 * time.Millisecond,
	})
	ws := dial(t, url)
	pings := make(chan struct{}, 64)
	ws.SetPingHandler(func(s string) error {
		pings <- struct{}{}
		return ws.WriteControl(websocket.PongMessage, []byte(s), time.Now().Add(5*time.Second))
	})
	done := make(chan error, 1)
	go func() { _, _, err := ws.ReadMessage(); done <- err }()
	for i := 0; i < 10; i++ {
		select {
		case <-pings:
		case err := <-done:
			s, _ := lim.Stats()
			t.Fatalf("after %d pings the socket ended: %v (server: %v, denied %v)", i, err, <-errs, s.Denied)
		case <-time.After(10 * time.Second):
			t.Fatal("no ping in 10 s")
		}
	}
	ws.Close()
	<-done
	s, _ := lim.Stats()
	if s.Denied[rt.ReasonMessageRate] != 0 {
		t.Fatalf("the client's pongs to the server's pings were denied: %v", s.Denied)
	}
}
