// Package rtgorilla limits the messages of a gorilla/websocket connection
// with a ratethrottle Conn: every message's size and rate is decided by the
// engine, and a denial is answered as the MessagePolicy says. It also ends
// half-open sockets (an idle timeout with server pings) so that a client
// that vanished does not hold a concurrency slot.
package rtgorilla

import (
	"errors"
	"fmt"
	"io"
	"math"
	"net"
	"strconv"
	"sync"
	"sync/atomic"
	"time"

	"github.com/gorilla/websocket"

	rt "github.com/ratethrottle/ratethrottle/bindings/go"
	"github.com/ratethrottle/ratethrottle/bindings/go/internal/activity"
)

// Options configures a Reader.
type Options struct {
	Policy rt.MessagePolicy
	// ReadLimit, when > 0, is set with SetReadLimit as the transport's memory
	// guard: gorilla then refuses a larger message itself (closing with 1009)
	// before it is buffered. gorilla counts the bytes on the wire, which with
	// permessage-deflate (Upgrader.EnableCompression) are the compressed
	// ones, so the Reader also stops reading a message once it has inflated
	// past ReadLimit: it closes with 1009 and ReadMessage returns an error
	// wrapping websocket.ErrReadLimit (and so does every later call). The
	// engine decides on the message's full size, so a message must be read
	// before it is checked; keep ReadLimit above the limiter's
	// MaxMessageSize so that the engine is the one deciding. 0 leaves
	// gorilla's setting alone (its default is no limit).
	ReadLimit int64
	// Reply sends the error reply of a dropped message. Default: a text
	// message with rt.ErrorReply(d), written with WriteMessage. gorilla
	// allows one concurrent writer: if other goroutines write to the socket,
	// send the reply through them instead.
	Reply func(ws *websocket.Conn, d rt.Decision) error
	// ReplyTimeout bounds the default reply's write with a write deadline:
	// a peer that floods and never reads would otherwise block it for as
	// long as the socket stays open, where no idle timeout applies. When the
	// reply fails, the TCP connection is closed and ReadMessage returns the
	// error (wrapping rt.ErrReplyTimeout after a timeout). 0 means
	// rt.DefaultReplyTimeout (10 s); a negative value sets no deadline. A
	// custom Reply is not given a deadline (the goroutines it writes through
	// own the socket's write deadline): they must bound their own writes.
	ReplyTimeout time.Duration
	// CloseTimeout bounds the write of the close frame (default 1 s).
	CloseTimeout time.Duration
	// IdleTimeout ends the socket when nothing at all (a message or part of
	// one, a ping, a pong) arrives from the peer for this long while
	// ReadMessage waits: the TCP connection is closed at once (no close
	// handshake) and ReadMessage returns an error wrapping rt.ErrIdleTimeout,
	// so the handler returns and the connection's slot is freed. 0 means
	// rt.DefaultIdleTimeout (60 s); a negative value disables it (no read
	// deadline, no pings: the Reader then leaves the socket's read deadline
	// and ping/pong handlers alone). While it is on, the Reader owns the read
	// deadline; ping and pong handlers set before NewReader keep running
	// (gorilla's default ping handler answers pings).
	IdleTimeout time.Duration
	// PingInterval is how often the server pings the peer (WriteControl, safe
	// beside other writers) once ReadMessage has been called, so that a live
	// but silent peer answers with a pong. 0 means IdleTimeout/2; a value
	// >= IdleTimeout is lowered to IdleTimeout/2; a negative value sends no
	// pings (the peer must then send something within every IdleTimeout).
	// Pinging stops when ReadMessage returns an error, or at the first ping
	// after the socket was closed.
	PingInterval time.Duration
	// CountControlFrames checks each ping and pong the peer sends like a
	// message: one message against the message rate and its payload against
	// the byte budget (as nginx's ratethrottle_control_frames on). A denied
	// one ends the socket with a close frame 1008 and ReadMessage returns a
	// *rt.MessageDeniedError, so a ping flood is stopped like a message
	// flood. The pong answering the Reader's own last keep-alive ping is
	// not counted (the peer did not choose to send it). Default false:
	// control frames are not messages.
	CountControlFrames bool
}

// Reader reads messages the engine allows. Like gorilla's own reads, one
// goroutine at a time may call ReadMessage.
type Reader struct {
	ws   *websocket.Conn
	conn *rt.Conn
	o    Options

	idle  time.Duration // > 0: the idle timeout is on
	pings pinger
	err   error // set once a message went over ReadLimit: every later read fails
}

