package ratethrottle

import (
	"context"
	"errors"
	"fmt"
	"math"
	"net/http/httptest"
	"reflect"
	"runtime"
	"strings"
	"sync"
	"testing"
	"time"
)

// testLimits are small limits with a one-second window; tests drive the
// engine's clock themselves through the *At calls.
func testLimits() Limits {
	l := DefaultLimits()
	l.WindowMs = 1000
	l.MaxClients, l.MaxConnections = 64, 64
	return l
}

func newTestLimiter(t *testing.T, l Limits) *Limiter {
	t.Helper()
	lim, err := New(l)
	if err != nil {
		t.Fatalf("New: %v", err)
	}
	t.Cleanup(func() { lim.Close() })
	return lim
}

func mustConnect(t *testing.T, lim *Limiter, id string, now uint64) *Conn {
	t.Helper()
	c, d := lim.ConnectAt(id, now)
	if !d.Allowed || c == nil {
		t.Fatalf("connect %q at %d: %+v", id, now, d)
	}
	return c
}

func wantDenied(t *testing.T, what string, d Decision, r Reason) {
	t.Helper()
	if d.Allowed || d.Reason != r {
		t.Fatalf("%s: got allowed=%v reason=%v, want denied with %v", what, d.Allowed, d.Reason, r)
	}
	if !errors.Is(d.Err(), ErrDenied) && r != ReasonInvalidArgument {
		t.Fatalf("%s: Err() = %v, want ErrDenied", what, d.Err())
	}
}

func TestReasonValuesMatchHeader(t *testing.T) {
	pairs := []struct {
		goValue Reason
		cValue  int
		name    string
	}{
		{ReasonConnectionRate, cReasonConnectionRate, "connection_rate_exceeded"},
		{ReasonConcurrentConnections, cReasonConcurrent, "too_many_connections"},
		{ReasonMessageTooLarge, cReasonMessageTooLarge, "message_too_large"},
		{ReasonMessageRate, cReasonMessageRate, "rate_limit_exceeded"},
		{ReasonBandwidth, cReasonBandwidth, "bandwidth_exceeded"},
		{ReasonClientMessageRate, cReasonClientMessageRate, "client_rate_limit_exceeded"},
		{ReasonClientBandwidth, cReasonClientBandwidth, "client_bandwidth_exceeded"},
		{ReasonTableFull, cReasonTableFull, "table_full"},
		{ReasonUnknownConnection, cReasonUnknownConnection, "connection_not_found"},
		{ReasonInvalidArgument, cReasonInvalidArgument, "invalid_argument"},
	}
	for _, p := range pairs {
		if int(p.goValue) != p.cValue {
			t.Errorf("%s: Go value %d, header %d", p.name, p.goValue, p.cValue)
		}
		if p.goValue.String() != p.name {
			t.Errorf("Reason(%d).String() = %q, want %q", p.goValue, p.goValue.String(), p.name)
		}
	}
	if ReasonCount != reasonCount {
		t.Errorf("ReasonCount %d, header %d", ReasonCount, reasonCount)
	}
	if ReasonOK.String() != "ok" || ReasonMessageRate.ViolationType() != "message_rate" {
		t.Errorf("names: %q %q", ReasonOK, ReasonMessageRate.ViolationType())
	}
	if s := Reason(999).String(); s != "unknown(999)" {
		t.Errorf("out of range reason: %q", s)
	}
	if retryAfter(retryNeverMs) != RetryNever {
		t.Error("RT_RETRY_NEVER does not map to RetryNever")
	}
	if Version() == "" {
		t.Error("empty version")
	}
}

