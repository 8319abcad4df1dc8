package ratethrottle

import (
	"encoding/json"
	"io"
	"math"
	"net/http"
	"net/http/httptest"
	"net/netip"
	"sync"
	"testing"
	"time"
)

func TestRemoteIPKey(t *testing.T) {
	trusted := []netip.Prefix{netip.MustParsePrefix("10.0.0.0/8"), netip.MustParsePrefix("fd00::/8")}
	cases := []struct {
		remote, xff string
		proxies     []netip.Prefix
		want        string
		ok          bool
	}{
		{"203.0.113.7:5555", "", nil, "203.0.113.7", true},
		{"[2001:db8:1:2:3:4:5:6]:443", "", nil, "2001:db8:1:2::/64", true},
		{"[2001:db8:1:2:ffff::1]:443", "", nil, "2001:db8:1:2::/64", true}, // same /64
		{"[::ffff:198.51.100.1]:80", "", nil, "198.51.100.1", true},        // v4-mapped is v4
		{"[fe80::1%eth0]:80", "", nil, "fe80::/64", true},
		{"203.0.113.7:5555", "1.2.3.4", nil, "203.0.113.7", true},                 // no trusted proxies: header ignored
		{"203.0.113.7:5555", "1.2.3.4", trusted, "203.0.113.7", true},             // peer not trusted: ignored
		{"10.1.2.3:5555", "1.2.3.4", trusted, "1.2.3.4", true},                    // trusted peer
		{"10.1.2.3:5555", "6.6.6.6, 1.2.3.4, 10.9.9.9", trusted, "1.2.3.4", true}, // right-most untrusted hop
		{"10.1.2.3:5555", "2001:db8::1", trusted, "2001:db8::/64", true},
		{"10.1.2.3:5555", "garbage", trusted, "10.1.2.3", true}, // malformed: keep the peer
		{"not-an-address", "", nil, "", false},
	}
	for _, c := range cases {
		r := httptest.NewRequest("GET", "/", nil)
		r.RemoteAddr = c.remote
		if c.xff != "" {
			r.Header.Set("X-Forwarded-For", c.xff)
		}
		got, ok := RemoteIPKey(c.proxies)(r)
		if got != c.want || ok != c.ok {
			t.Errorf("%s xff=%q: got %q,%v want %q,%v", c.remote, c.xff, got, ok, c.want, c.ok)
		}
	}
}

func TestRetryAfterSeconds(t *testing.T) {
	maxSecs := int64(math.MaxInt64 / int64(time.Second))
	for d, want := range map[time.Duration]int64{
		0: 0, -time.Second: 0, time.Millisecond: 1, time.Second: 1, 1001 * time.Millisecond: 2, 1500 * time.Millisecond: 2,
		RetryNever: maxSecs, math.MaxInt64 - time.Second + 1: maxSecs, math.MaxInt64 - time.Second: maxSecs,
	} {
		if got := RetryAfterSeconds(d); got != want {
			t.Errorf("%v: %d want %d", d, got, want)
		}
	}
}

func upgradeRequest(t *testing.T, url string) *http.Response {
	t.Helper()
	req, _ := http.NewRequest("GET", url, nil)
	req.Header.Set("Connection", "keep-alive, Upgrade")
	req.Header.Set("Upgrade", "websocket")
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	io.Copy(io.Discard, resp.Body)
	resp.Body.Close()
	return resp
}

