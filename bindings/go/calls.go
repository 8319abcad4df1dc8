//go:build !ratethrottle_cgocall

package ratethrottle

import (
	"runtime"
	"unsafe"
)

// How the hot calls (connect, disconnect, message and key checks) reach
// C: on the thread's system stack through runtime.asmcgocall, the stack
// switch a cgo call makes, without the entersyscall/exitsyscall that a cgo
// call adds around it (about 30 ns a call here; BENCHMARKS.md). The Go
// runtime makes its own short C calls this way (on Linux with cgo, the C
// setenv behind os.Setenv, runtime/env_posix.go; on darwin, every libc
// call). It is sound for these shims because they are short and never
// block: the engine's hot path takes no lock and makes no system call
// other than reading the clock (and, once per process, reading
// /proc/self/stat for the process token, which a limiter that formats its
// region has done already), and they never call back into Go (the
// nocallback notes in cgo.go). While one runs, its goroutine keeps its P
// and cannot be preempted, as in any short Go loop.
//
// Ids and keys longer than fastIDMax bytes go through a plain cgo call, so
// that hashing a huge id never holds a P, or delays a stop-the-world, for
// long.
//
// asmcgocall is not a promised API: Go 1.26's linker accepts this
// linkname because the function is written in assembly (go.dev/issue/67401).
// If a later Go refuses it, the link fails naming runtime.asmcgocall; build
// with -tags ratethrottle_cgocall to make every call a plain cgo call
// (calls_cgo.go).

//go:linkname asmcgocall runtime.asmcgocall
//go:noescape
func asmcgocall(fn, arg unsafe.Pointer) int32

// call runs the shim fn on c, which lives on the caller's stack, and keeps
// the memory c.id points into alive until the shim has returned.
func call(fn unsafe.Pointer, c *cCall) {
	if c.len > fastIDMax {
		cgoInvoke(fn, c)
	} else {
		asmcgocall(fn, unsafe.Pointer(c))
	}
	runtime.KeepAlive(c.id)
}