// NewReader wraps ws; conn is the connection opened for it (for instance by
// rt.Middleware: rt.ConnFromContext(r.Context())). A nil conn is what the
// middleware gives a connect that a fail-open limiter allowed untracked with
// no connection slot left: its messages then pass unchecked.
func NewReader(ws *websocket.Conn, conn *rt.Conn, o Options) *Reader {
	if o.ReadLimit > 0 {
		ws.SetReadLimit(o.ReadLimit)
	}
	if o.CloseTimeout <= 0 {
		o.CloseTimeout = time.Second
	}
	r := &Reader{ws: ws, conn: conn, o: o}
	switch {
	case o.IdleTimeout == 0:
		r.idle = rt.DefaultIdleTimeout
	case o.IdleTimeout > 0:
		r.idle = o.IdleTimeout
	}
	if r.idle > 0 || (o.CountControlFrames && conn != nil) {
		// Any control frame from the peer proves it alive: restart the idle
		// clock, check it when control frames count, then run the handler
		// that was there (gorilla's default answers pings with a pong). A
		// handler's error ends NextReader with that error.
		ping, pong := ws.PingHandler(), ws.PongHandler()
		ws.SetPingHandler(func(s string) error {
			if err := r.control(s, false); err != nil {
				return err
			}
			return ping(s)
		})
		ws.SetPongHandler(func(s string) error {
			if err := r.control(s, true); err != nil {
				return err
			}
			return pong(s)
		})
	}
	if r.idle > 0 {
		interval := o.PingInterval
		if interval == 0 || interval >= r.idle {
			interval = r.idle / 2
		}
		if interval > 0 {
			r.pings.ws, r.pings.every = ws, interval
		}
	}
	return r
}

// ReadMessage returns the next message the engine allows. Denied messages
// are dropped (with a reply) or end the socket with a close frame (1008 or
// 1009), after which it returns a *rt.MessageDeniedError. A socket silent
// for the idle timeout is closed and an error wrapping rt.ErrIdleTimeout is
// returned. Other errors of the socket are returned as gorilla gives them.
func (r *Reader) ReadMessage() (messageType int, p []byte, err error) {
	r.pings.start()
	mt, p, err := r.readAllowed()
	if err != nil {
		r.pings.stop()
	}
	return mt, p, err
}

func (r *Reader) readAllowed() (int, []byte, error) {
	for {
		mt, p, err := r.next()
		if err != nil || r.conn == nil {
			return mt, p, err
		}
		d := r.conn.CheckMessage(len(p))
		if d.Allowed {
			return mt, p, nil
		}
		if r.o.Policy.Action(d) == rt.ActionClose {
			return 0, nil, r.closeFor(d)
		}
		if err := r.reply(d); err != nil {
			return 0, nil, err
		}
	}
}

// next reads one message. With the idle timeout on, the read deadline is
// set before the read and pushed back by every frame that arrives: by the
// ping/pong handlers, and by every chunk of a message's data (so a large
// message that arrives slowly but steadily is not cut).
//
// ReadLimit is enforced here too, on the message's bytes as the Reader
// buffers them: gorilla's own limit counts the bytes on the wire, which
// with permessage-deflate are the compressed ones (a message of a few
// hundred bytes on the wire can inflate to any size).
func (r *Reader) next() (int, []byte, error) {
	if r.err != nil {
		return 0, nil, r.err
	}
	if r.idle > 0 {
		r.alive()
	}
	mt, rd, err := r.ws.NextReader()
	var p []byte
	if err == nil {
		if r.idle > 0 {
			rd = activity.Reader{R: rd, Seen: r.alive}
		}
		limit := r.o.ReadLimit
		if limit > 0 && limit < math.MaxInt64 {
			rd = io.LimitReader(rd, limit+1)
		}
		p, err = io.ReadAll(rd)
		if err == nil && limit > 0 && int64(len(p)) > limit {
			// As gorilla does for its own limit: close with 1009, and every
			// later read fails.
			msg := websocket.FormatCloseMessage(websocket.CloseMessageTooBig, "")
			_ = r.ws.WriteControl(websocket.CloseMessage, msg, time.Now().Add(r.o.CloseTimeout))
			r.err = fmt.Errorf("rtgorilla: message over ReadLimit (%d bytes) once decompressed: %w", limit, websocket.ErrReadLimit)
			return 0, nil, r.err
		}
	}
	var ne net.Error
	if r.idle > 0 && err != nil && errors.As(err, &ne) && ne.Timeout() {
		// Nothing arrived for the idle timeout: end the TCP connection now
		// (a half-open peer would never complete a close handshake).
		_ = r.ws.Close()
		return mt, p, fmt.Errorf("%w (%v): %w", rt.ErrIdleTimeout, r.idle, err)
	}
	return mt, p, err
}

