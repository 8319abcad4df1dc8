package ratethrottle

import (
	"errors"
	"fmt"
	"math"
	"time"
)

// Reason says why a request was denied (or, in dry-run mode, would have
// been). The values are the engine's rt_reason values, fixed for ever.
type Reason uint32

// The engine's reasons, in the order of the C ABI.
const (
	ReasonOK                    Reason = 0  // allowed
	ReasonConnectionRate        Reason = 1  // too many new connections for the client in the window
	ReasonConcurrentConnections Reason = 2  // too many live connections for the client
	ReasonMessageTooLarge       Reason = 3  // message larger than MaxMessageSize (RetryAfter is RetryNever)
	ReasonMessageRate           Reason = 4  // too many messages on the connection
	ReasonBandwidth             Reason = 5  // too many bytes on the connection
	ReasonClientMessageRate     Reason = 6  // too many messages for the client or key
	ReasonClientBandwidth       Reason = 7  // too many bytes for the client or key
	ReasonTableFull             Reason = 8  // no table slot for a new client or connection
	ReasonUnknownConnection     Reason = 9  // closed, stale or unknown connection
	ReasonInvalidArgument       Reason = 10 // bad argument, closed limiter, foreign Conn (see Decision.Err)
)

// ReasonCount is the number of reasons; the length of Stats.Denied.
const ReasonCount = 11

var (
	reasonNames [ReasonCount]string
	reasonTypes [ReasonCount]string
)

func init() {
	for r := range reasonNames {
		reasonNames[r] = reasonString(uint32(r))
		reasonTypes[r] = violationTypeString(uint32(r))
	}
}

// String is the engine's name of the reason (rt_reason_str): "ok",
// "connection_rate_exceeded", "too_many_connections", "message_too_large",
// "rate_limit_exceeded", "bandwidth_exceeded", ...
func (r Reason) String() string {
	if int(r) < len(reasonNames) {
		return reasonNames[r]
	}
	return fmt.Sprintf("unknown(%d)", uint32(r))
}

// ViolationType is the engine's violation type name (rt_violation_type_str):
// "connection_rate", "concurrent_connections", "message_size", ...
func (r Reason) ViolationType() string {
	if int(r) < len(reasonTypes) {
		return reasonTypes[r]
	}
	return "unknown"
}

// RetryNever is the RetryAfter of a request that can never pass as it is
// (larger than MaxMessageSize, or a cost larger than the limit itself).
const RetryNever time.Duration = math.MaxInt64

// Decision is the engine's answer to a connect or message check.
type Decision struct {
	Allowed    bool          // whether the request may proceed (always true in dry-run mode)
	Reason     Reason        // ReasonOK, or the first limit that failed
	RetryAfter time.Duration // 0 when allowed; exact wait in ms steps; RetryNever; 0 for concurrency
	Limit      uint64        // the limit that decided (0 when none applies)
	Remaining  uint64        // budget left under that limit after this call
	Current    uint64        // the estimate that decided: a count, bytes or live connections

	err error // set when the binding refused the call before the engine saw it
}

// Err is nil when the request was allowed. Otherwise it is an error wrapping
// ErrDenied (a *DeniedError carrying the decision), or, when the binding
// refused the call before asking the engine, one of ErrClosed,
// ErrForeignConn, ErrNilConn, ErrNegativeSize (the Decision then has
// Reason ReasonInvalidArgument).
func (d Decision) Err() error {
	if d.err != nil {
		return d.err
	}
	if d.Allowed {
		return nil
	}
	return &DeniedError{Decision: d}
}

// Errors of the binding. Use errors.Is.
var (
	ErrClosed       = errors.New("ratethrottle: limiter is closed")
	ErrForeignConn  = errors.New("ratethrottle: connection belongs to another limiter")
	ErrNilConn      = errors.New("ratethrottle: nil connection")
	ErrNegativeSize = errors.New("ratethrottle: negative message size")
	ErrDenied       = errors.New("ratethrottle: denied")
	ErrUnknownConn  = errors.New("ratethrottle: unknown, closed or stale connection")
)

// DeniedError is Decision.Err of a denial.
type DeniedError struct{ Decision Decision }

func (e *DeniedError) Error() string {
	d := e.Decision
	switch {
	case d.RetryAfter == RetryNever:
		return fmt.Sprintf("ratethrottle: denied: %s (never passes as it is)", d.Reason)
	case d.RetryAfter > 0:
		return fmt.Sprintf("ratethrottle: denied: %s (retry after %s)", d.Reason, d.RetryAfter)
	}
	return "ratethrottle: denied: " + d.Reason.String()
}

// Is makes errors.Is(err, ErrDenied) true.
func (e *DeniedError) Is(target error) bool { return target == ErrDenied }

func refused(err error) Decision {
	return Decision{Reason: ReasonInvalidArgument, err: err}
}
