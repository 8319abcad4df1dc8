package ratethrottle

import (
	"runtime"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
)

// The hot calls run their C shims through call() (calls.go): asmcgocall by
// default, a cgo call with -tags ratethrottle_cgocall or for ids longer
// than fastIDMax. make test-go runs these tests both ways.

// Ids on both sides of fastIDMax take the two routes into C and must reach
// the same engine: one client per id, counted and limited alike.
func TestCallRoutesAgreeAtFastIDMax(t *testing.T) {
	l := testLimits()
	l.MaxConcurrentConnections = 2
	l.ClientMessagesPerWindow = 3
	lim := newTestLimiter(t, l)
	for _, n := range []int{0, 1, fastIDMax - 1, fastIDMax, fastIDMax + 1, 4 * fastIDMax} {
		id := strings.Repeat("k", n)
		a := mustConnect(t, lim, id, 0)
		b := mustConnect(t, lim, id, 0)
		c, d := lim.ConnectAt(id, 0)
		if c != nil {
			t.Fatalf("id of %d bytes: a third connection was opened", n)
		}
		wantDenied(t, "third connect", d, ReasonConcurrentConnections)
		if got := lim.ClientConnections(id); got != 2 {
			t.Fatalf("id of %d bytes: %d live connections, want 2", n, got)
		}
		for i := 0; i < 3; i++ {
			if d := lim.CheckKeyAt(id, 1, 0); !d.Allowed || d.Remaining != uint64(2-i) {
				t.Fatalf("id of %d bytes, key check %d: %+v", n, i, d)
			}
		}
		wantDenied(t, "fourth key check", lim.CheckKeyAt(id, 1, 0), ReasonClientMessageRate)
		a.Close()
		b.Close()
		if got := lim.ClientConnections(id); got != 0 {
			t.Fatalf("id of %d bytes: %d live connections after Close, want 0", n, got)
		}
	}
}

// Hot calls from several goroutines while the collector runs and
// goroutines are preempted: every call is answered by the engine, and the
// engine's totals match what the goroutines did.
func TestHotCallsUnderGCAndPreemption(t *testing.T) {
	const goroutines, rounds = 4, 20000
	l := testLimits()
	l.MessagesPerWindow = 0
	l.BytesPerWindow = 0
	l.ConnectionsPerWindow = 0
	l.MaxConcurrentConnections = 0
	lim := newTestLimiter(t, l)
	var stop atomic.Bool
	var gcs sync.WaitGroup
	gcs.Add(1)
	go func() {
		defer gcs.Done()
		for !stop.Load() {
			runtime.GC()
			runtime.Gosched()
		}
	}()
	var wg sync.WaitGroup
	var messages atomic.Uint64
	for g := 0; g < goroutines; g++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := 0; i < rounds; i++ {
				c, d := lim.Connect("gc")
				if !d.Allowed {
					t.Errorf("connect: %+v", d)
					return
				}
				for j := 0; j < 3; j++ {
					if d := c.CheckMessage(10); !d.Allowed {
						t.Errorf("message: %+v", d)
						return
					}
					messages.Add(1)
				}
				if d := lim.CheckKey("room", 1); !d.Allowed {
					t.Errorf("key: %+v", d)
					return
				}
				_ = make([]byte, 256) // garbage, so the collector has work
				c.Close()
			}
		}()
	}
	wg.Wait()
	stop.Store(true)
	gcs.Wait()
	s, err := lim.Stats()
	if err != nil {
		t.Fatal(err)
	}
	if s.ConnectionsAllowed != goroutines*rounds || s.ActiveConnections != 0 {
		t.Fatalf("connections: %d allowed, %d live; want %d, 0", s.ConnectionsAllowed, s.ActiveConnections, goroutines*rounds)
	}
	if s.TotalMessages != messages.Load() || s.TotalBytes != 10*messages.Load() {
		t.Fatalf("messages: %d (%d bytes), want %d (%d bytes)", s.TotalMessages, s.TotalBytes, messages.Load(), 10*messages.Load())
	}
}
