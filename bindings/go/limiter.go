package ratethrottle

import (
	"fmt"
	"net/http"
	"runtime"
	"sync"
	"sync/atomic"
	"time"
	"unsafe"
)

// Limiter is a rate limiter: a handle on an engine region, on the heap (New)
// or in a shared-memory file (NewShared). All methods are safe for
// concurrent use. Close releases it; a finalizer closes a Limiter that
// becomes unreachable without Close, as a safety net only.
//
// Calls in flight are counted so that Close can wait for them before the
// engine handle is freed: a call racing Close either completes normally or
// is refused with ErrClosed, never touches freed memory.
type Limiter struct {
	ptr    *cLimiter
	closed atomic.Bool
	// inflight counts the calls inside the engine, spread over padded shards
	// so that goroutines on different CPUs do not bounce one cache line.
	// A call increments a shard, then reads closed; Close sets closed, then
	// waits for every shard to reach 0. Go's atomics are sequentially
	// consistent, so either the call sees closed and backs out, or Close
	// sees its increment and waits for it.
	_         [64]byte // keeps ptr and closed (read by every call) off the shards' lines
	inflight  [inflightShards]inflightShard
	closeOnce sync.Once
	path      string // the shared region's file, for messages
	file      fileID // the shared region's file (zero on the heap), see peers

	violationsDropped atomic.Uint64 // records a watcher could not deliver
}

const inflightShards = 8

type inflightShard struct {
	n atomic.Int64
	_ [56]byte // one 64-byte cache line per shard
}

// enter registers a call in flight and returns its shard, or nil when the
// limiter is closed (or nil). The shard is picked from the address of the
// caller's stack, which differs between goroutines: only a heuristic for
// spreading, correctness does not depend on it.
func (l *Limiter) enter() *atomic.Int64 {
	if l == nil {
		return nil
	}
	var marker byte
	s := &l.inflight[(uintptr(unsafe.Pointer(&marker))>>13)%inflightShards].n
	s.Add(1)
	if l.closed.Load() {
		s.Add(-1)
		return nil
	}
	return s
}

func (l *Limiter) leave(s *atomic.Int64) { s.Add(-1) }

func (l *Limiter) busy() bool {
	for i := range l.inflight {
		if l.inflight[i].n.Load() != 0 {
			return true
		}
	}
	return false
}

// New creates a limiter whose state lives on the heap. Invalid limits give a
// *LimitsError naming the field (from the engine).
func New(limits Limits) (*Limiter, error) {
	if err := validateLimits(limits); err != nil {
		return nil, err
	}
	p, st := cNew(limits)
	if st != statusOK {
		return nil, fmt.Errorf("ratethrottle: rt_limiter_new: %s", statusString(st))
	}
	return newLimiter(p, ""), nil
}

func newLimiter(p *cLimiter, path string) *Limiter {
	l := &Limiter{ptr: p, path: path}
	runtime.SetFinalizer(l, (*Limiter).Close)
	return l
}

// Close waits for calls in flight, then frees the engine handle (and
// unmaps a shared region; the file stays, and other processes keep using
// it). It is idempotent and always returns nil. After Close, decisions are
// denied with ReasonInvalidArgument and Err() == ErrClosed, and methods
// returning an error return ErrClosed.
func (l *Limiter) Close() error {
	if l == nil {
		return nil
	}
	l.closeOnce.Do(func() {
		runtime.SetFinalizer(l, nil)
		l.closed.Store(true)
		removePeer(l)
		for spins := 0; l.busy(); spins++ {
			if spins < 100 {
				runtime.Gosched()
			} else {
				time.Sleep(50 * time.Microsecond)
			}
		}
		cFree(l.ptr) // also unmaps a shared region (rt_limiter_free)
		l.ptr = nil
	})
	return nil
}