func TestDefaultsAndValidation(t *testing.T) {
	d := DefaultLimits()
	if d.WindowMs != 60000 || d.ConnectionsPerWindow != 60 || d.MaxConcurrentConnections != 10 ||
		d.MessagesPerWindow != 1000 || d.BytesPerWindow != 0 || d.MaxMessageSize != 65536 ||
		d.MaxClients != 65536 || d.MaxConnections != 65536 || d.FailOpen || d.DryRun {
		t.Fatalf("defaults: %+v", d)
	}
	if s := StrictLimits(); s.ConnectionsPerWindow != 5 || s.MaxConcurrentConnections != 2 || s.MaxMessageSize != 1024 {
		t.Fatalf("strict preset: %+v", s)
	}
	for _, p := range []Limits{StrictLimits(), ModerateLimits(), GenerousLimits()} {
		if err := p.Validate(); err != nil {
			t.Errorf("preset %+v: %v", p, err)
		}
	}
	_, err := New(Limits{})
	var le *LimitsError
	if !errors.As(err, &le) || !strings.Contains(le.Message, "window_ms") {
		t.Fatalf("New(Limits{}) = %v, want a LimitsError naming window_ms", err)
	}
	bad := testLimits()
	bad.MessagesPerWindow = 1 << 20
	if _, err := New(bad); err == nil || !strings.Contains(err.Error(), "messages_per_window") {
		t.Fatalf("messages_per_window 2^20: %v", err)
	}
	bad = testLimits()
	bad.MaxClients = 0
	if err := bad.Validate(); err == nil || !strings.Contains(err.Error(), "max_clients") {
		t.Fatalf("max_clients 0: %v", err)
	}
	if RegionSize(testLimits()) <= 0 || RegionSize(Limits{}) != 0 {
		t.Fatalf("RegionSize: %d %d", RegionSize(testLimits()), RegionSize(Limits{}))
	}
}

func TestConnectionRate(t *testing.T) {
	l := testLimits()
	l.ConnectionsPerWindow = 2
	lim := newTestLimiter(t, l)
	for i := 0; i < 2; i++ {
		mustConnect(t, lim, "ip", 0).Close()
	}
	c, d := lim.ConnectAt("ip", 0)
	if c != nil {
		t.Fatal("a Conn for a denied connect")
	}
	wantDenied(t, "third connect", d, ReasonConnectionRate)
	// 2 connects in window 0 weigh 2*(1000-e)/1000 in window 1: a third
	// fits from e = 500, so 1500 ms after t = 0.
	if d.RetryAfter != 1500*time.Millisecond || d.Limit != 2 {
		t.Fatalf("retry after %v limit %d, want 1.5s and 2", d.RetryAfter, d.Limit)
	}
	if _, d := lim.ConnectAt("ip", 1499); d.Allowed {
		t.Fatal("allowed 1 ms before RetryAfter")
	}
	mustConnect(t, lim, "ip", 1500).Close()
	mustConnect(t, lim, "other-ip", 0).Close() // per client
}

func TestConcurrentConnections(t *testing.T) {
	l := testLimits()
	l.MaxConcurrentConnections = 2
	lim := newTestLimiter(t, l)
	a := mustConnect(t, lim, "ip", 0)
	b := mustConnect(t, lim, "ip", 0)
	_, d := lim.ConnectAt("ip", 0)
	wantDenied(t, "third live connection", d, ReasonConcurrentConnections)
	if d.RetryAfter != 0 || d.Current != 2 {
		t.Fatalf("concurrency denial: %+v", d)
	}
	if n := lim.ClientConnections("ip"); n != 2 {
		t.Fatalf("ClientConnections = %d", n)
	}
	a.Close()
	a.Close() // idempotent: must not free b's slot
	if n := lim.ClientConnections("ip"); n != 1 {
		t.Fatalf("after closing one twice: %d live", n)
	}
	c := mustConnect(t, lim, "ip", 0)
	c.Close()
	b.Close()
	if n := lim.ClientConnections("ip"); n != 0 {
		t.Fatalf("after closing all: %d live", n)
	}
}

