package ratethrottle

import (
	"context"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/ratethrottle/ratethrottle/bindings/go/internal/poll"
)

// While goroutines keep denying (a flood refills the engine's ring as fast
// as it is drained), DrainViolations still returns at most the ring's 1024
// records, and a watcher still notices its ctx: before, both kept draining
// for as long as the flood lasted (a DrainViolations call returned 7232
// records here, and could run and grow without bound).
func TestDrainViolationsBoundedUnderFlood(t *testing.T) {
	l := testLimits()
	l.MessagesPerWindow = 1
	lim := newTestLimiter(t, l)
	var stop atomic.Bool
	var produced atomic.Int64
	var wg sync.WaitGroup
	defer func() { stop.Store(true); wg.Wait() }()
	for g := 0; g < 2; g++ {
		c := mustConnect(t, lim, "flooder", 0)
		c.CheckMessageAt(1, 0) // the budget of 1; every later check is a violation
		wg.Add(1)
		go func() {
			defer wg.Done()
			for !stop.Load() {
				c.CheckMessageAt(1, 0)
				produced.Add(1)
			}
		}()
	}
	poll.Until(t, "the flood started", func() bool { return produced.Load() > 2000 })
	for i := 0; i < 40; i++ {
		vs, err := lim.DrainViolations()
		if err != nil {
			t.Fatal(err)
		}
		if len(vs) > 1024 {
			t.Fatalf("drain %d returned %d records, more than the ring's 1024", i, len(vs))
		}
		time.Sleep(time.Millisecond)
	}
	ctx, cancel := context.WithCancel(context.Background())
	ch := lim.WatchViolations(ctx, WatchOptions{Interval: time.Millisecond, Buffer: 1})
	poll.Next(t, ch, "a watched violation")
	cancel()
	poll.Until(t, "the watcher's channel closed after its ctx was cancelled", func() bool {
		for {
			select {
			case _, ok := <-ch:
				if !ok {
					return true
				}
			default:
				return false
			}
		}
	})
}
