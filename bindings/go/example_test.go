package ratethrottle_test

import (
	"fmt"
	"log"
	"net/http"

	rt "github.com/ratethrottle/ratethrottle/bindings/go"
)

// The README's quick start; go test runs it and checks its output.
func Example() {
	limits := rt.DefaultLimits() // the seed's defaults, from the engine
	limits.WindowMs = 1000
	limits.MessagesPerWindow = 2
	lim, err := rt.New(limits)
	if err != nil {
		log.Fatal(err) // a *rt.LimitsError naming the bad field
	}
	defer lim.Close()

	conn, d := lim.ConnectAt("203.0.113.7", 0) // any bytes: an IP, a user id, a room
	fmt.Println("connect:", d.Reason)
	if !d.Allowed {
		return
	}
	defer conn.Close() // frees the concurrency slot; idempotent

	for i := 1; i <= 3; i++ {
		d := conn.CheckMessageAt(100, 10) // 100 bytes at t = 10 ms
		fmt.Printf("message %d: %s", i, d.Reason)
		if !d.Allowed {
			fmt.Printf(", retry after %v", d.RetryAfter)
		}
		fmt.Println()
	}
	// Output:
	// connect: ok
	// message 1: ok
	// message 2: ok
	// message 3: rate_limit_exceeded, retry after 1.49s
}

// Middleware in front of a WebSocket handler (see examples/chat for a full server).
func ExampleMiddleware() {
	lim, err := rt.New(rt.ModerateLimits())
	if err != nil {
		log.Fatal(err)
	}
	ws := http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		conn := rt.ConnFromContext(r.Context()) // closed by the middleware when this returns
		_ = conn                                // upgrade, then read with rtgorilla.NewReader(ws, conn, ...)
	})
	http.Handle("/ws", rt.Middleware(lim, rt.MiddlewareOptions{})(ws))
	http.Handle("/metrics", lim.MetricsHandler())
}