// Connect opens a connection of clientID if the limits allow it: table
// capacity, the client's live connections, then its new connections per
// window, decided and registered as one atomic step. Any string is an id,
// including "" and strings with NUL bytes or invalid UTF-8 (compared as
// bytes). The Conn is nil when denied; when allowed the caller must Close it.
func (l *Limiter) Connect(clientID string) (c *Conn, d Decision) {
	c = l.connect(&d, clientID, 0, false)
	return c, d
}

// ConnectAt is Connect with the caller's monotonic clock in ms (a fake clock
// in tests, or a host's own). Use one clock consistently for one limiter.
func (l *Limiter) ConnectAt(clientID string, nowMs uint64) (c *Conn, d Decision) {
	c = l.connect(&d, clientID, nowMs, true)
	return c, d
}

// ConnectBytes is Connect with a []byte id; nil and empty are the empty id.
func (l *Limiter) ConnectBytes(clientID []byte) (c *Conn, d Decision) {
	c = l.connect(&d, bytesID(clientID), 0, false)
	return c, d
}

// connect is the body of the Connect forms: the engine's clock, or nowMs
// when at is set. It fills in *dec, the caller's result (see
// Conn.checkMessage). call() keeps id's bytes alive until the engine has
// returned.
func (l *Limiter) connect(dec *Decision, id string, nowMs uint64, at bool) *Conn {
	g := l.enter()
	if g == nil {
		*dec = refused(ErrClosed)
		return nil
	}
	var d cDecision
	h := cConnect(l.ptr, idPtr(id), nowMs, at, &d)
	l.leave(g)
	setFromC(dec, &d)
	if !dec.Allowed || h == 0 {
		// h == 0 while allowed: fail-open with even the connection slab
		// full. The connect is allowed untracked and there is nothing to close.
		return nil
	}
	return &Conn{h: h, lim: l}
}

// CheckKey checks one message of size bytes against a key's aggregate limits
// (ClientMessagesPerWindow, ClientBytesPerWindow): a room, a channel, a user.
// Keys and client ids share one table: prefix keys that could collide
// ("room:lobby"). A negative size is refused (ErrNegativeSize).
func (l *Limiter) CheckKey(key string, size int) (d Decision) {
	l.checkKey(&d, key, size, 0, false)
	return d
}

// CheckKeyAt is CheckKey with the caller's clock.
func (l *Limiter) CheckKeyAt(key string, size int, nowMs uint64) (d Decision) {
	l.checkKey(&d, key, size, nowMs, true)
	return d
}

// CheckKeyBytes is CheckKey with a []byte key; nil and empty are the empty key.
func (l *Limiter) CheckKeyBytes(key []byte, size int) (d Decision) {
	l.checkKey(&d, bytesID(key), size, 0, false)
	return d
}

// checkKey is the body of the CheckKey forms: the engine's clock, or nowMs
// when at is set. It fills in *dec, the caller's result (see
// Conn.checkMessage). call() keeps key's bytes alive until the engine has
// returned.
func (l *Limiter) checkKey(dec *Decision, key string, size int, nowMs uint64, at bool) {
	if size < 0 {
		*dec = refused(ErrNegativeSize)
		return
	}
	g := l.enter()
	if g == nil {
		*dec = refused(ErrClosed)
		return
	}
	var d cDecision
	cCheckKey(l.ptr, idPtr(key), uint64(size), nowMs, at, &d)
	l.leave(g)
	setFromC(dec, &d)
}

// ClientConnections is the number of live connections of clientID (0 when
// unknown or after Close).
func (l *Limiter) ClientConnections(clientID string) int {
	g := l.enter()
	if g == nil {
		return 0
	}
	c := cClientConnections(l.ptr, idPtr(clientID))
	l.leave(g)
	runtime.KeepAlive(clientID)
	return c
}

