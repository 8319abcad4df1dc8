// Package poll waits, in tests, for a condition that another goroutine or
// process makes true.
package poll

import (
	"testing"
	"time"
)

// Until polls cond every 10 ms for at most 10 s (generous: the machine is
// shared) and fails the test with what when cond never holds.
func Until(t testing.TB, what string, cond func() bool) {
	t.Helper()
	for i := 0; i < 1000; i++ {
		if cond() {
			return
		}
		time.Sleep(10 * time.Millisecond)
	}
	t.Fatalf("after 10 s: %s", what)
}

// Next receives from ch, waiting at most 10 s; it fails the test with what
// when nothing arrives.
func Next[T any](t testing.TB, ch <-chan T, what string) T {
	t.Helper()
	select {
	case v := <-ch:
		return v
	case <-time.After(10 * time.Second):
		t.Fatalf("after 10 s: %s", what)
		panic("unreachable")
	}
}