func TestMessageReasons(t *testing.T) {
	t.Run("too large", func(t *testing.T) {
		l := testLimits()
		l.MaxMessageSize = 10
		c := mustConnect(t, newTestLimiter(t, l), "ip", 0)
		if d := c.CheckMessageAt(10, 0); !d.Allowed {
			t.Fatalf("10 bytes: %+v", d)
		}
		d := c.CheckMessageAt(11, 0)
		wantDenied(t, "11 bytes", d, ReasonMessageTooLarge)
		if d.RetryAfter != RetryNever || d.Limit != 10 {
			t.Fatalf("too large: %+v", d)
		}
		wantDenied(t, "MaxInt bytes", c.CheckMessageAt(math.MaxInt, 0), ReasonMessageTooLarge)
	})
	t.Run("message rate", func(t *testing.T) {
		l := testLimits()
		l.MessagesPerWindow = 2
		c := mustConnect(t, newTestLimiter(t, l), "ip", 0)
		c.CheckMessageAt(1, 0)
		c.CheckMessageAt(1, 0)
		d := c.CheckMessageAt(1, 0)
		wantDenied(t, "third message", d, ReasonMessageRate)
		if d.RetryAfter != 1500*time.Millisecond {
			t.Fatalf("retry after %v", d.RetryAfter)
		}
		if d := c.CheckMessageAt(1, 1500); !d.Allowed {
			t.Fatalf("at 1500: %+v", d)
		}
	})
	t.Run("bandwidth", func(t *testing.T) {
		l := testLimits()
		l.BytesPerWindow = 100
		c := mustConnect(t, newTestLimiter(t, l), "ip", 0)
		if d := c.CheckMessageAt(60, 0); !d.Allowed {
			t.Fatalf("60 of 100 bytes: %+v", d)
		}
		wantDenied(t, "60 more bytes", c.CheckMessageAt(60, 0), ReasonBandwidth)
		if d := c.CheckMessageAt(40, 0); !d.Allowed {
			t.Fatalf("the last 40 bytes: %+v", d)
		}
		if d := c.CheckMessageAt(101, 5000); d.Allowed || d.RetryAfter != RetryNever {
			t.Fatalf("a message over the whole budget: %+v", d)
		}
	})
	t.Run("client message rate", func(t *testing.T) {
		l := testLimits()
		l.ClientMessagesPerWindow = 3
		lim := newTestLimiter(t, l)
		a, b := mustConnect(t, lim, "ip", 0), mustConnect(t, lim, "ip", 0)
		a.CheckMessageAt(1, 0)
		a.CheckMessageAt(1, 0)
		b.CheckMessageAt(1, 0)
		wantDenied(t, "4th message of the client", b.CheckMessageAt(1, 0), ReasonClientMessageRate)
		other := mustConnect(t, lim, "other", 0)
		if d := other.CheckMessageAt(1, 0); !d.Allowed {
			t.Fatalf("another client: %+v", d)
		}
	})
	t.Run("client bandwidth", func(t *testing.T) {
		l := testLimits()
		l.ClientBytesPerWindow = 100
		lim := newTestLimiter(t, l)
		a, b := mustConnect(t, lim, "ip", 0), mustConnect(t, lim, "ip", 0)
		a.CheckMessageAt(70, 0)
		wantDenied(t, "client bytes", b.CheckMessageAt(70, 0), ReasonClientBandwidth)
	})
	t.Run("unknown connection", func(t *testing.T) {
		c := mustConnect(t, newTestLimiter(t, testLimits()), "ip", 0)
		c.Close()
		wantDenied(t, "closed conn", c.CheckMessageAt(1, 0), ReasonUnknownConnection)
		if _, err := c.Info(); !errors.Is(err, ErrUnknownConn) {
			t.Fatalf("Info of a closed conn: %v", err)
		}
	})
}

