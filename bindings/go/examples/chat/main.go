// Command chat is a small WebSocket chat server limited by ratethrottle:
// the middleware admits connections (429 with Retry-After on spam), a
// gorilla read helper checks every message (a flood gets error replies, an
// oversized message closes the socket with 1009), and each message is also
// checked against the room's key so one room cannot be flooded by many
// connections. GET /metrics serves the Prometheus text.
//
//	go run ./examples/chat                 # serve on 127.0.0.1:8080 (ws://127.0.0.1:8080/ws)
//	go run ./examples/chat -demo           # serve on a free port, flood it, print what happened, exit
package main

import (
	"encoding/json"
	"flag"
	"fmt"
	"log"
	"net"
	"net/http"
	"strings"
	"sync"
	"time"

	"github.com/gorilla/websocket"

	rt "github.com/ratethrottle/ratethrottle/bindings/go"
	"github.com/ratethrottle/ratethrottle/bindings/go/rtgorilla"
)

// Limits of the example: the engine's "moderate" preset for chat, with a
// small room budget so the demo shows it.
func chatLimits() rt.Limits {
	l := rt.ModerateLimits()        // 10 connects/min, 5 live, 100 msgs/min, 1 MiB/min, 10 KiB messages
	l.MessagesPerWindow = 20        // per connection per minute
	l.ClientMessagesPerWindow = 200 // per client and per room key per minute
	l.MaxClients, l.MaxConnections = 4096, 4096
	return l
}

// hub is one chat room: every allowed message goes to every member.
type hub struct {
	mu      sync.Mutex
	members map[*member]struct{}
}

type member struct {
	send chan []byte // written by one goroutine per member (gorilla allows one writer)
}

func (h *hub) join(m *member)  { h.mu.Lock(); h.members[m] = struct{}{}; h.mu.Unlock() }
func (h *hub) leave(m *member) { h.mu.Lock(); delete(h.members, m); h.mu.Unlock() }

func (h *hub) broadcast(msg []byte) {
	h.mu.Lock()
	defer h.mu.Unlock()
	for m := range h.members {
		select {
		case m.send <- msg:
		default: // a slow reader loses messages rather than stalling the room
		}
	}
}

// newServer returns the chat's HTTP handler: /ws (the chat) and /metrics.
func newServer(lim *rt.Limiter) http.Handler {
	room := &hub{members: map[*member]struct{}{}}
	upgrader := websocket.Upgrader{}
	ws := http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		c, err := upgrader.Upgrade(w, r, nil)
		if err != nil {
			return // the middleware releases the connection when we return
		}
		defer c.Close()
		m := &member{send: make(chan []byte, 64)}
		room.join(m)
		defer room.leave(m)
		done := make(chan struct{})
		defer close(done)
		writerDone := make(chan struct{})
		go func() { // the only writer of c
			defer close(writerDone)
			for {
				select {
				case msg := <-m.send:
					c.SetWriteDeadline(time.Now().Add(5 * time.Second))
					if c.WriteMessage(websocket.TextMessage, msg) != nil {
						return
					}
				case <-done:
					return
				}
			}
		}()
		rd := rtgorilla.NewReader(c, rt.ConnFromContext(r.Context()), rtgorilla.Options{
			ReadLimit: 1 << 20, // memory guard above MaxMessageSize: the engine decides sizes
			// Replies to this client's own denials wait for its writer: a
			// flooder that does not read its replies stops being read too.
			Reply: func(_ *websocket.Conn, d rt.Decision) error {
				select {
				case m.send <- rt.ErrorReply(d):
					return nil
				case <-writerDone:
					return net.ErrClosed
				}
			},
		})
		for {
			_, p, err := rd.ReadMessage()
			if err != nil {
				return
			}
			if d := lim.CheckKey("room:lobby", len(p)); !d.Allowed {
				select {
				case m.send <- rt.ErrorReply(d):
					continue
				case <-writerDone:
					return
				}
			}
			room.broadcast(p)
		}
	})
	mux := http.NewServeMux()
	mux.Handle("/ws", rt.Middleware(lim, rt.MiddlewareOptions{})(ws))
	mux.Handle("/metrics", lim.MetricsHandler())
	return mux
}

