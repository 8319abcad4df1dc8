package ratethrottle

import (
	"fmt"
	mathrand "math/rand/v2"
	"runtime"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"unsafe"

	"golang.org/x/time/rate"
)

// Benchmarks of the real cgo path beside an empty cgo call and beside what
// Go users write today (golang.org/x/time/rate), in one `go test -bench` run.
// Each loop counts allowed decisions and fails if any was denied, so no
// number is the cost of a denial.

// benchLimits never deny at the rates a benchmark reaches: 1 ms windows
// (plain clock, coarse: 1-4 ms) or a caller clock advanced every 1000 ops.
// Connection-level limits are high enough for 60 s windows.
func benchLimits() Limits {
	l := DefaultLimits()
	l.WindowMs = 1
	l.MessagesPerWindow = 262143
	l.BytesPerWindow = 67108863
	l.ConnectionsPerWindow = 16777215
	l.MaxConcurrentConnections = 16777215
	l.MaxClients, l.MaxConnections = 1<<15, 1<<15
	return l
}

// keyedBenchLimits keep a 60 s window: with 1 ms windows a key unused for
// 2 ms holds no information, so its slot may be reclaimed and every visit
// of the 10k keys would be a first insert (the slow path). Per key per
// window: 262143 messages, 16777215 connects; a run makes far fewer.
func keyedBenchLimits() Limits {
	l := benchLimits()
	l.WindowMs = 60000
	l.ClientMessagesPerWindow = 262143
	return l
}

func benchLimiter(b *testing.B) *Limiter {
	lim, err := New(benchLimits())
	if err != nil {
		b.Fatal(err)
	}
	b.Cleanup(func() { lim.Close() })
	return lim
}

// CPU time beside wall time: on a shared, loaded machine the wall time of a
// loop includes the time its thread waited for a CPU; its CPU time does not.
// Single-goroutine loops report their own thread's CPU time (the goroutine
// is locked to its thread); parallel ones the whole process's (getrusage).

func threadCPU() int64 {
	var ts syscall.Timespec
	const clockThreadCPUTimeID = 3 // CLOCK_THREAD_CPUTIME_ID, <time.h>
	syscall.Syscall(syscall.SYS_CLOCK_GETTIME, clockThreadCPUTimeID, uintptr(unsafe.Pointer(&ts)), 0)
	return ts.Nano()
}

func processCPU() int64 {
	var ru syscall.Rusage
	syscall.Getrusage(syscall.RUSAGE_SELF, &ru)
	return ru.Utime.Nano() + ru.Stime.Nano()
}

// threadCPUTimer locks the benchmark goroutine to its thread, resets the
// timer and returns the function that reports cpu-ns/op after the loop.
func threadCPUTimer(b *testing.B) func() {
	runtime.LockOSThread()
	b.ResetTimer()
	t0 := threadCPU()
	return func() {
		t1 := threadCPU()
		b.StopTimer()
		runtime.UnlockOSThread()
		b.ReportMetric(float64(t1-t0)/float64(b.N), "cpu-ns/op")
	}
}

func checkAllAllowed(b *testing.B, denied int) {
	if denied != 0 {
		b.Fatalf("%d of %d decisions were denials", denied, b.N)
	}
}

func BenchmarkEmptyCgo(b *testing.B) {
	stop := threadCPUTimer(b)
	for i := 0; i < b.N; i++ {
		emptyCgo()
	}
	stop()
}

// An empty C function called the way the hot calls are made (calls.go:
// asmcgocall by default; with -tags ratethrottle_cgocall, a cgo call).
func BenchmarkEmptyHotCall(b *testing.B) {
	stop := threadCPUTimer(b)
	for i := 0; i < b.N; i++ {
		emptyCall()
	}
	stop()
}

func BenchmarkCheckMessage(b *testing.B) {
	lim := benchLimiter(b)
	c, _ := lim.Connect("bench")
	denied := 0
	stop := threadCPUTimer(b)
	for i := 0; i < b.N; i++ {
		if !c.CheckMessage(64).Allowed {
			denied++
		}
	}
	stop()
	checkAllAllowed(b, denied)
}

func BenchmarkCheckMessageAt(b *testing.B) {
	lim := benchLimiter(b)
	c, _ := lim.ConnectAt("bench", 0)
	denied := 0
	stop := threadCPUTimer(b)
	for i := 0; i < b.N; i++ {
		if !c.CheckMessageAt(64, uint64(i/1000)).Allowed {
			denied++
		}
	}
	stop()
	checkAllAllowed(b, denied)
}

