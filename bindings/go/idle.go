package ratethrottle

import (
	"errors"
	"time"
)

// DefaultIdleTimeout is the idle timeout of the read helpers (rtgorilla,
// rtcoder) when their Options leave it 0: a socket from which nothing at all
// (message, ping, pong) arrives for this long is ended, which frees its
// connection's concurrency slot. The helpers ping every half of it, so a
// live peer whose library answers pings is never idle. It is a transport
// liveness rule, not a limit: the engine still makes every limit decision.
const DefaultIdleTimeout = 60 * time.Second

// DefaultReplyTimeout bounds the write of the error reply to a dropped
// message in the read helpers (rtgorilla, rtcoder) when their Options leave
// ReplyTimeout 0. A peer that floods and never reads fills the TCP buffers
// until that write blocks; after this long the helper ends the socket, so
// the handler returns and the connection's slot is freed.
const DefaultReplyTimeout = 10 * time.Second

// ErrReplyTimeout is wrapped by the error a read helper returns when the
// peer did not take the reply to a dropped message within the reply timeout
// (and the helper ended the socket).
var ErrReplyTimeout = errors.New("ratethrottle: reply not taken by the peer in time, socket ended")

// ErrIdleTimeout is wrapped by the error a read helper returns when it ended
// a socket that stayed silent for its idle timeout (a half-open connection:
// a client that vanished without a close frame, or that sends nothing and
// answers no ping). The library's own error is wrapped too.
var ErrIdleTimeout = errors.New("ratethrottle: idle timeout, socket ended")
