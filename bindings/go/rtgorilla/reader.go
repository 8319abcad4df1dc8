// Package rtgorilla limits the messages of a gorilla/websocket connection
// with a ratethrottle Conn: every message's size and rate is decided by the
// engine, and a denial is answered as the MessagePolicy says.
package rtgorilla

import (
	"time"

	"github.com/gorilla/websocket"

	rt "github.com/ratethrottle/ratethrottle/bindings/go"
)

// Options configures a Reader.
type Options struct {
	Policy rt.MessagePolicy
	// ReadLimit, when > 0, is set with SetReadLimit as the transport's memory
	// guard: gorilla then refuses a larger message itself (closing with 1009)
	// before it is buffered. The engine decides on the message's full size,
	// so a message must be read before it is checked; keep ReadLimit above
	// the limiter's MaxMessageSize so that the engine is the one deciding.
	// 0 leaves gorilla's setting alone (its default is no limit).
	ReadLimit int64
	// Reply sends the error reply of a dropped message. Default: a text
	// message with rt.ErrorReply(d), written with WriteMessage. gorilla
	// allows one concurrent writer: if other goroutines write to the socket,
	// send the reply through them instead.
	Reply func(ws *websocket.Conn, d rt.Decision) error
	// CloseTimeout bounds the write of the close frame (default 1 s).
	CloseTimeout time.Duration
}

// Reader reads messages the engine allows. Like gorilla's own reads, one
// goroutine at a time may call ReadMessage.
type Reader struct {
	ws   *websocket.Conn
	conn *rt.Conn
	o    Options
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
	return &Reader{ws: ws, conn: conn, o: o}
}

// ReadMessage returns the next message the engine allows. Denied messages
// are dropped (with a reply) or end the socket with a close frame (1008 or
// 1009), after which it returns a *rt.MessageDeniedError. Errors of the
// socket are returned as gorilla gives them.
func (r *Reader) ReadMessage() (messageType int, p []byte, err error) {
	for {
		mt, p, err := r.ws.ReadMessage()
		if err != nil || r.conn == nil {
			return mt, p, err
		}
		d := r.conn.CheckMessage(len(p))
		if d.Allowed {
			return mt, p, nil
		}
		if r.o.Policy.Action(d) == rt.ActionClose {
			code := rt.CloseCode(d)
			msg := websocket.FormatCloseMessage(code, d.Reason.String())
			_ = r.ws.WriteControl(websocket.CloseMessage, msg, time.Now().Add(r.o.CloseTimeout))
			return 0, nil, &rt.MessageDeniedError{Decision: d, CloseCode: code}
		}
		if err := r.reply(d); err != nil {
			return 0, nil, err
		}
	}
}

func (r *Reader) reply(d rt.Decision) error {
	if r.o.Reply != nil {
		return r.o.Reply(r.ws, d)
	}
	return r.ws.WriteMessage(websocket.TextMessage, rt.ErrorReply(d))
}
