//go:build ratethrottle_cgocall

package ratethrottle

import (
	"runtime"
	"unsafe"
)

// With -tags ratethrottle_cgocall every hot call is a plain cgo call
// (calls.go describes the default).

// call runs the shim fn on c, which lives on the caller's stack, and keeps
// the memory c.id points into alive until the shim has returned.
func call(fn unsafe.Pointer, c *cCall) {
	cgoInvoke(fn, c)
	runtime.KeepAlive(c.id)
}