// Upgrade requests through the middleware to a handler that does not
// upgrade (plain HTTP is enough to see the admission decisions).
func TestMiddlewareConnectionSpam(t *testing.T) {
	l := testLimits()
	l.WindowMs = 1<<32 - 1
	l.ConnectionsPerWindow = 3
	lim := newTestLimiter(t, l)
	var seen *Conn
	srv := httptest.NewServer(Middleware(lim, MiddlewareOptions{})(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		seen = ConnFromContext(r.Context())
		w.WriteHeader(http.StatusOK)
	})))
	defer srv.Close()
	for i := 0; i < 3; i++ {
		if resp := upgradeRequest(t, srv.URL); resp.StatusCode != 200 {
			t.Fatalf("request %d: %d", i, resp.StatusCode)
		}
	}
	if seen == nil {
		t.Fatal("no Conn in the request context")
	}
	req, _ := http.NewRequest("GET", srv.URL, nil)
	req.Header.Set("Connection", "Upgrade")
	req.Header.Set("Upgrade", "websocket")
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	var body map[string]any
	json.NewDecoder(resp.Body).Decode(&body)
	resp.Body.Close()
	if resp.StatusCode != 429 || body["error"] != "connection_rate_exceeded" {
		t.Fatalf("4th: %d %v", resp.StatusCode, body)
	}
	if ra := resp.Header.Get("Retry-After"); ra == "" || ra == "0" {
		t.Fatalf("Retry-After %q", ra)
	}
	// Not an upgrade: passes through unlimited.
	for i := 0; i < 5; i++ {
		r, err := http.Get(srv.URL)
		if err != nil {
			t.Fatal(err)
		}
		r.Body.Close()
		if r.StatusCode != 200 {
			t.Fatalf("plain request: %d", r.StatusCode)
		}
	}
	// Every connection was released when its handler returned.
	if n := lim.ClientConnections("127.0.0.1"); n != 0 {
		t.Fatalf("%d connections still live", n)
	}
}

func TestMiddlewareConcurrencyFreedAndTableFull(t *testing.T) {
	l := testLimits()
	l.MaxConcurrentConnections = 2
	lim := newTestLimiter(t, l)
	release := make(chan struct{})
	entered := make(chan struct{}, 8)
	srv := httptest.NewServer(Middleware(lim, MiddlewareOptions{})(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		entered <- struct{}{}
		<-release
	})))
	defer srv.Close()
	var wg sync.WaitGroup
	for i := 0; i < 2; i++ {
		wg.Add(1)
		go func() { defer wg.Done(); upgradeRequest(t, srv.URL) }()
	}
	<-entered
	<-entered
	resp := upgradeRequest(t, srv.URL)
	if resp.StatusCode != 429 || resp.Header.Get("Retry-After") != "0" {
		t.Fatalf("third concurrent: %d Retry-After %q", resp.StatusCode, resp.Header.Get("Retry-After"))
	}
	close(release)
	wg.Wait()
	if n := lim.ClientConnections("127.0.0.1"); n != 0 {
		t.Fatalf("%d live after the handlers returned", n)
	}
	if resp := upgradeRequest(t, srv.URL); resp.StatusCode != 200 {
		t.Fatalf("after release: %d", resp.StatusCode)
	}

	// A full table answers 503; a closed limiter too.
	full := testLimits()
	full.MaxClients, full.MaxConnections = 1, 1
	flim := newTestLimiter(t, full)
	hold := mustConnect(t, flim, "someone-else", 0)
	defer hold.Close()
	fsrv := httptest.NewServer(Middleware(flim, MiddlewareOptions{})(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {})))
	defer fsrv.Close()
	if resp := upgradeRequest(t, fsrv.URL); resp.StatusCode != 503 {
		t.Fatalf("table full: %d", resp.StatusCode)
	}
	closed, _ := New(testLimits())
	closed.Close()
	csrv := httptest.NewServer(Middleware(closed, MiddlewareOptions{
		Key: func(r *http.Request) (string, bool) { return "fixed", true },
	})(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {})))
	defer csrv.Close()
	if resp := upgradeRequest(t, csrv.URL); resp.StatusCode != 503 {
		t.Fatalf("closed limiter: %d", resp.StatusCode)
	}
	nokey := httptest.NewServer(Middleware(lim, MiddlewareOptions{AllRequests: true,
		Key: func(r *http.Request) (string, bool) { return "", false },
	})(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {})))
	defer nokey.Close()
	if r, err := http.Get(nokey.URL); err != nil || r.StatusCode != 400 {
		t.Fatalf("no key: %v", err)
	}
}
