// Package rtcoder limits the messages of a coder/websocket connection with a
// ratethrottle Conn: every message's size and rate is decided by the engine,
// and a denial is answered as the MessagePolicy says. It also ends half-open
// sockets (an idle timeout with server pings) so that a client that vanished
// does not hold a concurrency slot.
package rtcoder

import (
	"context"
	"errors"
	"fmt"
	"io"
	"sync"
	"sync/atomic"
	"time"

	"github.com/coder/websocket"

	rt "github.com/ratethrottle/ratethrottle/bindings/go"
	"github.com/ratethrottle/ratethrottle/bindings/go/internal/activity"
)

// Options configures a Reader.
type Options struct {
	Policy rt.MessagePolicy
	// ReadLimit, when != 0, is set with SetReadLimit as the transport's
	// memory guard (-1: none). coder refuses a larger message itself (closing
	// with 1009) before buffering it. The engine decides on the message's full
	// size, so keep ReadLimit above the limiter's MaxMessageSize. 0 leaves
	// coder's own default, 32768 bytes, which is below the engine's default
	// MaxMessageSize (65536): set it.
	ReadLimit int64
	// Reply sends the error reply of a dropped message. Default: a text
	// message with rt.ErrorReply(d). coder allows concurrent writers.
	Reply func(ctx context.Context, c *websocket.Conn, d rt.Decision) error
	// ReplyTimeout bounds the reply's write (the context given to Write, or
	// to a custom Reply, expires after it): a peer that floods and never
	// reads would otherwise block it for as long as the socket stays open,
	// where no idle timeout applies. When the reply fails, the connection is
	// closed (CloseNow) and Read returns the error (wrapping
	// rt.ErrReplyTimeout after a timeout). 0 means rt.DefaultReplyTimeout
	// (10 s); a negative value adds no timeout to the caller's context.
	ReplyTimeout time.Duration
	// IdleTimeout ends the socket when, while Read waits, nothing arrives
	// from the peer for this long: no message or part of one, and no pong to
	// the Reader's pings. The connection is closed at once with CloseNow (no
	// close handshake) and Read returns an error wrapping rt.ErrIdleTimeout,
	// so the handler returns and the connection's slot is freed. Time spent
	// outside Read does not count. 0 means rt.DefaultIdleTimeout (60 s); a
	// negative value disables it (no watchdog, no pings).
	IdleTimeout time.Duration
	// PingInterval is how often the Reader pings the peer with c.Ping once
	// Read has been called (coder delivers the pong to Ping while a Read
	// runs). 0 means IdleTimeout/2; a value >= IdleTimeout is lowered to
	// IdleTimeout/2; a negative value sends no pings (the peer must then
	// send messages within every IdleTimeout: coder answers the peer's pings
	// but does not report them). Pinging stops when Read returns an error or
	// when a ping finds the socket closed.
	PingInterval time.Duration
}

// Reader reads messages the engine allows; one goroutine at a time may call
// Read, as with coder's own Read.
type Reader struct {
	c    *websocket.Conn
	conn *rt.Conn
	o    Options
	w    *watchdog // nil: no idle timeout
}

// NewReader wraps c; conn is the connection opened for it (for instance by
// rt.Middleware: rt.ConnFromContext(r.Context())). A nil conn is what the
// middleware gives a connect that a fail-open limiter allowed untracked with
// no connection slot left: its messages then pass unchecked.
func NewReader(c *websocket.Conn, conn *rt.Conn, o Options) *Reader {
	if o.ReadLimit != 0 {
		c.SetReadLimit(o.ReadLimit)
	}
	r := &Reader{c: c, conn: conn, o: o}
	idle := o.IdleTimeout
	if idle == 0 {
		idle = rt.DefaultIdleTimeout
	}
	if idle > 0 {
		every := o.PingInterval
		if every == 0 || every >= idle {
			every = idle / 2
		}
		r.w = &watchdog{c: c, idle: idle, every: every}
	}
	return r
}

// Read returns the next message the engine allows. Denied messages are
// dropped (with a reply) or end the socket with Close(1008 or 1009), after
// which it returns a *rt.MessageDeniedError. A socket silent for the idle
// timeout is closed and an error wrapping rt.ErrIdleTimeout is returned.
func (r *Reader) Read(ctx context.Context) (websocket.MessageType, []byte, error) {
	mt, p, err := r.readAllowed(ctx)
	if err != nil && r.w != nil {
		if r.w.stop() {
			err = fmt.Errorf("%w (%v): %w", rt.ErrIdleTimeout, r.w.idle, err)
		}
	}
	return mt, p, err
}

func (r *Reader) readAllowed(ctx context.Context) (websocket.MessageType, []byte, error) {
	for {
		mt, p, err := r.next(ctx)
		if err != nil || r.conn == nil {
			return mt, p, err
		}
		d := r.conn.CheckMessage(len(p))
		if d.Allowed {
			return mt, p, nil
		}
		if r.o.Policy.Action(d) == rt.ActionClose {
			code := rt.CloseCode(d)
			_ = r.c.Close(websocket.StatusCode(code), d.Reason.String())
			return 0, nil, &rt.MessageDeniedError{Decision: d, CloseCode: code}
		}
		if err := r.reply(ctx, d); err != nil {
			return 0, nil, err
		}
	}
}