func TestCheckKey(t *testing.T) {
	l := testLimits()
	l.ClientMessagesPerWindow = 2
	l.ClientBytesPerWindow = 1000
	lim := newTestLimiter(t, l)
	lim.CheckKeyAt("room:a", 10, 0)
	lim.CheckKeyAt("room:a", 10, 0)
	wantDenied(t, "third message in room a", lim.CheckKeyAt("room:a", 10, 0), ReasonClientMessageRate)
	wantDenied(t, "1001 bytes in room b", lim.CheckKeyAt("room:b", 1001, 0), ReasonClientBandwidth)
	if d := lim.CheckKey("room:c", 1); !d.Allowed {
		t.Fatalf("room c: %+v", d)
	}
	if d := lim.CheckKeyBytes(nil, 1); !d.Allowed {
		t.Fatalf("nil key: %+v", d)
	}
	// nil, an empty slice and "" are one key with a budget of 2.
	if d := lim.CheckKey("", 1); !d.Allowed {
		t.Fatalf("empty key: %+v", d)
	}
	wantDenied(t, "empty key, third message", lim.CheckKeyBytes([]byte{}, 1), ReasonClientMessageRate)
}

func TestTableFullAndFailOpen(t *testing.T) {
	l := testLimits()
	l.MaxClients, l.MaxConnections = 2, 64
	lim := newTestLimiter(t, l)
	full := false
	for i := 0; i < 64 && !full; i++ {
		_, d := lim.ConnectAt(fmt.Sprint("client-", i), 0)
		if !d.Allowed {
			wantDenied(t, "a full table", d, ReasonTableFull)
			full = true
		}
	}
	if !full {
		t.Fatal("64 live clients in a table of 2 and no TABLE_FULL")
	}
	l.FailOpen = true
	open := newTestLimiter(t, l)
	var untracked *Conn
	for i := 0; i < 64 && untracked == nil; i++ {
		c, d := open.ConnectAt(fmt.Sprint("client-", i), 0)
		if !d.Allowed {
			t.Fatalf("fail-open denied: %+v", d)
		}
		if d.Reason == ReasonTableFull {
			untracked = c
		}
	}
	if untracked == nil {
		t.Fatal("fail-open never reported an untracked connect")
	}
	if s, _ := open.Stats(); s.UntrackedAllowed == 0 {
		t.Fatal("UntrackedAllowed is 0")
	}
}

func TestDryRun(t *testing.T) {
	l := testLimits()
	l.MessagesPerWindow, l.DryRun = 1, true
	lim := newTestLimiter(t, l)
	c := mustConnect(t, lim, "ip", 0)
	c.CheckMessageAt(1, 0)
	d := c.CheckMessageAt(1, 0)
	if !d.Allowed || d.Reason != ReasonMessageRate || d.Err() != nil {
		t.Fatalf("dry run: %+v err %v", d, d.Err())
	}
	if s, _ := lim.Stats(); s.DryRunDenied != 1 {
		t.Fatalf("DryRunDenied = %d", s.DryRunDenied)
	}
}

func TestIDsAreBytes(t *testing.T) {
	l := testLimits()
	l.MaxConcurrentConnections = 1
	lim := newTestLimiter(t, l)
	ids := []string{"", "a", "a\x00b", "a\x00", "\xff\xfe", strings.Repeat("x", 1<<20)}
	for _, id := range ids {
		mustConnect(t, lim, id, 0) // each is a distinct client with its own slot
	}
	for _, id := range ids {
		if _, d := lim.ConnectAt(id, 0); d.Reason != ReasonConcurrentConnections {
			t.Fatalf("id %q (len %d) again: %+v", id[:min(len(id), 8)], len(id), d)
		}
	}
	// nil, empty slice and "" are the same empty id.
	if _, d := lim.ConnectBytes(nil); d.Reason != ReasonConcurrentConnections {
		t.Fatalf("nil id: %+v", d)
	}
	if _, d := lim.ConnectBytes([]byte{}); d.Reason != ReasonConcurrentConnections {
		t.Fatalf("empty []byte id: %+v", d)
	}
	long := strings.Repeat("y", 1<<20)
	c := mustConnect(t, lim, long, 0)
	info, err := lim.ConnectionInfo(c)
	if err != nil || info.ClientIDLen != 1<<20 || string(info.ClientID) != long[:40] {
		t.Fatalf("info of a 1 MiB id: %v len %d id %q", err, info.ClientIDLen, info.ClientID)
	}
	if lim.ClientConnections("a\x00b") != 1 || lim.ClientConnections("a\x00c") != 0 {
		t.Fatal("ClientConnections does not compare whole ids")
	}
}

