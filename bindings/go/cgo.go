package ratethrottle

// The cgo boundary. Everything that names C lives in this file; the rest of
// the package works with Go types only.
//
// Linking: the static library is found in ../../target/release (what `make
// lib` builds). With a different CARGO_TARGET_DIR, put its release directory
// first on the search path: CGO_LDFLAGS="-L$CARGO_TARGET_DIR/release"
// (flags from CGO_LDFLAGS come before these, so they win). -l: names the .a
// file so the shared library next to it is never picked up instead.
// `go generate` (or `make lib` at the root) builds the library.

//go:generate sh -c "cd ../.. && cargo build --release --lib"

/*
#cgo CFLAGS: -I${SRCDIR}/../../include
#cgo LDFLAGS: -L${SRCDIR}/../../target/release -l:libratethrottle.a -lm -ldl -lpthread
// The hot calls (connect, disconnect, message and key checks) go through
// the shims below. Each takes one argument, a pointer to an rtg_call that
// the Go caller fills in on its stack, and writes the decision through
// call->out, a variable on the caller's stack (never kept). The Go side
// calls them with call() (calls.go), which runs them on the thread's
// system stack without cgo's entersyscall/exitsyscall, or through
// rtg_invoke, a plain cgo call, with -tags ratethrottle_cgocall.
//
// noescape: the C side never keeps a pointer it is given (per the header's
// ownership notes), so cgo need not move the Go variables to the heap.
// nocallback: these C functions never call back into Go. The only way the
// engine runs foreign code inside a check is the violation callback
// (rt_set_violation_callback), and it is per handle: this package never
// registers one (it drains the violation ring from a goroutine instead, see
// violations.go) and exports no Go function to C (no //export). Another
// process attached to a shared region has its own handle and callback,
// which never run in this process. If the package ever registers a violation
// callback, these nocallback lines must go, and so must call()'s fast path.
#cgo noescape rtg_invoke
#cgo nocallback rtg_invoke
#cgo noescape rt_client_connections
#cgo nocallback rt_client_connections
#cgo nocallback rtg_empty
#cgo nocallback rtg_check_message_at_loop

#include <stdint.h>
#include <stdlib.h>
#include "ratethrottle.h"

// One hot call's arguments and results. lim is the engine's handle;
// id/len the id or key bytes (Go memory, used during the call only); out
// the caller's decision variable.
typedef struct {
	rt_limiter *lim;
	const uint8_t *id;
	size_t len;
	rt_conn conn;
	uint64_t size;
	uint64_t now_ms;
	rt_decision *out;
} rtg_call;

// The shims, C functions of one pointer argument as call() needs them
// (not static: Go takes their addresses, which the linker resolves).
// restrict: out never aliases the call record.
void rtg_connect(void *p) {
	rtg_call *restrict c = p;
	rt_conn conn = 0;
	*c->out = rt_connect(c->lim, c->id, c->len, &conn);
	c->conn = conn;
}

void rtg_connect_at(void *p) {
	rtg_call *restrict c = p;
	rt_conn conn = 0;
	*c->out = rt_connect_at(c->lim, c->id, c->len, c->now_ms, &conn);
	c->conn = conn;
}

void rtg_disconnect(void *p) {
	rtg_call *restrict c = p;
	rt_disconnect(c->lim, c->conn);
}

void rtg_check_message(void *p) {
	rtg_call *restrict c = p;
	*c->out = rt_check_message(c->lim, c->conn, c->size);
}

void rtg_check_message_at(void *p) {
	rtg_call *restrict c = p;
	*c->out = rt_check_message_at(c->lim, c->conn, c->size, c->now_ms);
}

void rtg_check_key(void *p) {
	rtg_call *restrict c = p;
	*c->out = rt_check_key(c->lim, c->id, c->len, c->size);
}

void rtg_check_key_at(void *p) {
	rtg_call *restrict c = p;
	*c->out = rt_check_key_at(c->lim, c->id, c->len, c->size, c->now_ms);
}

// A shim through a plain cgo call (-tags ratethrottle_cgocall, and ids too
// long for the fast path).
static void rtg_invoke(void (*fn)(void *), void *call) { fn(call); }

// The empty C function the benchmarks compare against, called by cgo, and
// an empty shim, called as the hot calls are.
static inline void rtg_empty(void) {}
void rtg_empty_call(void *p) { (void)p; }

// For the benchmarks: n message checks in ONE cgo call, the clock moving
// 1 ms every 1000 checks from t0 (as the per-call benchmarks do it)
// (the engine's cost inside a Go process, without a cgo transition per
// check). Returns how many were allowed.
static uint64_t rtg_check_message_at_loop(uintptr_t lim, rt_conn conn, uint64_t size, uint64_t t0, uint64_t n) {
	uint64_t allowed = 0;
	for (uint64_t i = 0; i < n; i++) {
		allowed += rt_check_message_at((rt_limiter *)lim, conn, size, t0 + i / 1000).allowed;
	}
	return allowed;
}
*/
import "C"

