package ratethrottle

import (
	"encoding/json"
)

// MessageAction is what a WebSocket read helper (packages rtgorilla and
// rtcoder) does with a message the engine denies.
type MessageAction int

const (
	// ActionDefault is ActionDrop for rate and bandwidth denials and
	// ActionClose for ReasonMessageTooLarge.
	ActionDefault MessageAction = iota
	// ActionDrop drops the message, replies with ErrorReply(d), and keeps
	// reading.
	ActionDrop
	// ActionClose closes the socket with CloseCode(d): 1009 (Message Too Big)
	// for ReasonMessageTooLarge, 1008 (Policy Violation) otherwise.
	ActionClose
)

// MessagePolicy chooses the action per denial.
type MessagePolicy struct {
	OnDenied   MessageAction // rate and bandwidth denials (default ActionDrop)
	OnTooLarge MessageAction // ReasonMessageTooLarge (default ActionClose)
}

// WebSocket close codes (RFC 6455 section 7.4.1).
const (
	ClosePolicyViolation = 1008
	CloseMessageTooBig   = 1009
	CloseInternalError   = 1011
)

// Action is the action for a denied decision. A connection the engine no
// longer knows (ReasonUnknownConnection: its Conn was closed) or a call the
// binding refused (ReasonInvalidArgument: the limiter was closed) is always
// closed, since dropping every later message would only hide the fault.
func (p MessagePolicy) Action(d Decision) MessageAction {
	switch d.Reason {
	case ReasonUnknownConnection, ReasonInvalidArgument:
		return ActionClose
	case ReasonMessageTooLarge:
		if p.OnTooLarge == ActionDefault {
			return ActionClose
		}
		return p.OnTooLarge
	}
	if p.OnDenied == ActionDefault {
		return ActionDrop
	}
	return p.OnDenied
}

// CloseCode is the close code for a denial: 1009 for ReasonMessageTooLarge,
// 1011 when the limiter or the Conn was closed under the socket, 1008
// otherwise.
func CloseCode(d Decision) int {
	switch d.Reason {
	case ReasonMessageTooLarge:
		return CloseMessageTooBig
	case ReasonUnknownConnection, ReasonInvalidArgument:
		return CloseInternalError
	}
	return ClosePolicyViolation
}

// ErrorReply is the text message the read helpers send for a dropped
// message: {"error":"rate_limit_exceeded","retry_after_ms":1490}
// (retry_after_ms is omitted when the message can never pass).
func ErrorReply(d Decision) []byte {
	body := map[string]any{"error": d.Reason.String()}
	if d.RetryAfter != RetryNever {
		body["retry_after_ms"] = d.RetryAfter.Milliseconds()
	}
	b, _ := json.Marshal(body)
	return b
}

// MessageDeniedError is returned by the read helpers when they closed the
// socket because of a denial.
type MessageDeniedError struct {
	Decision  Decision
	CloseCode int
}

func (e *MessageDeniedError) Error() string {
	return "ratethrottle: message denied (" + e.Decision.Reason.String() + "), socket closed"
}

// Unwrap gives the decision's error (a *DeniedError, or ErrClosed ...).
func (e *MessageDeniedError) Unwrap() error { return e.Decision.Err() }