func main() {
	addr := flag.String("addr", "127.0.0.1:8080", "listen address")
	demo := flag.Bool("demo", false, "serve on a free loopback port, run a flood against it, print the outcome and exit")
	flag.Parse()
	lim, err := rt.New(chatLimits())
	if err != nil {
		log.Fatal(err)
	}
	defer lim.Close()
	if *demo {
		*addr = "127.0.0.1:0"
	}
	ln, err := net.Listen("tcp", *addr)
	if err != nil {
		log.Fatal(err)
	}
	srv := &http.Server{Handler: newServer(lim), ReadHeaderTimeout: 10 * time.Second}
	go srv.Serve(ln)
	defer srv.Close()
	url := "ws://" + ln.Addr().String() + "/ws"
	if !*demo {
		log.Printf("chat on %s (metrics on http://%s/metrics)", url, ln.Addr())
		select {}
	}
	report, err := runDemo(url)
	if err != nil {
		log.Fatal(err)
	}
	fmt.Print(report)
}

// demoResult is what the demo's clients saw.
type demoResult struct {
	HonestSent, HonestDenied int
	FloodSent, FloodDenied   int
	SpamDials, SpamRefused   int
	OversizedCloseCode       int
	DenialReasons            map[string]int
}

func (r demoResult) String() string {
	var b strings.Builder
	fmt.Fprintf(&b, "honest client: sent %d, denied %d\n", r.HonestSent, r.HonestDenied)
	fmt.Fprintf(&b, "flooder:       sent %d, denied %d (%v)\n", r.FloodSent, r.FloodDenied, r.DenialReasons)
	fmt.Fprintf(&b, "spammer:       %d dials, %d refused with 429\n", r.SpamDials, r.SpamRefused)
	fmt.Fprintf(&b, "oversized:     closed with %d\n", r.OversizedCloseCode)
	return b.String()
}

// runDemo drives the server at url with real clients: an honest one, a
// flooder, a connection spammer and one oversized message. Every loop is
// bounded.
func runDemo(url string) (demoResult, error) {
	res := demoResult{DenialReasons: map[string]int{}}
	dialer := websocket.Dialer{HandshakeTimeout: 5 * time.Second}
	honest, _, err := dialer.Dial(url, http.Header{"X-Client": {"honest"}})
	if err != nil {
		return res, fmt.Errorf("honest dial: %w", err)
	}
	defer honest.Close()
	flood, _, err := dialer.Dial(url, nil)
	if err != nil {
		return res, fmt.Errorf("flood dial: %w", err)
	}
	defer flood.Close()

	// The flooder sends 100 messages at once; 20 per connection per minute pass.
	for i := 0; i < 100; i++ {
		if err := flood.WriteMessage(websocket.TextMessage, []byte(fmt.Sprint("spam ", i))); err != nil {
			return res, err
		}
		res.FloodSent++
	}
	// The honest client says hello 5 times.
	for i := 0; i < 5; i++ {
		if err := honest.WriteMessage(websocket.TextMessage, []byte(fmt.Sprint("hello ", i))); err != nil {
			return res, err
		}
		res.HonestSent++
	}
	// Read the flooder's replies until its 80 denials are in, or until it has
	// been quiet for 3 s (bounded either way).
	for res.FloodDenied < 80 {
		flood.SetReadDeadline(time.Now().Add(3 * time.Second))
		_, p, err := flood.ReadMessage()
		if err != nil {
			if res.FloodDenied > 0 {
				break
			}
			return res, fmt.Errorf("flood read: %w", err)
		}
		var e struct{ Error string }
		if json.Unmarshal(p, &e) == nil && e.Error != "" {
			res.FloodDenied++
			res.DenialReasons[e.Error]++
		}
	}
	// The honest client reads until it has seen its own 5 messages.
	honest.SetReadDeadline(time.Now().Add(10 * time.Second))
	for own := 0; own < 5; {
		_, p, err := honest.ReadMessage()
		if err != nil {
			return res, fmt.Errorf("honest read: %w", err)
		}
		switch {
		case strings.HasPrefix(string(p), "hello "):
			own++
		case strings.HasPrefix(string(p), "{"):
			res.HonestDenied++
		}
	}
	// A connection spammer: 12 dials; 10 connects per minute pass for this IP,
	// minus the 2 above, and at most 5 live.
	for i := 0; i < 12; i++ {
		res.SpamDials++
		c, resp, err := dialer.Dial(url, nil)
		if err != nil {
			if resp != nil && resp.StatusCode == http.StatusTooManyRequests {
				res.SpamRefused++
				continue
			}
			return res, err
		}
		c.Close()
	}
	// An oversized message (11 KiB > 10 KiB) on the honest connection.
	honest.WriteMessage(websocket.BinaryMessage, make([]byte, 11*1024))
	for {
		_, _, err := honest.ReadMessage()
		if ce, ok := err.(*websocket.CloseError); ok {
			res.OversizedCloseCode = ce.Code
			break
		}
		if err != nil {
			return res, fmt.Errorf("oversized: %w", err)
		}
	}
	return res, nil
}