import (
	"syscall"
	"time"
	"unsafe"
)

// cLimiter is the C handle type, named so other files need not import "C".
type cLimiter = C.rt_limiter

// cDecision is the engine's rt_decision, filled in by the hot calls below.
type cDecision = C.rt_decision

func emptyCgo() { C.rtg_empty() }

// checkMessageAtLoop makes n message checks in one cgo call (benchmarks
// only) and returns how many were allowed.
func checkMessageAtLoop(p *C.rt_limiter, h uint64, size, t0 uint64, n int) int {
	return int(C.rtg_check_message_at_loop(lp(p), C.rt_conn(h), C.uint64_t(size), C.uint64_t(t0), C.uint64_t(n)))
}

// cID is the (pointer, length) pair of an id or key. An empty one may have
// a nil pointer: (NULL, 0) is the valid empty id of the C ABI. The Go value
// must stay alive until the C call returns: call() sees to it for the hot
// calls; other callers use runtime.KeepAlive.
type cID struct {
	p *C.uint8_t
	n C.size_t
}

func idPtr(s string) cID {
	return cID{(*C.uint8_t)(unsafe.Pointer(unsafe.StringData(s))), C.size_t(len(s))}
}

// bytesID is b as a string without a copy, for the []byte forms of the
// calls: the engine reads the bytes during the call only.
func bytesID(b []byte) string { return unsafe.String(unsafe.SliceData(b), len(b)) }

// setFromC sets *dst, field by field, from a decision the engine wrote into
// a Go stack variable. dst is the hot call's caller's own variable (see
// Conn.checkMessage): a composite literal would be built in a temporary
// and copied with 16-byte moves, whose loads wait for the temporary's
// narrower stores to reach the cache (a stalled store-to-load forwarding).
func setFromC(dst *Decision, d *C.rt_decision) {
	dst.Allowed = bool(d.allowed)
	dst.Reason = Reason(d.reason)
	dst.RetryAfter = retryAfter(uint64(d.retry_after_ms))
	dst.Limit = uint64(d.limit)
	dst.Remaining = uint64(d.remaining)
	dst.Current = uint64(d.current)
}

func retryAfter(ms uint64) time.Duration {
	if ms > uint64(RetryNever/time.Millisecond) {
		return RetryNever
	}
	return time.Duration(ms) * time.Millisecond
}

func limitsToC(l Limits) C.rt_limits {
	var c C.rt_limits
	C.rt_limits_default(&c)
	c.window_ms = C.uint32_t(l.WindowMs)
	c.connections_per_window = C.uint32_t(l.ConnectionsPerWindow)
	c.max_concurrent_connections = C.uint32_t(l.MaxConcurrentConnections)
	c.messages_per_window = C.uint32_t(l.MessagesPerWindow)
	c.bytes_per_window = C.uint64_t(l.BytesPerWindow)
	c.max_message_size = C.uint32_t(l.MaxMessageSize)
	c.client_messages_per_window = C.uint32_t(l.ClientMessagesPerWindow)
	c.client_bytes_per_window = C.uint64_t(l.ClientBytesPerWindow)
	c.max_clients = C.uint32_t(l.MaxClients)
	c.max_connections = C.uint32_t(l.MaxConnections)
	var flags uint32
	if l.FailOpen {
		flags |= C.RT_FLAG_FAIL_OPEN
	}
	if l.DryRun {
		flags |= C.RT_FLAG_DRY_RUN
	}
	c.flags = C.uint32_t(flags)
	return c
}