// next reads one message (coder's Read is Reader + io.ReadAll); with the
// idle timeout on, every chunk of the message restarts the idle clock.
func (r *Reader) next(ctx context.Context) (websocket.MessageType, []byte, error) {
	if r.w == nil {
		return r.c.Read(ctx)
	}
	r.w.begin()
	defer r.w.end()
	mt, rd, err := r.c.Reader(ctx)
	if err != nil {
		return 0, nil, err
	}
	p, err := io.ReadAll(activity.Reader{R: rd, Seen: r.w.alive})
	return mt, p, err
}

func (r *Reader) reply(ctx context.Context, d rt.Decision) error {
	timeout := r.o.ReplyTimeout
	if timeout == 0 {
		timeout = rt.DefaultReplyTimeout
	}
	wctx := ctx
	if timeout > 0 {
		var cancel context.CancelFunc
		wctx, cancel = context.WithTimeout(ctx, timeout)
		defer cancel()
	}
	var err error
	if r.o.Reply != nil {
		err = r.o.Reply(wctx, r.c, d)
	} else {
		err = r.c.Write(wctx, websocket.MessageText, rt.ErrorReply(d))
	}
	if err != nil {
		_ = r.c.CloseNow()
		if ctx.Err() == nil && errors.Is(wctx.Err(), context.DeadlineExceeded) {
			return fmt.Errorf("%w (%v): %w", rt.ErrReplyTimeout, timeout, err)
		}
		return err
	}
	return nil
}

// livePingers counts the watchdogs started and not yet stopped (for tests:
// neither timer may outlive its socket).
var livePingers atomic.Int64

// watchdog is the idle timeout of one socket: a timer that closes it when
// the deadline passes while a Read waits, and a timer that pings every
// `every` (a goroutine exists only while a ping waits for its pong). A read
// context deadline would not do: coder closes the connection when it
// expires, and pongs (which prove the peer alive) do not end a Read.
type watchdog struct {
	c     *websocket.Conn
	idle  time.Duration
	every time.Duration // <= 0: no pings

	mu       sync.Mutex
	started  bool
	stopped  bool
	expired  bool
	reading  bool
	deadline time.Time   // while reading: when the socket is ended
	dog      *time.Timer // fires at (or before) deadline
	dogArmed bool
	pinger   *time.Timer
	pinging  bool // a Ping waits for its pong
}

// begin marks a Read as waiting; the idle clock starts now.
func (w *watchdog) begin() {
	w.mu.Lock()
	defer w.mu.Unlock()
	if w.stopped {
		return
	}
	w.reading = true
	w.deadline = time.Now().Add(w.idle)
	if !w.started {
		w.started = true
		livePingers.Add(1)
		w.dog = time.AfterFunc(w.idle, w.check)
		w.dogArmed = true
		if w.every > 0 {
			w.pinger = time.AfterFunc(w.every, w.ping)
		}
		return
	}
	if !w.dogArmed {
		w.dog.Reset(w.idle)
		w.dogArmed = true
	}
}

// end marks the Read as returned: time outside Read does not count.
func (w *watchdog) end() {
	w.mu.Lock()
	w.reading = false
	w.mu.Unlock()
}

// alive restarts the idle clock of a waiting Read.
func (w *watchdog) alive() {
	w.mu.Lock()
	if w.reading {
		w.deadline = time.Now().Add(w.idle)
	}
	w.mu.Unlock()
}

// check runs when the watchdog timer fires: re-arm for a deadline that was
// pushed back, or end the socket.
func (w *watchdog) check() {
	w.mu.Lock()
	if w.stopped || !w.reading {
		w.dogArmed = false
		w.mu.Unlock()
		return
	}
	if left := time.Until(w.deadline); left > 0 {
		w.dog.Reset(left)
		w.mu.Unlock()
		return
	}
	w.expired = true
	w.stopLocked()
	w.mu.Unlock()
	// Hard close: a half-open peer would never complete a close handshake.
	// The waiting Read then fails and Read reports rt.ErrIdleTimeout.
	_ = w.c.CloseNow()
}

func (w *watchdog) ping() {
	w.mu.Lock()
	if w.stopped || w.pinging {
		if !w.stopped {
			w.pinger.Reset(w.every)
		}
		w.mu.Unlock()
		return
	}
	w.pinging = true
	w.pinger.Reset(w.every)
	w.mu.Unlock()

	ctx, cancel := context.WithTimeout(context.Background(), w.idle)
	err := w.c.Ping(ctx)
	cancel()

	w.mu.Lock()
	defer w.mu.Unlock()
	w.pinging = false
	switch {
	case err == nil:
		if w.reading {
			w.deadline = time.Now().Add(w.idle) // the pong proves the peer alive
		}
	case errors.Is(err, context.DeadlineExceeded):
		// No pong within the idle timeout (or no Read to receive it): the
		// watchdog decides; keep pinging.
	default:
		// The socket is closed or broken: no more pings.
		w.stopLocked()
	}
}

// stop ends both timers (the socket ended); it reports whether the watchdog
// itself ended the socket for idleness.
func (w *watchdog) stop() (expired bool) {
	w.mu.Lock()
	defer w.mu.Unlock()
	w.stopLocked()
	return w.expired
}

func (w *watchdog) stopLocked() {
	if w.stopped {
		return
	}
	w.stopped = true
	if w.started {
		w.dog.Stop()
		if w.pinger != nil {
			w.pinger.Stop()
		}
		livePingers.Add(-1)
	}
}