// The same hot call without the binding's in-flight guard (two atomic
// adds), its Go-side checks and the Decision it builds: what those cost is
// the difference.
func BenchmarkCheckMessageAtRaw(b *testing.B) {
	lim := benchLimiter(b)
	c, _ := lim.ConnectAt("bench", 0)
	h := atomic.LoadUint64(&c.h)
	denied := 0
	stop := threadCPUTimer(b)
	for i := 0; i < b.N; i++ {
		var d cDecision
		cCheckMessage(lim.ptr, h, 64, uint64(i/1000), true, &d)
		if !bool(d.allowed) {
			denied++
		}
	}
	stop()
	checkAllAllowed(b, denied)
}

// The engine's message check inside this Go process with no transition
// per check: b.N checks in one cgo call (the same clock steps as the
// benchmarks above). CheckMessageAtRaw minus EmptyHotCall minus this is
// what a check costs more when every check is its own call into C (the
// switch leaves caches and branch predictors colder for the engine).
func BenchmarkCheckMessageAtInC(b *testing.B) {
	lim := benchLimiter(b)
	c, _ := lim.ConnectAt("bench", 0)
	h := atomic.LoadUint64(&c.h)
	stop := threadCPUTimer(b)
	allowed := checkMessageAtLoop(lim.ptr, h, 64, 0, b.N)
	stop()
	checkAllAllowed(b, b.N-allowed)
}

func BenchmarkConnectClose(b *testing.B) {
	lim := benchLimiter(b)
	denied := 0
	stop := threadCPUTimer(b)
	for i := 0; i < b.N; i++ {
		c, d := lim.Connect("bench")
		if !d.Allowed {
			denied++
		}
		c.Close()
	}
	stop()
	checkAllAllowed(b, denied)
}

// Peer: one x/time/rate limiter per connection (what a Go server keeps per
// socket to limit its messages).
func BenchmarkXTimeRatePerConnAllow(b *testing.B) {
	l := peerLimiter()
	denied := 0
	stop := threadCPUTimer(b)
	for i := 0; i < b.N; i++ {
		if !l.Allow() {
			denied++
		}
	}
	stop()
	checkAllAllowed(b, denied)
}

// peerLimiter is the x/time/rate limiter every peer uses: a rate and a
// burst no benchmark reaches, so it never denies.
func peerLimiter() *rate.Limiter { return rate.NewLimiter(rate.Limit(1e12), 1<<30) }

// Peer: a mutex-guarded map of x/time/rate limiters per client, the usual
// keyed limiter in Go.
type mutexMap struct {
	mu sync.Mutex
	m  map[string]*rate.Limiter
}

func (mm *mutexMap) allow(key string) bool {
	mm.mu.Lock()
	l, ok := mm.m[key]
	if !ok {
		l = peerLimiter()
		mm.m[key] = l
	}
	mm.mu.Unlock()
	return l.Allow()
}

// Peer doing the work of Connect+Close: the mutex-guarded map of
// x/time/rate limiters, plus each client's live connections, checked
// against a maximum and counted under the same lock (so that two racing
// connects cannot both take the last slot) and released on close.
type connMap struct {
	mu      sync.Mutex
	m       map[string]*connEntry
	maxLive int // the engine's MaxConcurrentConnections in the same bench
}

type connEntry struct {
	lim  *rate.Limiter
	live int
}

func (cm *connMap) connect(key string) bool {
	cm.mu.Lock()
	defer cm.mu.Unlock()
	e, ok := cm.m[key]
	if !ok {
		e = &connEntry{lim: peerLimiter()}
		cm.m[key] = e
	}
	if e.live >= cm.maxLive || !e.lim.Allow() {
		return false
	}
	e.live++
	return true
}

func (cm *connMap) close(key string) {
	cm.mu.Lock()
	cm.m[key].live--
	cm.mu.Unlock()
}

const benchKeys = 10000

func keys() []string {
	k := make([]string, benchKeys)
	for i := range k {
		k[i] = fmt.Sprintf("198.51.%d.%d", i/256, i%256)
	}
	return k
}

