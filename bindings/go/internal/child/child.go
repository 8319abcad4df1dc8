// Package child runs the test binary again as a WebSocket client process,
// for tests that kill a client (TEST-PLAN W7).
package child

import (
	"bufio"
	"io"
	"os"
	"os/exec"
	"strings"
	"testing"
	"time"
)

// Serve is called first in TestMain. When the environment variable env
// holds a URL, this process is a child: it connects with dial, prints
// "ready", and reads (answering pings) until the read fails, then exits.
// Otherwise it returns and TestMain runs the tests.
func Serve(env string, dial func(url string) (read func() error, err error)) {
	url := os.Getenv(env)
	if url == "" {
		return
	}
	read, err := dial(url)
	if err != nil {
		os.Stdout.WriteString("error " + err.Error() + "\n")
		os.Exit(2)
	}
	os.Stdout.WriteString("ready\n")
	for read() == nil {
	}
	os.Exit(0)
}

// Start runs this test binary as a child connected to url (through the
// Serve call of its TestMain, selected by env) and waits, at most 20 s, for
// it to say it is connected. kill kills it with SIGKILL and reaps it; the
// test's cleanup does the same if kill was not called.
func Start(t *testing.T, env, url string) (kill func()) {
	t.Helper()
	cmd := exec.Command(os.Args[0], "-test.run=^$")
	cmd.Env = append(os.Environ(), env+"="+url)
	out, err := cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	cmd.Stderr = os.Stderr
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	killed := false
	kill = func() {
		if !killed {
			killed = true
			cmd.Process.Kill()
			cmd.Wait()
		}
	}
	t.Cleanup(kill)
	line := make(chan string, 1)
	go func() {
		s, _ := bufio.NewReader(out).ReadString('\n')
		line <- s
		io.Copy(io.Discard, out)
	}()
	select {
	case s := <-line:
		if strings.TrimSpace(s) != "ready" {
			t.Fatalf("child: %q", s)
		}
	case <-time.After(20 * time.Second):
		t.Fatal("the child did not connect")
	}
	return kill
}