// Stats is a snapshot of the statistics: totals since the region was
// created, over every process attached to it.
type Stats struct {
	ActiveConnections  uint64              // live connections
	UniqueClients      uint64              // clients with at least one live connection
	TotalMessages      uint64              // allowed messages on connections
	TotalBytes         uint64              // their bytes
	ConnectionsAllowed uint64              // allowed connects (with untracked and dry-run ones)
	MessagesAllowed    uint64              // allowed CheckMessage plus allowed CheckKey calls
	Denied             [ReasonCount]uint64 // denials by reason, indexed by Reason
	TrackedClients     uint64              // clients and keys holding a table slot
	MaxClients         uint64              // client table capacity
	MaxConnections     uint64              // connection slab capacity
	ViolationsDropped  uint64              // violation records dropped because the engine's ring was full
	DryRunDenied       uint64              // requests a dry-run limiter would have denied
	UntrackedAllowed   uint64              // fail-open connects allowed untracked
	Limits             Limits              // the limits in force
}

// Stats reads the statistics. It scans every slot (O(capacity)): call it
// from a metrics path, not per message.
func (l *Limiter) Stats() (Stats, error) {
	g := l.enter()
	if g == nil {
		return Stats{}, ErrClosed
	}
	s, st := cStats(l.ptr)
	l.leave(g)
	if st != statusOK {
		return Stats{}, fmt.Errorf("ratethrottle: rt_limiter_stats: %s", statusString(st))
	}
	return s, nil
}

// Limits returns the limits in force (read from the region, so it sees
// updates made by other processes).
func (l *Limiter) Limits() (Limits, error) {
	s, err := l.Stats()
	return s.Limits, err
}

// UpdateLimits changes rates, sizes, window and flags at run time; every
// goroutine and every process attached to the region uses them from its next
// check. MaxClients and MaxConnections cannot change.
func (l *Limiter) UpdateLimits(limits Limits) error {
	g := l.enter()
	if g == nil {
		return ErrClosed
	}
	st, msg := cUpdateLimits(l.ptr, limits)
	l.leave(g)
	switch st {
	case statusOK:
		return nil
	case statusInvalidLimits:
		return &LimitsError{Status: statusString(st), Message: msg}
	}
	return fmt.Errorf("ratethrottle: rt_limiter_update_limits: %s (capacities cannot change)", statusString(st))
}

// ReapDead frees the connections of processes that no longer exist (a
// crashed process sharing the region) and returns how many. NewShared and
// AttachShared do it too when they attach to an existing region.
func (l *Limiter) ReapDead() int {
	g := l.enter()
	if g == nil {
		return 0
	}
	n := cReapDead(l.ptr)
	l.leave(g)
	return n
}

// Prometheus renders the statistics in the Prometheus text format (0.0.4).
func (l *Limiter) Prometheus() ([]byte, error) {
	g := l.enter()
	if g == nil {
		return nil, ErrClosed
	}
	b := cPrometheus(l.ptr)
	l.leave(g)
	return b, nil
}

// MetricsHandler serves Prometheus() as text/plain; version=0.0.4. After
// Close it answers 503.
func (l *Limiter) MetricsHandler() http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		b, err := l.Prometheus()
		if err != nil {
			http.Error(w, err.Error(), http.StatusServiceUnavailable)
			return
		}
		w.Header().Set("Content-Type", "text/plain; version=0.0.4; charset=utf-8")
		_, _ = w.Write(b)
	})
}

// ConnectionInfo is what the engine knows of one live connection.
type ConnectionInfo struct {
	ClientID      []byte // the first 40 bytes of the client id
	ClientIDLen   int    // the id's full length (0 for an untracked fail-open connection)
	ConnectedAtMs uint64 // the limiter's clock (ms) at connect
	LastMessageMs uint64 // the limiter's clock at the last allowed message
	MessageCount  uint64 // allowed messages
	ByteCount     uint64 // their bytes
}

// ConnectionInfo reports on c. Errors: ErrNilConn, ErrForeignConn (c was
// opened by another Limiter), ErrClosed, ErrUnknownConn (c is closed).
func (l *Limiter) ConnectionInfo(c *Conn) (ConnectionInfo, error) {
	if c == nil {
		return ConnectionInfo{}, ErrNilConn
	}
	if c.lim != l {
		return ConnectionInfo{}, ErrForeignConn
	}
	return c.Info()
}