// The order in which the keyed benchmarks visit the keys: every key once
// per pass. The peers are set up by inserting the keys in keys() order,
// which lays the map's per-key limiters out in memory in that order; a
// walk in the same order then reads them one after the other, which the
// CPU prefetches. Clients do not arrive in the order their state was
// allocated, so the measured benchmarks walk a fixed pseudo-random
// permutation (shuffled); the InOrder ones keep the insertion order, to
// show what that locality is worth.
func keyOrder(shuffled bool) []int {
	order := make([]int, benchKeys)
	for i := range order {
		order[i] = i
	}
	if shuffled {
		r := mathrand.New(mathrand.NewPCG(1, 2))
		r.Shuffle(len(order), func(i, j int) { order[i], order[j] = order[j], order[i] })
	}
	return order
}

// Keyed checks from 2 goroutines (run with -cpu 2: GOMAXPROCS=2, one
// goroutine per P), each walking the 10k keys in the given order from its
// own offset (half a pass apart).
func runParallelKeyed(b *testing.B, order []int, check func(key string) bool) {
	ks := keys()
	var offset atomic.Int64
	var denied atomic.Int64
	b.SetParallelism(1)
	b.ResetTimer()
	t0 := processCPU()
	b.RunParallel(func(pb *testing.PB) {
		i := int(offset.Add(benchKeys/2)) % benchKeys
		d := 0
		for pb.Next() {
			if !check(ks[order[i]]) {
				d++
			}
			if i++; i == benchKeys {
				i = 0
			}
		}
		denied.Add(int64(d))
	})
	t1 := processCPU()
	b.StopTimer()
	b.ReportMetric(float64(t1-t0)/float64(b.N), "cpu-ns/op")
	checkAllAllowed(b, int(denied.Load()))
}

// The same keyed work from one goroutine, to see how each scales to two.
func runSerialKeyed(b *testing.B, order []int, check func(key string) bool) {
	ks := keys()
	denied := 0
	stop := threadCPUTimer(b)
	for i := 0; i < b.N; i++ {
		if !check(ks[order[i%benchKeys]]) {
			denied++
		}
	}
	stop()
	checkAllAllowed(b, denied)
}

func BenchmarkKeyedSerial(b *testing.B)   { keyedCases(b, runSerialKeyed, keyOrder(true)) }
func BenchmarkKeyedParallel(b *testing.B) { keyedCases(b, runParallelKeyed, keyOrder(true)) }

// The same, walking the keys in the order the peers inserted them.
func BenchmarkKeyedSerialInOrder(b *testing.B)   { keyedCases(b, runSerialKeyed, keyOrder(false)) }
func BenchmarkKeyedParallelInOrder(b *testing.B) { keyedCases(b, runParallelKeyed, keyOrder(false)) }

// keyedCases runs the keyed work of the engine and of its peer, each
// through run (one goroutine or two) over the keys in the given order.
func keyedCases(b *testing.B, walk func(b *testing.B, order []int, check func(key string) bool), order []int) {
	run := func(b *testing.B, check func(key string) bool) { walk(b, order, check) }
	b.Run("ratethrottle-connect-close", func(b *testing.B) {
		lim, err := New(keyedBenchLimits())
		if err != nil {
			b.Fatal(err)
		}
		defer lim.Close()
		run(b, func(k string) bool {
			c, d := lim.Connect(k)
			c.Close()
			return d.Allowed
		})
	})
	b.Run("ratethrottle-check-key", func(b *testing.B) {
		lim, err := New(keyedBenchLimits())
		if err != nil {
			b.Fatal(err)
		}
		defer lim.Close()
		run(b, func(k string) bool { return lim.CheckKey(k, 64).Allowed })
	})
	b.Run("mutex-map-x-time-rate", func(b *testing.B) {
		mm := &mutexMap{m: map[string]*rate.Limiter{}}
		for _, k := range keys() {
			mm.allow(k)
		}
		run(b, mm.allow)
	})
	b.Run("mutex-map-conn-slots", func(b *testing.B) {
		cm := &connMap{m: map[string]*connEntry{}, maxLive: int(keyedBenchLimits().MaxConcurrentConnections)}
		for _, k := range keys() {
			cm.connect(k)
			cm.close(k)
		}
		run(b, func(k string) bool {
			ok := cm.connect(k)
			if ok {
				cm.close(k)
			}
			return ok
		})
	})
}