func limitsFromC(c *C.rt_limits) Limits {
	return Limits{
		WindowMs:                 uint32(c.window_ms),
		ConnectionsPerWindow:     uint32(c.connections_per_window),
		MaxConcurrentConnections: uint32(c.max_concurrent_connections),
		MessagesPerWindow:        uint32(c.messages_per_window),
		BytesPerWindow:           uint64(c.bytes_per_window),
		MaxMessageSize:           uint32(c.max_message_size),
		ClientMessagesPerWindow:  uint32(c.client_messages_per_window),
		ClientBytesPerWindow:     uint64(c.client_bytes_per_window),
		MaxClients:               uint32(c.max_clients),
		MaxConnections:           uint32(c.max_connections),
		FailOpen:                 c.flags&C.RT_FLAG_FAIL_OPEN != 0,
		DryRun:                   c.flags&C.RT_FLAG_DRY_RUN != 0,
	}
}

func defaultLimits() Limits {
	var c C.rt_limits
	C.rt_limits_default(&c)
	return limitsFromC(&c)
}

// presetLimits returns one of the engine's presets (rt_limits_strict,
// rt_limits_moderate, rt_limits_generous).
func presetLimits(name string) Limits {
	var c C.rt_limits
	switch name {
	case "strict":
		C.rt_limits_strict(&c)
	case "moderate":
		C.rt_limits_moderate(&c)
	case "generous":
		C.rt_limits_generous(&c)
	default:
		panic("ratethrottle: unknown preset " + name)
	}
	return limitsFromC(&c)
}

// validateLimits returns nil or the engine's message naming the bad field.
func validateLimits(l Limits) error {
	c := limitsToC(l)
	if st := C.rt_limits_validate(&c); st == C.RT_STATUS_OK {
		return nil
	} else {
		return &LimitsError{Status: statusString(uint32(st)), Message: limitsMessage(&c)}
	}
}

func limitsMessage(c *C.rt_limits) string {
	n := C.rt_limits_error(c, nil, 0)
	buf := make([]byte, int(n)+1)
	C.rt_limits_error(c, (*C.char)(unsafe.Pointer(&buf[0])), C.size_t(len(buf)))
	return string(buf[:n])
}

func statusString(st uint32) string { return C.GoString(C.rt_status_str(C.rt_status(st))) }

func reasonString(r uint32) string { return C.GoString(C.rt_reason_str(C.rt_reason(r))) }

func violationTypeString(r uint32) string {
	return C.GoString(C.rt_violation_type_str(C.rt_reason(r)))
}

func engineVersion() string { return C.GoString(C.rt_version()) }

func regionSize(l Limits) int {
	c := limitsToC(l)
	return int(C.rt_region_size(&c))
}

func cNew(l Limits) (*C.rt_limiter, uint32) {
	c := limitsToC(l)
	var p *C.rt_limiter
	st := C.rt_limiter_new(&c, &p)
	return p, uint32(st)
}

// cOpenFile creates or attaches the region in the file at path
// (rt_limiter_open_file; l nil: attach only). path must hold no NUL byte
// (the caller checks). errno is the failing system call's error, meaningful
// only when the status is RT_STATUS_IO_ERROR.
func cOpenFile(path string, l *Limits) (*C.rt_limiter, uint32, syscall.Errno) {
	cpath := C.CString(path)
	defer C.free(unsafe.Pointer(cpath))
	var (
		p  *C.rt_limiter
		st C.rt_status
		en error
	)
	if l != nil {
		c := limitsToC(*l)
		st, en = C.rt_limiter_open_file(cpath, &c, &p, nil)
	} else {
		st, en = C.rt_limiter_open_file(cpath, nil, &p, nil)
	}
	errno, _ := en.(syscall.Errno) // cgo's second result is always a syscall.Errno or nil
	return p, uint32(st), errno
}

func cFree(p *C.rt_limiter) { C.rt_limiter_free(p) }

func cUpdateLimits(p *C.rt_limiter, l Limits) (uint32, string) {
	c := limitsToC(l)
	st := C.rt_limiter_update_limits(p, &c)
	if st == C.RT_STATUS_INVALID_LIMITS {
		return uint32(st), limitsMessage(&c)
	}
	return uint32(st), ""
}

func cReapDead(p *C.rt_limiter) int { return int(C.rt_reap_dead(p)) }

// lp passes the engine handle to a cgo shim as an integer (the benchmarks'
// loop; the hot calls pass it in their record). A pointer argument
// of an opaque C type makes cgo call cgoCheckPointer on every call (it
// cannot tell that the type holds no Go pointers); the handle is memory the
// engine allocated (or a region in an mmap-ed file), never Go memory, so
// that check can only pass. Measured: about 8-10 ns less per check.
func lp(p *C.rt_limiter) C.uintptr_t { return C.uintptr_t(uintptr(unsafe.Pointer(p))) }