func TestBadInput(t *testing.T) {
	lim := newTestLimiter(t, testLimits())
	c := mustConnect(t, lim, "ip", 0)
	for name, d := range map[string]Decision{
		"CheckMessage(-1)":   c.CheckMessage(-1),
		"CheckMessageAt(-1)": c.CheckMessageAt(-1, 0),
		"CheckKey(-1)":       lim.CheckKey("k", -1),
		"CheckKeyAt(-1)":     lim.CheckKeyAt("k", -1, 0),
		"CheckKeyBytes(-1)":  lim.CheckKeyBytes(nil, -1),
	} {
		if d.Allowed || d.Reason != ReasonInvalidArgument || !errors.Is(d.Err(), ErrNegativeSize) {
			t.Errorf("%s: %+v %v", name, d, d.Err())
		}
	}
	s, _ := lim.Stats()
	if s.MessagesAllowed != 0 || s.Denied != ([ReasonCount]uint64{}) {
		t.Fatalf("negative sizes reached the engine: %+v", s)
	}
	var nilConn *Conn
	if d := nilConn.CheckMessage(1); !errors.Is(d.Err(), ErrNilConn) {
		t.Fatalf("nil conn: %v", d.Err())
	}
	if nilConn.Close() != nil || nilConn.ID() != 0 || nilConn.Limiter() != nil {
		t.Fatal("nil conn methods")
	}
	if _, err := lim.ConnectionInfo(nil); !errors.Is(err, ErrNilConn) {
		t.Fatal(err)
	}
	other := newTestLimiter(t, testLimits())
	foreign := mustConnect(t, other, "ip", 0)
	if _, err := lim.ConnectionInfo(foreign); !errors.Is(err, ErrForeignConn) {
		t.Fatalf("foreign conn: %v", err)
	}
	// The foreign conn still works on its own limiter and does not touch this one.
	if d := foreign.CheckMessageAt(1, 0); !d.Allowed {
		t.Fatalf("%+v", d)
	}
	if lim.ClientConnections("ip") != 1 || other.ClientConnections("ip") != 1 {
		t.Fatal("connections leaked between limiters")
	}
	if err := lim.UpdateLimits(Limits{}); err == nil {
		t.Fatal("UpdateLimits(Limits{}) accepted")
	}
	changed := testLimits()
	changed.MaxClients = 128
	if err := lim.UpdateLimits(changed); err == nil || !strings.Contains(err.Error(), "capacities") {
		t.Fatalf("capacity change: %v", err)
	}
}

