// Package rtcoder limits the messages of a coder/websocket connection with a
// ratethrottle Conn: every message's size and rate is decided by the engine,
// and a denial is answered as the MessagePolicy says.
package rtcoder

import (
	"context"

	"github.com/coder/websocket"

	rt "github.com/ratethrottle/ratethrottle/bindings/go"
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
}

// Reader reads messages the engine allows; one goroutine at a time may call
// Read, as with coder's own Read.
type Reader struct {
	c    *websocket.Conn
	conn *rt.Conn
	o    Options
}

// NewReader wraps c; conn is the connection opened for it (for instance by
// rt.Middleware: rt.ConnFromContext(r.Context())). A nil conn is what the
// middleware gives a connect that a fail-open limiter allowed untracked with
// no connection slot left: its messages then pass unchecked.
func NewReader(c *websocket.Conn, conn *rt.Conn, o Options) *Reader {
	if o.ReadLimit != 0 {
		c.SetReadLimit(o.ReadLimit)
	}
	return &Reader{c: c, conn: conn, o: o}
}

// Read returns the next message the engine allows. Denied messages are
// dropped (with a reply) or end the socket with Close(1008 or 1009), after
// which it returns a *rt.MessageDeniedError.
func (r *Reader) Read(ctx context.Context) (websocket.MessageType, []byte, error) {
	for {
		mt, p, err := r.c.Read(ctx)
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

func (r *Reader) reply(ctx context.Context, d rt.Decision) error {
	if r.o.Reply != nil {
		return r.o.Reply(ctx, r.c, d)
	}
	return r.c.Write(ctx, websocket.MessageText, rt.ErrorReply(d))
}