// The hot calls write the engine's decision into *out, a variable on the
// caller's stack (noescape keeps it there); the caller converts it with
// setFromC once, after leaving the in-flight guard, into its result.
// Each fills in a call record on its stack and runs a shim with call()
// (calls.go).

// cCall is one hot call's record (rtg_call).
type cCall = C.rtg_call

// The shims' addresses, for call().
var (
	fnConnect        = unsafe.Pointer(C.rtg_connect)
	fnConnectAt      = unsafe.Pointer(C.rtg_connect_at)
	fnDisconnect     = unsafe.Pointer(C.rtg_disconnect)
	fnCheckMessage   = unsafe.Pointer(C.rtg_check_message)
	fnCheckMessageAt = unsafe.Pointer(C.rtg_check_message_at)
	fnCheckKey       = unsafe.Pointer(C.rtg_check_key)
	fnCheckKeyAt     = unsafe.Pointer(C.rtg_check_key_at)
	fnEmpty          = unsafe.Pointer(C.rtg_empty_call)
)

// fastIDMax: call() makes a plain cgo call for ids and keys longer than
// this, whatever the build (calls.go).
const fastIDMax = 4096

// cgoInvoke runs the shim fn on c through a plain cgo call. c is on the
// caller's stack (cgo's pointer check passes stack memory, which may hold
// pointers to Go memory: the id bytes and the decision variable).
func cgoInvoke(fn unsafe.Pointer, c *cCall) { C.rtg_invoke((*[0]byte)(fn), unsafe.Pointer(c)) }

// cConnect, cCheckMessage and cCheckKey read the engine's clock, or pass
// nowMs when at is set (the _at shims).

func cConnect(p *C.rt_limiter, id cID, nowMs uint64, at bool, out *cDecision) uint64 {
	var c cCall
	c.lim = p
	c.id = id.p
	c.len = id.n
	c.now_ms = C.uint64_t(nowMs)
	c.out = out
	call(pick(at, fnConnectAt, fnConnect), &c)
	return uint64(c.conn)
}

func cDisconnect(p *C.rt_limiter, h uint64) {
	var c cCall
	c.lim = p
	c.conn = C.rt_conn(h)
	call(fnDisconnect, &c)
}

func cCheckMessage(p *C.rt_limiter, h uint64, size, nowMs uint64, at bool, out *cDecision) {
	var c cCall
	c.lim = p
	c.conn = C.rt_conn(h)
	c.size = C.uint64_t(size)
	c.now_ms = C.uint64_t(nowMs)
	c.out = out
	call(pick(at, fnCheckMessageAt, fnCheckMessage), &c)
}

func cCheckKey(p *C.rt_limiter, k cID, size, nowMs uint64, at bool, out *cDecision) {
	var c cCall
	c.lim = p
	c.id = k.p
	c.len = k.n
	c.size = C.uint64_t(size)
	c.now_ms = C.uint64_t(nowMs)
	c.out = out
	call(pick(at, fnCheckKeyAt, fnCheckKey), &c)
}

func pick(at bool, withClock, withoutClock unsafe.Pointer) unsafe.Pointer {
	if at {
		return withClock
	}
	return withoutClock
}

// emptyCall runs an empty shim the way the hot calls run theirs
// (benchmarks only).
func emptyCall() {
	var c cCall
	call(fnEmpty, &c)
}

func cClientConnections(p *C.rt_limiter, id cID) int {
	return int(C.rt_client_connections(p, id.p, id.n))
}

func cStats(p *C.rt_limiter) (Stats, uint32) {
	var s C.rt_stats
	s.struct_size = C.uint32_t(unsafe.Sizeof(s))
	if st := C.rt_limiter_stats(p, &s); st != C.RT_STATUS_OK {
		return Stats{}, uint32(st)
	}
	out := Stats{
		ActiveConnections:  uint64(s.active_connections),
		UniqueClients:      uint64(s.unique_clients),
		TotalMessages:      uint64(s.total_messages),
		TotalBytes:         uint64(s.total_bytes),
		ConnectionsAllowed: uint64(s.connections_allowed),
		MessagesAllowed:    uint64(s.messages_allowed),
		TrackedClients:     uint64(s.tracked_clients),
		MaxClients:         uint64(s.max_clients),
		MaxConnections:     uint64(s.max_connections),
		ViolationsDropped:  uint64(s.violations_dropped),
		DryRunDenied:       uint64(s.dry_run_denied),
		UntrackedAllowed:   uint64(s.untracked_allowed),
		Limits:             limitsFromC(&s.limits),
	}
	for i := range out.Denied {
		out.Denied[i] = uint64(s.denied[i])
	}
	return out, C.RT_STATUS_OK
}

