package ratethrottle

import (
	"bufio"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

// The child half of the two-process tests: the test binary re-executed with
// RT_GO_SHARED_CHILD set. It attaches to the region, opens 2 connections of
// "shared-client" and checks 3 messages against "room:shared", prints what
// the engine answered, then holds its connections until its stdin closes and
// exits without closing them (a crashed worker, for ReapDead).
func sharedChild(path string) {
	lim, err := AttachShared(path)
	if err != nil {
		fmt.Println("error", err)
		os.Exit(2)
	}
	var held []*Conn
	for i := 0; i < 2; i++ {
		c, d := lim.Connect("shared-client")
		if c != nil {
			held = append(held, c)
		}
		fmt.Println("connect", d.Allowed, d.Reason)
	}
	for i := 0; i < 3; i++ {
		d := lim.CheckKey("room:shared", 1)
		fmt.Println("key", d.Allowed, d.Reason)
	}
	fmt.Println("ready", len(held))
	_, _ = io.Copy(io.Discard, os.Stdin)
	os.Exit(0) // connections deliberately left open
}

func TestMain(m *testing.M) {
	if path := os.Getenv("RT_GO_SHARED_CHILD"); path != "" {
		sharedChild(path)
	}
	os.Exit(m.Run())
}

// startSharedChild runs sharedChild on path in a new process and returns
// what it printed up to "ready" (or "error"), and a function that closes its
// stdin and waits for it to exit (dying with its connections open). The
// child is killed at the end of the test in any case.
func startSharedChild(t *testing.T, path string) (lines []string, exit func()) {
	t.Helper()
	cmd := exec.Command(os.Args[0], "-test.run=^$")
	cmd.Env = append(os.Environ(), "RT_GO_SHARED_CHILD="+path)
	stdin, _ := cmd.StdinPipe()
	stdout, _ := cmd.StdoutPipe()
	cmd.Stderr = os.Stderr
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	waited := false
	t.Cleanup(func() {
		stdin.Close()
		if !waited {
			cmd.Process.Kill()
			cmd.Wait()
		}
	})
	// Read the child's report; bounded, so a stuck child fails the test.
	lineCh := make(chan string)
	go func() {
		defer close(lineCh)
		sc := bufio.NewScanner(stdout)
		for sc.Scan() {
			lineCh <- sc.Text()
		}
	}()
	timeout := time.After(60 * time.Second)
read:
	for {
		select {
		case line, ok := <-lineCh:
			if !ok {
				break read
			}
			lines = append(lines, line)
			if strings.HasPrefix(line, "ready") || strings.HasPrefix(line, "error") {
				break read
			}
		case <-timeout:
			cmd.Process.Kill()
			t.Fatalf("child did not report in 60 s; got %q", lines)
		}
	}
	exit = func() {
		t.Helper()
		stdin.Close()
		waited = true
		if err := cmd.Wait(); err != nil {
			t.Fatalf("child: %v", err)
		}
	}
	return lines, exit
}

func shmPath(t *testing.T, name string) string {
	dir := "/dev/shm"
	if fi, err := os.Stat(dir); err != nil || !fi.IsDir() {
		dir = t.TempDir()
	}
	p := filepath.Join(dir, fmt.Sprintf("ratethrottle-go-test-%d-%s", os.Getpid(), name))
	os.Remove(p)
	t.Cleanup(func() { os.Remove(p) })
	return p
}

func TestSharedRegionAcrossProcesses(t *testing.T) {
	path := shmPath(t, "two-procs")
	l := DefaultLimits()
	l.MaxClients, l.MaxConnections = 256, 256
	l.MaxConcurrentConnections = 3
	l.ClientMessagesPerWindow = 5
	l.WindowMs = 1<<32 - 1 // no window boundary can pass during the test
	parent, err := NewShared(path, l)
	if err != nil {
		t.Fatal(err)
	}
	defer parent.Close()
	a, _ := parent.Connect("shared-client")
	b, _ := parent.Connect("shared-client")
	if a == nil || b == nil {
		t.Fatal("parent could not connect")
	}
	for i := 0; i < 3; i++ {
		if d := parent.CheckKey("room:shared", 1); !d.Allowed {
			t.Fatalf("parent key %d: %+v", i, d)
		}
	}

	lines, exit := startSharedChild(t, path)
	want := []string{
		"connect true ok", "connect false too_many_connections",
		"key true ok", "key true ok", "key false client_rate_limit_exceeded",
		"ready 1",
	}
	if strings.Join(lines, "\n") != strings.Join(want, "\n") {
		t.Fatalf("child saw:\n%s\nwant:\n%s", strings.Join(lines, "\n"), strings.Join(want, "\n"))
	}
	// The child's connection counts here too.
	if n := parent.ClientConnections("shared-client"); n != 3 {
		t.Fatalf("parent sees %d connections, want 3", n)
	}
	if _, d := parent.Connect("shared-client"); d.Reason != ReasonConcurrentConnections {
		t.Fatalf("parent's 3rd connect: %+v", d)
	}
	// The child dies holding its connection; ReapDead frees it.
	exit()
	if n := parent.ReapDead(); n != 1 {
		t.Fatalf("ReapDead = %d, want 1", n)
	}
	if n := parent.ClientConnections("shared-client"); n != 2 {
		t.Fatalf("after reaping: %d connections", n)
	}
	a.Close()
	b.Close()
	s, _ := parent.Stats()
	if s.ActiveConnections != 0 || s.Denied[ReasonConcurrentConnections] != 2 || s.Denied[ReasonClientMessageRate] != 1 {
		t.Fatalf("shared stats: %+v", s)
	}
}

func TestSharedAttachSameProcessAndErrors(t *testing.T) {
	path := shmPath(t, "attach")
	if _, err := AttachShared(path); err == nil {
		t.Fatal("attached a missing file")
	}
	l := testLimits()
	l.MaxConcurrentConnections = 1
	one, err := NewShared(path, l)
	if err != nil {
		t.Fatal(err)
	}
	defer one.Close()
	if one.SharedPath() != path {
		t.Fatal(one.SharedPath())
	}
	other := testLimits()
	other.MaxConcurrentConnections = 9 // ignored: the region's limits win
	two, err := NewShared(path, other)
	if err != nil {
		t.Fatal(err)
	}
	c := mustConnect(t, one, "x", 0)
	if _, d := two.ConnectAt("x", 0); d.Reason != ReasonConcurrentConnections {
		t.Fatalf("second handle: %+v", d)
	}
	if _, err := two.ConnectionInfo(c); !errors.Is(err, ErrForeignConn) {
		t.Fatalf("a Conn of another handle on the same region: %v", err)
	}
	two.Close()
	two.Close()
	if d := c.CheckMessageAt(1, 0); !d.Allowed {
		t.Fatalf("closing one handle broke the other: %+v", d)
	}

	garbage := shmPath(t, "garbage")
	junk := []byte(strings.Repeat("not a region ", 1000))
	if err := os.WriteFile(garbage, junk, 0o600); err != nil {
		t.Fatal(err)
	}
	if _, err := NewShared(garbage, l); err == nil || !strings.Contains(err.Error(), "remove the file") {
		t.Fatalf("garbage region: %v", err)
	}
	if got, _ := os.ReadFile(garbage); string(got) != string(junk) {
		t.Fatal("a refused file was changed")
	}
	if _, err := NewShared(shmPath(t, "bad"), Limits{}); err == nil {
		t.Fatal("invalid limits accepted")
	}
	empty := shmPath(t, "empty")
	os.WriteFile(empty, nil, 0o600)
	if _, err := AttachShared(empty); err == nil {
		t.Fatal("attached an empty file")
	}
}

// Close of this process's last Limiter on a region file closes the Conns
// it left open: nothing could close them afterwards (Conn.Close after Close
// is a no-op), and they would hold their client's slots until the process
// exits and another one reaps it.
func TestSharedCloseFreesConnsLeftOpen(t *testing.T) {
	path := shmPath(t, "closeleak")
	l := testLimits()
	l.MaxConcurrentConnections = 1
	lim, err := NewShared(path, l)
	if err != nil {
		t.Fatal(err)
	}
	c := mustConnect(t, lim, "y", 0)
	if err := lim.Close(); err != nil {
		t.Fatal(err)
	}
	c.Close() // a no-op now
	again, err := AttachShared(path)
	if err != nil {
		t.Fatal(err)
	}
	defer again.Close()
	if n := again.ClientConnections("y"); n != 0 {
		t.Fatalf("the Conn left open at Close still holds %d slot(s)", n)
	}
	mustConnect(t, again, "y", 0)
}

// A Conn of a shared Limiter closed while another Limiter of this process
// has the same file open: the engine does not close it (the process still
// has a handle on the file), so Conn.Close goes through the open one;
// before, it was a no-op and the slot stayed held until the last one closed.
func TestSharedConnOfAClosedLimiterClosesThroughAnother(t *testing.T) {
	path := shmPath(t, "peerclose")
	l := testLimits()
	l.MaxConcurrentConnections = 1
	a, err := NewShared(path, l)
	if err != nil {
		t.Fatal(err)
	}
	b, err := AttachShared(path)
	if err != nil {
		t.Fatal(err)
	}
	defer b.Close()
	c := mustConnect(t, a, "z", 0)
	a.Close()
	if n := b.ClientConnections("z"); n != 1 {
		t.Fatalf("with a handle left, the engine closed the Conn (%d live)", n)
	}
	c.Close()
	if n := b.ClientConnections("z"); n != 0 {
		t.Fatalf("the closed Limiter's Conn still holds %d slot(s) after its Close", n)
	}
	mustConnect(t, b, "z", 0)
	c.Close() // idempotent: not closed twice through b
	if n := b.ClientConnections("z"); n != 1 {
		t.Fatalf("a second Close changed the count to %d", n)
	}
}

// Attaching (NewShared or AttachShared on an existing region) frees the
// connections of processes that died holding them: the engine reaps on
// attach.
func TestSharedAttachReapsDeadProcesses(t *testing.T) {
	path := shmPath(t, "reap")
	parent, err := NewShared(path, testLimits())
	if err != nil {
		t.Fatal(err)
	}
	defer parent.Close()
	lines, exit := startSharedChild(t, path)
	if len(lines) == 0 || lines[len(lines)-1] != "ready 2" {
		t.Fatalf("child saw: %q", lines)
	}
	if n := parent.ClientConnections("shared-client"); n != 2 {
		t.Fatalf("parent sees %d connections of the child, want 2", n)
	}
	exit() // dies holding both
	if n := parent.ClientConnections("shared-client"); n != 2 {
		t.Fatalf("before any attach: %d connections, want 2 (nothing reaped yet)", n)
	}
	again, err := AttachShared(path)
	if err != nil {
		t.Fatal(err)
	}
	defer again.Close()
	if n := parent.ClientConnections("shared-client"); n != 0 {
		t.Fatalf("after AttachShared: %d connections of the dead child, want 0", n)
	}
	if n := parent.ReapDead(); n != 0 {
		t.Fatalf("ReapDead after the attach reaped: %d, want 0", n)
	}
}

// Bad files and paths give errors naming the path, and change nothing.
func TestSharedBadFilesAndPaths(t *testing.T) {
	missing := shmPath(t, "missing")
	_, err := AttachShared(missing)
	if err == nil || !strings.Contains(err.Error(), missing) || !strings.Contains(err.Error(), "no such file or directory") {
		t.Fatalf("AttachShared on a missing file: %v", err)
	}
	if !errors.Is(err, fs.ErrNotExist) {
		t.Fatalf("not an fs.ErrNotExist: %v", err)
	}
	if _, err := os.Stat(missing); !errors.Is(err, fs.ErrNotExist) {
		t.Fatalf("AttachShared created the file: %v", err)
	}
	inMissingDir := filepath.Join(t.TempDir(), "no-such-dir", "limits")
	if _, err := NewShared(inMissingDir, testLimits()); err == nil ||
		!strings.Contains(err.Error(), inMissingDir) || !errors.Is(err, fs.ErrNotExist) {
		t.Fatalf("NewShared in a missing directory: %v", err)
	}

	empty := shmPath(t, "empty-attach")
	if err := os.WriteFile(empty, nil, 0o600); err != nil {
		t.Fatal(err)
	}
	if _, err := AttachShared(empty); err == nil || !strings.Contains(err.Error(), empty+" is empty") {
		t.Fatalf("AttachShared on an empty file: %v", err)
	}
	if fi, err := os.Stat(empty); err != nil || fi.Size() != 0 {
		t.Fatalf("the empty file changed: %v %v", fi, err)
	}

	// Garbage, long and short (shorter than a region header), is refused by
	// both calls and left byte for byte as it was.
	for _, junk := range [][]byte{
		[]byte(strings.Repeat("not a region ", 1000)),
		[]byte("short"),
	} {
		garbage := shmPath(t, fmt.Sprintf("garbage-%d", len(junk)))
		if err := os.WriteFile(garbage, junk, 0o600); err != nil {
			t.Fatal(err)
		}
		for name, open := range map[string]func() (*Limiter, error){
			"AttachShared": func() (*Limiter, error) { return AttachShared(garbage) },
			"NewShared":    func() (*Limiter, error) { return NewShared(garbage, testLimits()) },
		} {
			lim, err := open()
			if err == nil {
				lim.Close()
				t.Fatalf("%s accepted %d bytes of garbage", name, len(junk))
			}
			if !strings.Contains(err.Error(), garbage) || !strings.Contains(err.Error(), "remove the file") {
				t.Fatalf("%s on %d bytes of garbage: %v", name, len(junk), err)
			}
			if got, _ := os.ReadFile(garbage); string(got) != string(junk) {
				t.Fatalf("%s changed a refused file", name)
			}
		}
	}

	// A NUL byte would silently cut the path short in C: refused first.
	nul := shmPath(t, "nul")
	for _, open := range []func() (*Limiter, error){
		func() (*Limiter, error) { return AttachShared(nul + "\x00tail") },
		func() (*Limiter, error) { return NewShared(nul+"\x00tail", testLimits()) },
	} {
		if _, err := open(); err == nil || !strings.Contains(err.Error(), "NUL byte") {
			t.Fatalf("a path with a NUL byte: %v", err)
		}
	}
	if _, err := os.Stat(nul); !errors.Is(err, fs.ErrNotExist) {
		t.Fatalf("the path up to the NUL byte was created: %v", err)
	}
}
