// Package rawclient is a WebSocket client for the read helpers' tests that
// no library would let one write: it floods and never reads.
package rawclient

import (
	"bufio"
	"io"
	"net"
	"net/http"
	"net/url"
	"syscall"
	"testing"
	"time"
)

// FloodWithoutReading opens a WebSocket to wsURL with a 1 KiB receive
// buffer, then sends one-byte text messages, never reading, until the
// server stops taking them (a write blocks for 500 ms) or 35 MB were sent.
// It returns the open connection (the caller closes it) and how many
// messages were sent.
func FloodWithoutReading(t *testing.T, wsURL string) (net.Conn, int) {
	t.Helper()
	u, err := url.Parse(wsURL)
	if err != nil {
		t.Fatal(err)
	}
	d := net.Dialer{Control: func(_, _ string, c syscall.RawConn) error {
		var serr error
		err := c.Control(func(fd uintptr) {
			serr = syscall.SetsockoptInt(int(fd), syscall.SOL_SOCKET, syscall.SO_RCVBUF, 1024)
		})
		if err != nil {
			return err
		}
		return serr
	}}
	c, err := d.Dial("tcp", u.Host)
	if err != nil {
		t.Fatal(err)
	}
	_, err = io.WriteString(c, "GET "+u.RequestURI()+" HTTP/1.1\r\nHost: "+u.Host+
		"\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"+
		"Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n")
	if err != nil {
		t.Fatal(err)
	}
	_ = c.SetReadDeadline(time.Now().Add(10 * time.Second))
	resp, err := http.ReadResponse(bufio.NewReader(c), nil)
	if err != nil {
		t.Fatal(err)
	}
	if resp.StatusCode != http.StatusSwitchingProtocols {
		t.Fatalf("upgrade answered %s", resp.Status)
	}
	frame := []byte{0x81, 0x81, 0, 0, 0, 0, 'x'} // FIN text, masked (zero key), "x"
	chunk := make([]byte, 0, len(frame)*1000)
	for i := 0; i < 1000; i++ {
		chunk = append(chunk, frame...)
	}
	sent := 0
	for i := 0; i < 5000; i++ {
		_ = c.SetWriteDeadline(time.Now().Add(500 * time.Millisecond))
		n, err := c.Write(chunk)
		sent += n / len(frame)
		if err != nil {
			break
		}
	}
	return c, sent
}