// control handles a ping or pong from the peer: it proves the peer alive
// and, with CountControlFrames, is checked like a message, except the pong
// that answers the Reader's own last keep-alive ping (the peer did not
// choose to send it).
func (r *Reader) control(payload string, pong bool) error {
	if r.idle > 0 {
		r.alive()
	}
	if !r.o.CountControlFrames || r.conn == nil {
		return nil
	}
	if pong && r.pings.answered(payload) {
		return nil
	}
	if d := r.conn.CheckMessage(len(payload)); !d.Allowed {
		return r.closeFor(d)
	}
	return nil
}

// closeFor ends the socket for a denial with its close code (1008 or 1009).
func (r *Reader) closeFor(d rt.Decision) error {
	code := rt.CloseCode(d)
	msg := websocket.FormatCloseMessage(code, d.Reason.String())
	_ = r.ws.WriteControl(websocket.CloseMessage, msg, time.Now().Add(r.o.CloseTimeout))
	return &rt.MessageDeniedError{Decision: d, CloseCode: code}
}

// alive restarts the idle clock (called on the reading goroutine only).
func (r *Reader) alive() {
	_ = r.ws.SetReadDeadline(time.Now().Add(r.idle))
}

func (r *Reader) reply(d rt.Decision) error {
	if r.o.Reply != nil {
		return r.o.Reply(r.ws, d)
	}
	timeout := r.o.ReplyTimeout
	if timeout == 0 {
		timeout = rt.DefaultReplyTimeout
	}
	if timeout > 0 {
		_ = r.ws.SetWriteDeadline(time.Now().Add(timeout))
	}
	err := r.ws.WriteMessage(websocket.TextMessage, rt.ErrorReply(d))
	if err != nil {
		// gorilla's writes are broken after an error (a timed-out one
		// included): end the TCP connection so the peer cannot hold it.
		_ = r.ws.Close()
		var ne net.Error
		if errors.As(err, &ne) && ne.Timeout() {
			return fmt.Errorf("%w (%v): %w", rt.ErrReplyTimeout, timeout, err)
		}
		return err
	}
	if timeout > 0 {
		_ = r.ws.SetWriteDeadline(time.Time{})
	}
	return nil
}

// livePingers counts the pingers started and not yet stopped (for tests:
// a pinger must not outlive its socket).
var livePingers atomic.Int64

// pinger sends a ping every `every` from a timer (no goroutine waits
// between pings). gorilla allows WriteControl concurrently with every other
// method, including Close.
type pinger struct {
	ws    *websocket.Conn // nil: no pings
	every time.Duration

	mu      sync.Mutex
	timer   *time.Timer
	stopped bool
	sent    uint64 // pings sent; the payload of each is its number
	awaited string // payload of the last ping sent, until its pong arrives
}

// answered reports whether payload is the pong to the last ping sent (the
// first such pong only).
func (p *pinger) answered(payload string) bool {
	if p.ws == nil {
		return false
	}
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.awaited == "" || payload != p.awaited {
		return false
	}
	p.awaited = ""
	return true
}

func (p *pinger) start() {
	if p.ws == nil {
		return
	}
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.timer != nil || p.stopped {
		return
	}
	livePingers.Add(1)
	p.timer = time.AfterFunc(p.every, p.ping)
}

func (p *pinger) ping() {
	p.mu.Lock()
	p.sent++
	payload := strconv.FormatUint(p.sent, 10)
	p.awaited = payload
	p.mu.Unlock()
	err := p.ws.WriteControl(websocket.PingMessage, []byte(payload), time.Now().Add(p.every))
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.stopped {
		return
	}
	if err != nil {
		// The socket is closed or broken for writes: stop; the read
		// deadline still ends a silent socket.
		p.stopLocked()
		return
	}
	p.timer.Reset(p.every)
}

func (p *pinger) stop() {
	if p.ws == nil {
		return
	}
	p.mu.Lock()
	defer p.mu.Unlock()
	p.stopLocked()
}

func (p *pinger) stopLocked() {
	if p.stopped {
		return
	}
	p.stopped = true
	if p.timer != nil {
		p.timer.Stop()
		livePingers.Add(-1)
	}
}
