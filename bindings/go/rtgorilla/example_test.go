package rtgorilla_test

import (
	"log"
	"net/http"

	"github.com/gorilla/websocket"

	rt "github.com/ratethrottle/ratethrottle/bindings/go"
	"github.com/ratethrottle/ratethrottle/bindings/go/rtgorilla"
)

// The README's WebSocket server (compiled by go vet and go test; the same
// code runs in echoServer in reader_test.go and in examples/chat).
func Example() {
	lim, err := rt.New(rt.ModerateLimits())
	if err != nil {
		log.Fatal(err)
	}
	upgrader := websocket.Upgrader{}
	ws := http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		c, err := upgrader.Upgrade(w, r, nil)
		if err != nil {
			return
		}
		defer c.Close()
		rd := rtgorilla.NewReader(c, rt.ConnFromContext(r.Context()), rtgorilla.Options{ReadLimit: 1 << 20})
		for {
			mt, p, err := rd.ReadMessage() // only messages the engine allows
			if err != nil {
				return // the middleware closes the Conn when this handler returns
			}
			c.WriteMessage(mt, p)
		}
	})
	http.Handle("/ws", rt.Middleware(lim, rt.MiddlewareOptions{})(ws))
	http.Handle("/metrics", lim.MetricsHandler())
}