func cConnectionInfo(p *C.rt_limiter, h uint64) (ConnectionInfo, uint32) {
	var ci C.rt_connection_info
	ci.struct_size = C.uint32_t(unsafe.Sizeof(ci))
	if st := C.rt_limiter_connection_info(p, C.rt_conn(h), &ci); st != C.RT_STATUS_OK {
		return ConnectionInfo{}, uint32(st)
	}
	n := min(int(ci.client_id_len), len(ci.client_id))
	return ConnectionInfo{
		ClientID:      C.GoBytes(unsafe.Pointer(&ci.client_id[0]), C.int(n)),
		ClientIDLen:   int(ci.client_id_len),
		ConnectedAtMs: uint64(ci.connected_at_ms),
		LastMessageMs: uint64(ci.last_message_at_ms),
		MessageCount:  uint64(ci.message_count),
		ByteCount:     uint64(ci.byte_count),
	}, C.RT_STATUS_OK
}

func cPrometheus(p *C.rt_limiter) []byte {
	n := int(C.rt_stats_prometheus(p, nil, 0))
	for n > 0 {
		buf := make([]byte, n+256) // slack: counters may grow between the calls
		got := int(C.rt_stats_prometheus(p, (*C.char)(unsafe.Pointer(&buf[0])), C.size_t(len(buf))))
		if got < len(buf) {
			return buf[:got]
		}
		n = got
	}
	return nil
}

const violationBatch = 64

type cViolationBuf [violationBatch]C.rt_violation

func cDrainViolations(p *C.rt_limiter, buf *cViolationBuf, out []Violation) []Violation {
	n := int(C.rt_drain_violations(p, &buf[0], C.size_t(len(buf))))
	for i := 0; i < n; i++ {
		v := &buf[i]
		idn := min(int(v.client_id_len), len(v.client_id))
		out = append(out, Violation{
			Reason:      Reason(v.reason),
			ClientID:    C.GoBytes(unsafe.Pointer(&v.client_id[0]), C.int(idn)),
			ClientIDLen: int(v.client_id_len),
			ConnID:      uint64(v.conn),
			Limit:       uint64(v.limit),
			Current:     uint64(v.current),
			Size:        uint64(v.size),
			RetryAfter:  retryAfter(uint64(v.retry_after_ms)),
			AtMs:        uint64(v.at_ms),
		})
	}
	return out
}

// Status values the package tests against (the ABI fixes them for ever).
const (
	statusOK                 = C.RT_STATUS_OK
	statusInvalidLimits      = C.RT_STATUS_INVALID_LIMITS
	statusIncompatibleRegion = C.RT_STATUS_INCOMPATIBLE_REGION
	statusUnknownConnection  = C.RT_STATUS_UNKNOWN_CONNECTION
	retryNeverMs             = uint64(C.RT_RETRY_NEVER)
	reasonCount              = int(C.RT_REASON_COUNT)
	statusRegionTooSmall     = C.RT_STATUS_REGION_TOO_SMALL
	statusIOError            = C.RT_STATUS_IO_ERROR
	cReasonConnectionRate    = C.RT_CONNECTION_RATE
	cReasonConcurrent        = C.RT_CONCURRENT_CONNECTIONS
	cReasonMessageTooLarge   = C.RT_MESSAGE_TOO_LARGE
	cReasonMessageRate       = C.RT_MESSAGE_RATE
	cReasonBandwidth         = C.RT_BANDWIDTH
	cReasonClientMessageRate = C.RT_CLIENT_MESSAGE_RATE
	cReasonClientBandwidth   = C.RT_CLIENT_BANDWIDTH
	cReasonTableFull         = C.RT_TABLE_FULL
	cReasonUnknownConnection = C.RT_UNKNOWN_CONNECTION
	cReasonInvalidArgument   = C.RT_INVALID_ARGUMENT
)
