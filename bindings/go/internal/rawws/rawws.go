// Package rawws is a test helper of the read helpers' idle timeout: a
// WebSocket client written by hand over TCP that completes the opening
// handshake and then goes silent, never reading or writing again (a
// half-open peer: it answers no ping and sends no close frame).
package rawws

import (
	"bufio"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/url"
	"testing"
	"time"
)

// Conn is a silent client socket.
type Conn struct {
	c  net.Conn
	br *bufio.Reader
}

// Dial connects to a ws:// URL, sends an upgrade request by hand and reads
// the 101 answer; every step is bounded by timeout.
func Dial(wsURL string, timeout time.Duration) (*Conn, error) {
	u, err := url.Parse(wsURL)
	if err != nil {
		return nil, err
	}
	c, err := net.DialTimeout("tcp", u.Host, timeout)
	if err != nil {
		return nil, err
	}
	_ = c.SetDeadline(time.Now().Add(timeout))
	path := u.RequestURI()
	req := "GET " + path + " HTTP/1.1\r\n" +
		"Host: " + u.Host + "\r\n" +
		"Upgrade: websocket\r\n" +
		"Connection: Upgrade\r\n" +
		"Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n" +
		"Sec-WebSocket-Version: 13\r\n\r\n"
	if _, err := io.WriteString(c, req); err != nil {
		c.Close()
		return nil, err
	}
	br := bufio.NewReader(c)
	resp, err := http.ReadResponse(br, nil)
	if err != nil {
		c.Close()
		return nil, err
	}
	if resp.StatusCode != http.StatusSwitchingProtocols {
		c.Close()
		return nil, fmt.Errorf("rawws: status %d", resp.StatusCode)
	}
	_ = c.SetDeadline(time.Time{})
	return &Conn{c: c, br: br}, nil
}

// Close closes the socket.
func (c *Conn) Close() error { return c.c.Close() }

// Opcodes reads what the server sent until it closed the connection (EOF or
// a reset) and returns the opcodes of the frames (the server's frames are
// not masked). It fails if the server has not closed within timeout.
func (c *Conn) Opcodes(timeout time.Duration) ([]byte, error) {
	_ = c.c.SetReadDeadline(time.Now().Add(timeout))
	var ops []byte
	for {
		var h [2]byte
		if _, err := io.ReadFull(c.br, h[:]); err != nil {
			if closedByPeer(err) {
				return ops, nil
			}
			return ops, err
		}
		n := uint64(h[1] & 0x7f)
		switch n {
		case 126:
			var b [2]byte
			if _, err := io.ReadFull(c.br, b[:]); err != nil {
				return ops, err
			}
			n = uint64(binary.BigEndian.Uint16(b[:]))
		case 127:
			var b [8]byte
			if _, err := io.ReadFull(c.br, b[:]); err != nil {
				return ops, err
			}
			n = binary.BigEndian.Uint64(b[:])
		}
		if h[1]&0x80 != 0 {
			n += 4
		}
		if _, err := io.CopyN(io.Discard, c.br, int64(n)); err != nil {
			return ops, err
		}
		ops = append(ops, h[0]&0x0f)
	}
}

// OnlyPingsThenEOF fails t unless the server sends nothing but pings and
// then closes the TCP connection (no close frame: the socket was ended
// hard), within 10 s.
func (c *Conn) OnlyPingsThenEOF(t testing.TB) {
	t.Helper()
	ops, err := c.Opcodes(10 * time.Second)
	if err != nil {
		t.Fatalf("the server did not close the TCP connection: %v", err)
	}
	for _, op := range ops {
		if op != OpPing {
			t.Fatalf("the server sent opcode %#x (frames %v), want only pings then EOF", op, ops)
		}
	}
	t.Logf("the silent client got %d ping(s), then EOF", len(ops))
}

func closedByPeer(err error) bool {
	if errors.Is(err, io.EOF) {
		return true
	}
	var ne net.Error
	if errors.As(err, &ne) && ne.Timeout() {
		return false
	}
	var oe *net.OpError
	return errors.As(err, &oe) // connection reset by the peer
}

// Opcodes of RFC 6455.
const (
	OpClose = 0x8
	OpPing  = 0x9
)
