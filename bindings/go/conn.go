package ratethrottle

import (
	"fmt"
	"runtime"
	"sync/atomic"
)

// Conn is one connection opened by Limiter.Connect. Close it when the
// socket closes, however it closes (the middleware does it for you). Its
// methods are safe for concurrent use; a nil *Conn (or a zero Conn{}) is
// refused with ErrNilConn.
type Conn struct {
	_ noCopy // go vet: a Conn is used through its pointer, never copied
	// h is the engine handle, 0 once closed. At offset 0 (noCopy takes no
	// space), so that it is 8-byte aligned for 64-bit atomics on 32-bit
	// platforms too.
	// Connect writes it once, with a plain store, before the *Conn is
	// returned (so before any other goroutine can see it: the locked
	// exchange of an atomic Store is not needed there); after that it is
	// read and written only through the sync/atomic functions.
	h   uint64
	lim *Limiter
}

// Limiter is the limiter that opened c.
func (c *Conn) Limiter() *Limiter {
	if c == nil {
		return nil
	}
	return c.lim
}

// ID is the engine's handle (as in Violation.ConnID); 0 once closed.
func (c *Conn) ID() uint64 {
	if c == nil {
		return 0
	}
	return atomic.LoadUint64(&c.h)
}

// CheckMessage checks one message of size bytes: size (MaxMessageSize), the
// connection's messages and bytes per window, then its client's. An allowed
// message is counted against every limit, a denied one against none. A
// negative size is refused (ErrNegativeSize) before the engine is called;
// after Close the engine answers ReasonUnknownConnection.
func (c *Conn) CheckMessage(size int) (d Decision) {
	c.checkMessage(&d, size, 0, false)
	return d
}

// CheckMessageAt is CheckMessage with the caller's clock in ms.
func (c *Conn) CheckMessageAt(size int, nowMs uint64) (d Decision) {
	c.checkMessage(&d, size, nowMs, true)
	return d
}

// checkMessage is the body of both forms: the engine's clock, or nowMs when
// at is set. It fills in *dec, the caller's result, field by field. The
// exported forms are small enough to be inlined, so *dec is the variable
// of the code that called them, and no Decision is copied: Decision has
// too many fields for the compiler to keep in registers, and a Decision
// returned by a call is stored and then copied with 16-byte moves, whose
// loads wait for the narrower stores before them to reach the cache
// (about 7 to 10 ns a call on the machine of BENCHMARKS.md).
func (c *Conn) checkMessage(dec *Decision, size int, nowMs uint64, at bool) {
	if c == nil || c.lim == nil {
		*dec = refused(ErrNilConn)
		return
	}
	if size < 0 {
		*dec = refused(ErrNegativeSize)
		return
	}
	l := c.lim
	g := l.enter()
	if g == nil {
		*dec = refused(ErrClosed)
		return
	}
	var d cDecision
	cCheckMessage(l.ptr, atomic.LoadUint64(&c.h), uint64(size), nowMs, at, &d)
	l.leave(g)
	setFromC(dec, &d)
}

// Close frees the connection's concurrency slot. Idempotent; closing after
// the Limiter was closed does nothing (the engine closed the connection),
// except on a shared region that another Limiter of this process still has
// open: the connection is then closed through that one.
func (c *Conn) Close() error {
	if c == nil || c.lim == nil {
		return nil
	}
	h := atomic.SwapUint64(&c.h, 0)
	if h == 0 {
		return nil
	}
	l := c.lim
	g := l.enter()
	if g == nil {
		// Its Limiter is closed. On a shared region that another Limiter of
		// this process still has open, the connection is still counted
		// there: close it through that one.
		closeThroughPeer(l.file, h)
		return nil
	}
	cDisconnect(l.ptr, h)
	l.leave(g)
	return nil
}

// Info is Limiter.ConnectionInfo(c).
func (c *Conn) Info() (ConnectionInfo, error) {
	if c == nil || c.lim == nil {
		return ConnectionInfo{}, ErrNilConn
	}
	l := c.lim
	g := l.enter()
	if g == nil {
		return ConnectionInfo{}, ErrClosed
	}
	ci, st := cConnectionInfo(l.ptr, atomic.LoadUint64(&c.h))
	l.leave(g)
	runtime.KeepAlive(c)
	switch st {
	case statusOK:
		return ci, nil
	case statusUnknownConnection:
		return ConnectionInfo{}, ErrUnknownConn
	}
	return ConnectionInfo{}, fmt.Errorf("ratethrottle: rt_limiter_connection_info: %s", statusString(st))
}

// noCopy makes `go vet` (copylocks) report a copied Conn, as the
// atomic.Uint64 field it replaced did. Zero size, so h stays at offset 0.
type noCopy struct{}

func (*noCopy) Lock()   {}
func (*noCopy) Unlock() {}