func TestUseAfterClose(t *testing.T) {
	lim, err := New(testLimits())
	if err != nil {
		t.Fatal(err)
	}
	c := mustConnect(t, lim, "ip", 0)
	if err := lim.Close(); err != nil {
		t.Fatal(err)
	}
	if err := lim.Close(); err != nil { // idempotent
		t.Fatal(err)
	}
	runtime.GC() // the finalizer was cleared by Close: nothing may free twice
	runtime.GC()
	if conn, d := lim.Connect("ip"); conn != nil || !errors.Is(d.Err(), ErrClosed) || d.Reason != ReasonInvalidArgument {
		t.Fatalf("Connect after Close: %+v %v", d, d.Err())
	}
	if _, d := lim.ConnectAt("ip", 0); !errors.Is(d.Err(), ErrClosed) {
		t.Fatal("ConnectAt after Close")
	}
	if _, d := lim.ConnectBytes(nil); !errors.Is(d.Err(), ErrClosed) {
		t.Fatal("ConnectBytes after Close")
	}
	if d := c.CheckMessage(1); !errors.Is(d.Err(), ErrClosed) {
		t.Fatalf("CheckMessage after Close: %v", d.Err())
	}
	if d := lim.CheckKey("k", 1); !errors.Is(d.Err(), ErrClosed) {
		t.Fatal("CheckKey after Close")
	}
	if _, err := lim.Stats(); !errors.Is(err, ErrClosed) {
		t.Fatal("Stats after Close")
	}
	if _, err := lim.Prometheus(); !errors.Is(err, ErrClosed) {
		t.Fatal("Prometheus after Close")
	}
	if err := lim.UpdateLimits(testLimits()); !errors.Is(err, ErrClosed) {
		t.Fatal("UpdateLimits after Close")
	}
	if _, err := c.Info(); !errors.Is(err, ErrClosed) {
		t.Fatal("Info after Close")
	}
	if _, err := lim.DrainViolations(); !errors.Is(err, ErrClosed) {
		t.Fatal("DrainViolations after Close")
	}
	if c.Close() != nil || lim.ClientConnections("ip") != 0 || lim.ReapDead() != 0 {
		t.Fatal("Close / ClientConnections / ReapDead after Close")
	}
	rec := httptest.NewRecorder()
	lim.MetricsHandler().ServeHTTP(rec, httptest.NewRequest("GET", "/metrics", nil))
	if rec.Code != 503 {
		t.Fatalf("metrics after Close: %d", rec.Code)
	}
	var nilLim *Limiter
	if nilLim.Close() != nil {
		t.Fatal("nil Close")
	}
	if _, d := nilLim.Connect("x"); !errors.Is(d.Err(), ErrClosed) {
		t.Fatal("nil limiter Connect")
	}
}

// Every exported method of *Limiter and *Conn treats a nil receiver as
// closed: none panics (called with zero-valued arguments, by reflection, so
// a method added later is covered too).
func TestNilReceiversDoNotPanic(t *testing.T) {
	for _, recv := range []any{(*Limiter)(nil), (*Conn)(nil)} {
		v := reflect.ValueOf(recv)
		for i := 0; i < v.NumMethod(); i++ {
			m, name := v.Method(i), v.Type().Method(i).Name
			args := make([]reflect.Value, m.Type().NumIn())
			for j := range args {
				args[j] = reflect.Zero(m.Type().In(j))
			}
			if m.Type().IsVariadic() {
				args = args[:len(args)-1]
			}
			func() {
				defer func() {
					if p := recover(); p != nil {
						t.Errorf("(%T).%s on nil panicked: %v", recv, name, p)
					}
				}()
				m.Call(args)
			}()
		}
	}
}

// Close racing calls on other goroutines: every call either completes or is
// refused with ErrClosed (the race detector and the engine's poisoned handle
// would catch a use after free).
func TestCloseWaitsForCallsInFlight(t *testing.T) {
	for round := 0; round < 20; round++ {
		l := testLimits()
		l.MessagesPerWindow = 0
		lim, err := New(l)
		if err != nil {
			t.Fatal(err)
		}
		c := mustConnect(t, lim, "ip", 0)
		var wg sync.WaitGroup
		start := make(chan struct{})
		for g := 0; g < 4; g++ {
			wg.Add(1)
			go func() {
				defer wg.Done()
				<-start
				for i := 0; i < 2000; i++ {
					d := c.CheckMessageAt(1, 0)
					if !d.Allowed && !errors.Is(d.Err(), ErrClosed) {
						t.Errorf("unexpected decision %+v", d)
						return
					}
					if conn, d := lim.ConnectAt("other", 0); d.Allowed {
						conn.Close()
					}
				}
			}()
		}
		close(start)
		lim.Close()
		wg.Wait()
		if d := c.CheckMessage(1); !errors.Is(d.Err(), ErrClosed) {
			t.Fatal("not closed")
		}
	}
}

