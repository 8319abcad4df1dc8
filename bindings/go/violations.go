package ratethrottle

import (
	"context"
	"time"
)

// Violation is one denial (or dry-run would-be denial) recorded by the
// engine.
type Violation struct {
	Reason      Reason        // which limit; Reason.ViolationType() gives "message_rate", ...
	ClientID    []byte        // the first 40 bytes of the client id or key
	ClientIDLen int           // the id's full length
	ConnID      uint64        // the connection's Conn.ID(); 0 for connects and key checks
	Limit       uint64        // the limit that was exceeded
	Current     uint64        // the estimate that exceeded it
	Size        uint64        // bytes for messages, 1 for connects
	RetryAfter  time.Duration // as in the decision
	AtMs        uint64        // the limiter's clock (ms) when it happened
}

// WatchOptions configures WatchViolations.
type WatchOptions struct {
	Interval time.Duration // how often the engine's ring is drained; default 50 ms
	Buffer   int           // channel capacity; default 1024
}

// WatchViolations starts a goroutine that drains the engine's violation ring
// every Interval and sends each record to the returned channel. The deciding
// goroutine never waits for it: the engine writes the record into its ring
// (1024 records; when full, records are dropped and counted in
// Stats.ViolationsDropped), and a record the channel has no room for is
// dropped and counted in DroppedViolations. The channel is closed when ctx
// is done or the limiter is closed.
//
// The ring belongs to the region: with a shared region (NewShared) it holds
// the violations of every process, and each record goes to whichever
// process drains it first. Run one watcher per region if you need them all
// in one place. Two watchers on one Limiter split the records between them.
func (l *Limiter) WatchViolations(ctx context.Context, o WatchOptions) <-chan Violation {
	if o.Interval <= 0 {
		o.Interval = 50 * time.Millisecond
	}
	if o.Buffer <= 0 {
		o.Buffer = 1024
	}
	ch := make(chan Violation, o.Buffer)
	go func() {
		defer close(ch)
		t := time.NewTicker(o.Interval)
		defer t.Stop()
		buf := new(cViolationBuf)
		var batch []Violation
		for {
			// One pass takes at most a ring's worth of records; while
			// deciding goroutines refill the ring as fast as it drains, the
			// next pass follows at once, but ctx is checked between passes.
			more := true
			for i := 0; i < violationRing/violationBatch && more; i++ {
				var ok bool
				batch, ok = l.drainViolations(buf, batch[:0])
				if !ok {
					return
				}
				for _, v := range batch {
					select {
					case ch <- v:
					default:
						l.violationsDropped.Add(1)
					}
				}
				more = len(batch) == violationBatch
			}
			if more {
				select {
				case <-ctx.Done():
					return
				default:
				}
				continue
			}
			select {
			case <-ctx.Done():
				return
			case <-t.C:
			}
		}
	}()
	return ch
}

// violationRing is the capacity of the engine's violation ring (records).
const violationRing = 1024

// DrainViolations takes the records waiting in the engine's ring, oldest
// first, without a goroutine: at most 1024 (the ring's capacity), even
// while other goroutines keep adding records as fast as they are taken.
// ErrClosed after Close.
func (l *Limiter) DrainViolations() ([]Violation, error) {
	buf := new(cViolationBuf)
	var out []Violation
	for len(out) < violationRing {
		n := len(out)
		var ok bool
		out, ok = l.drainViolations(buf, out)
		if !ok {
			return out, ErrClosed
		}
		if len(out)-n < violationBatch {
			break
		}
	}
	return out, nil
}

// DroppedViolations counts the records WatchViolations could not deliver
// because a channel was full.
func (l *Limiter) DroppedViolations() uint64 {
	if l == nil {
		return 0
	}
	return l.violationsDropped.Load()
}

func (l *Limiter) drainViolations(buf *cViolationBuf, out []Violation) ([]Violation, bool) {
	g := l.enter()
	if g == nil {
		return out, false
	}
	out = cDrainViolations(l.ptr, buf, out)
	l.leave(g)
	return out, true
}
