package main

import (
	"io"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"

	rt "github.com/ratethrottle/ratethrottle/bindings/go"
)

// The example end to end: a real server on loopback, real gorilla clients.
func TestChatDemo(t *testing.T) {
	l := chatLimits()
	l.WindowMs = 1<<32 - 1 // no window boundary passes during the test: exact counts
	lim, err := rt.New(l)
	if err != nil {
		t.Fatal(err)
	}
	defer lim.Close()
	srv := httptest.NewServer(newServer(lim))
	defer srv.Close()
	res, err := runDemo("ws" + strings.TrimPrefix(srv.URL, "http") + "/ws")
	if err != nil {
		t.Fatal(err)
	}
	t.Log("\n" + res.String())
	if res.HonestDenied != 0 {
		t.Errorf("the honest client was denied %d times", res.HonestDenied)
	}
	if res.FloodDenied != 80 || res.DenialReasons["rate_limit_exceeded"] != 80 {
		t.Errorf("flood: %+v", res)
	}
	// 10 connects per minute per IP: 2 before the spam, so 8 of 12 pass.
	if res.SpamRefused != 4 {
		t.Errorf("spam refused %d of %d, want 4", res.SpamRefused, res.SpamDials)
	}
	if res.OversizedCloseCode != 1009 {
		t.Errorf("oversized closed with %d", res.OversizedCloseCode)
	}
	resp, err := http.Get(srv.URL + "/metrics")
	if err != nil {
		t.Fatal(err)
	}
	body, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	if !strings.Contains(string(body), `ratethrottle_denied_total{reason="rate_limit_exceeded"} 80`) {
		t.Errorf("metrics:\n%s", body)
	}
}