func TestStatsAndPrometheus(t *testing.T) {
	l := testLimits()
	l.MessagesPerWindow = 1
	lim := newTestLimiter(t, l)
	c := mustConnect(t, lim, "ip", 0)
	c.CheckMessageAt(100, 0)
	c.CheckMessageAt(100, 0)
	s, err := lim.Stats()
	if err != nil {
		t.Fatal(err)
	}
	if s.ActiveConnections != 1 || s.UniqueClients != 1 || s.TotalMessages != 1 || s.TotalBytes != 100 ||
		s.Denied[ReasonMessageRate] != 1 || s.ConnectionsAllowed != 1 || s.Limits != l || s.MaxClients != 64 {
		t.Fatalf("stats: %+v", s)
	}
	info, err := c.Info()
	if err != nil || info.MessageCount != 1 || info.ByteCount != 100 || string(info.ClientID) != "ip" {
		t.Fatalf("info: %+v %v", info, err)
	}
	rec := httptest.NewRecorder()
	lim.MetricsHandler().ServeHTTP(rec, httptest.NewRequest("GET", "/metrics", nil))
	body := rec.Body.String()
	if rec.Code != 200 || !strings.HasPrefix(rec.Header().Get("Content-Type"), "text/plain; version=0.0.4") ||
		!strings.Contains(body, `ratethrottle_denied_total{reason="rate_limit_exceeded"} 1`) {
		t.Fatalf("metrics %d %q:\n%s", rec.Code, rec.Header().Get("Content-Type"), body)
	}
	l2 := l
	l2.MessagesPerWindow = 5
	if err := lim.UpdateLimits(l2); err != nil {
		t.Fatal(err)
	}
	if got, _ := lim.Limits(); got.MessagesPerWindow != 5 {
		t.Fatalf("limits after update: %+v", got)
	}
}

func TestViolations(t *testing.T) {
	l := testLimits()
	l.MessagesPerWindow = 1
	lim := newTestLimiter(t, l)
	c := mustConnect(t, lim, "ip\x00x", 0)
	c.CheckMessageAt(10, 0)
	c.CheckMessageAt(20, 7)
	vs, err := lim.DrainViolations()
	if err != nil || len(vs) != 1 {
		t.Fatalf("drain: %v %+v", err, vs)
	}
	v := vs[0]
	if v.Reason != ReasonMessageRate || string(v.ClientID) != "ip\x00x" || v.ConnID != c.ID() || v.Size != 20 || v.AtMs != 7 || v.Limit != 1 {
		t.Fatalf("violation: %+v", v)
	}
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	ch := lim.WatchViolations(ctx, WatchOptions{Interval: time.Millisecond, Buffer: 4})
	for i := 0; i < 10; i++ {
		lim.ConnectAt("ip\x00x", 0) // fine
		c.CheckMessageAt(30, 8)     // denied: 10 records, 4 fit the channel
	}
	got := 0
	deadline := time.After(10 * time.Second)
	for got < 4 {
		select {
		case v := <-ch:
			if v.Reason != ReasonMessageRate {
				t.Fatalf("watched %+v", v)
			}
			got++
		case <-deadline:
			t.Fatalf("only %d violations in 10 s", got)
		}
	}
	for lim.DroppedViolations()+uint64(got)+uint64(len(ch)) < 10 {
		select {
		case <-deadline:
			t.Fatalf("delivered %d + dropped %d of 10", got, lim.DroppedViolations())
		case <-time.After(time.Millisecond):
		}
	}
	lim.Close()
	for range ch { // closed when the limiter closes
	}
}

func TestZeroConn(t *testing.T) {
	var c Conn
	if d := c.CheckMessage(1); !errors.Is(d.Err(), ErrNilConn) {
		t.Fatal(d.Err())
	}
	if d := c.CheckMessageAt(1, 0); !errors.Is(d.Err(), ErrNilConn) {
		t.Fatal(d.Err())
	}
	if _, err := c.Info(); !errors.Is(err, ErrNilConn) || c.Close() != nil {
		t.Fatal(err)
	}
}
