//go:build ratethrottle_cgocall

package ratethrottle

import "unsafe"

// With -tags ratethrottle_cgocall every hot call is a plain cgo call
// (calls.go describes the default).

// call runs the shim fn on c, which lives on the caller's stack.
func call(fn unsafe.Pointer, c *cCall) { cgoInvoke(fn, c) }
