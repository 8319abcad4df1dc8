// Command bench is the load tool of the nginx module's benchmarks: a raw
// WebSocket backend (serve) and a load client (upgrade, messages). No
// dependencies, so that the backend and the client are never the bottleneck
// nginx is measured against.
//
//	bench serve -addr 127.0.0.1:0               prints "PORT n"
//	bench upgrade -url host:port/path -c 32 -d 5s
//	    handshakes per second: dial, upgrade request, read the 101, close
//	bench messages -url host:port/path -c 8 -d 5s -size 64
//	    echoed messages per second over c long-lived WebSockets
package main

import (
	"bufio"
	"bytes"
	"crypto/rand"
	"crypto/sha1"
	"encoding/base64"
	"encoding/binary"
	"flag"
	"fmt"
	"io"
	"net"
	"os"
	"strings"
	"sync"
	"sync/atomic"
	"time"
)

const wsGUID = "258EAFA5-E914-47DA-95CA-C5AB0DC85B11"

func main() {
	if len(os.Args) < 2 {
		fmt.Fprintln(os.Stderr, "usage: bench serve|upgrade|messages [flags]")
		os.Exit(2)
	}
	fs := flag.NewFlagSet(os.Args[1], flag.ExitOnError)
	addr := fs.String("addr", "127.0.0.1:0", "listen address (serve)")
	url := fs.String("url", "", "host:port/path to load (upgrade, messages)")
	conc := fs.Int("c", 32, "concurrent clients")
	dur := fs.Duration("d", 5*time.Second, "duration")
	size := fs.Int("size", 64, "message size (messages)")
	_ = fs.Parse(os.Args[2:])
	switch os.Args[1] {
	case "serve":
		serve(*addr)
	case "upgrade":
		report(runLoad(*url, *conc, *dur, upgradeOnce))
	case "messages":
		report(runLoad(*url, *conc, *dur, messagesLoop(*size)))
	default:
		fmt.Fprintln(os.Stderr, "unknown mode", os.Args[1])
		os.Exit(2)
	}
}

// --- backend ---------------------------------------------------------------

func serve(addr string) {
	ln, err := net.Listen("tcp", addr)
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(1)
	}
	fmt.Printf("PORT %d\n", ln.Addr().(*net.TCPAddr).Port)
	for {
		c, err := ln.Accept()
		if err != nil {
			continue
		}
		go handle(c)
	}
}

func handle(c net.Conn) {
	defer c.Close()
	br := bufio.NewReader(c)
	for {
		key, upgrade, err := readRequest(br)
		if err != nil {
			return
		}
		if !upgrade {
			_, err = io.WriteString(c, "HTTP/1.1 200 OK\r\nContent-Length: 3\r\n\r\nok\n")
			if err != nil {
				return
			}
			continue
		}
		h := sha1.Sum([]byte(key + wsGUID))
		resp := "HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\n" +
			"Connection: Upgrade\r\nSec-WebSocket-Accept: " +
			base64.StdEncoding.EncodeToString(h[:]) + "\r\n\r\n"
		if _, err := io.WriteString(c, resp); err != nil {
			return
		}
		echo(br, c)
		return
	}
}

func readRequest(br *bufio.Reader) (key string, upgrade bool, err error) {
	for {
		line, err := br.ReadString('\n')
		if err != nil {
			return "", false, err
		}
		line = strings.TrimRight(line, "\r\n")
		if line == "" {
			return key, upgrade, nil
		}
		k, v, ok := strings.Cut(line, ":")
		if !ok {
			continue
		}
		switch strings.ToLower(strings.TrimSpace(k)) {
		case "sec-websocket-key":
			key = strings.TrimSpace(v)
		case "upgrade":
			upgrade = strings.EqualFold(strings.TrimSpace(v), "websocket")
		}
	}
}

// echo answers each client frame with the same payload, unmasked.
func echo(br *bufio.Reader, w io.Writer) {
	for {
		op, payload, err := readFrame(br)
		if err != nil || op == 8 {
			return
		}
		if _, err := w.Write(makeFrame(op, payload, false)); err != nil {
			return
		}
	}
}

func readFrame(br *bufio.Reader) (byte, []byte, error) {
	var h [2]byte
	if _, err := io.ReadFull(br, h[:]); err != nil {
		return 0, nil, err
	}
	n := uint64(h[1] & 0x7f)
	switch n {
	case 126:
		var b [2]byte
		if _, err := io.ReadFull(br, b[:]); err != nil {
			return 0, nil, err
		}
		n = uint64(binary.BigEndian.Uint16(b[:]))
	case 127:
		var b [8]byte
		if _, err := io.ReadFull(br, b[:]); err != nil {
			return 0, nil, err
		}
		n = binary.BigEndian.Uint64(b[:])
	}
	var mask [4]byte
	masked := h[1]&0x80 != 0
	if masked {
		if _, err := io.ReadFull(br, mask[:]); err != nil {
			return 0, nil, err
		}
	}
	if n > 1<<20 {
		return 0, nil, fmt.Errorf("frame too large")
	}
	p := make([]byte, n)
	if _, err := io.ReadFull(br, p); err != nil {
		return 0, nil, err
	}
	if masked {
		for i := range p {
			p[i] ^= mask[i%4]
		}
	}
	return h[0] & 0x0f, p, nil
}

func makeFrame(op byte, p []byte, mask bool) []byte {
	var b bytes.Buffer
	b.WriteByte(0x80 | op)
	m := byte(0)
	if mask {
		m = 0x80
	}
	switch {
	case len(p) < 126:
		b.WriteByte(m | byte(len(p)))
	case len(p) < 65536:
		b.WriteByte(m | 126)
		_ = binary.Write(&b, binary.BigEndian, uint16(len(p)))
	default:
		b.WriteByte(m | 127)
		_ = binary.Write(&b, binary.BigEndian, uint64(len(p)))
	}
	if !mask {
		b.Write(p)
		return b.Bytes()
	}
	var k [4]byte
	_, _ = rand.Read(k[:])
	b.Write(k[:])
	for i, c := range p {
		b.WriteByte(c ^ k[i%4])
	}
	return b.Bytes()
}

// --- load client -----------------------------------------------------------

type result struct {
	ok, fail int64
	status   map[string]int64
	elapsed  time.Duration
}

type work func(hostport, path string, stop *atomic.Bool, ok, fail *atomic.Int64, st *statusCount)

type statusCount struct {
	mu sync.Mutex
	m  map[string]int64
}

func (s *statusCount) add(k string) {
	s.mu.Lock()
	s.m[k]++
	s.mu.Unlock()
}

func runLoad(url string, conc int, dur time.Duration, w work) result {
	hostport, path, _ := strings.Cut(url, "/")
	path = "/" + path
	var stop atomic.Bool
	var ok, fail atomic.Int64
	st := &statusCount{m: map[string]int64{}}
	var wg sync.WaitGroup
	start := time.Now()
	for i := 0; i < conc; i++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			w(hostport, path, &stop, &ok, &fail, st)
		}()
	}
	time.Sleep(dur)
	stop.Store(true)
	wg.Wait()
	return result{ok.Load(), fail.Load(), st.m, time.Since(start)}
}

func report(r result) {
	fmt.Printf("ok %d fail %d seconds %.3f rate %.1f statuses %v\n",
		r.ok, r.fail, r.elapsed.Seconds(), float64(r.ok)/r.elapsed.Seconds(), r.status)
}

func handshake(hostport, path string) (net.Conn, *bufio.Reader, string, error) {
	c, err := net.Dial("tcp", hostport)
	if err != nil {
		return nil, nil, "", err
	}
	var k [16]byte
	_, _ = rand.Read(k[:])
	req := "GET " + path + " HTTP/1.1\r\nHost: " + hostport +
		"\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Key: " +
		base64.StdEncoding.EncodeToString(k[:]) + "\r\nSec-WebSocket-Version: 13\r\n\r\n"
	if _, err := io.WriteString(c, req); err != nil {
		c.Close()
		return nil, nil, "", err
	}
	_ = c.SetReadDeadline(time.Now().Add(10 * time.Second))
	br := bufio.NewReader(c)
	status := ""
	for {
		line, err := br.ReadString('\n')
		if err != nil {
			c.Close()
			return nil, nil, status, err
		}
		if status == "" {
			f := strings.Fields(line)
			if len(f) > 1 {
				status = f[1]
			}
		}
		if line == "\r\n" {
			break
		}
	}
	_ = c.SetReadDeadline(time.Time{})
	return c, br, status, nil
}

func upgradeOnce(hostport, path string, stop *atomic.Bool, ok, fail *atomic.Int64, st *statusCount) {
	for !stop.Load() {
		c, _, status, err := handshake(hostport, path)
		st.add(status)
		if err != nil || status != "101" {
			fail.Add(1)
			if c != nil {
				c.Close()
			}
			continue
		}
		ok.Add(1)
		// a clean WebSocket close: the Close frame, then the socket
		_, _ = c.Write(makeFrame(8, []byte{0x03, 0xe8}, true))
		c.Close()
	}
}

func messagesLoop(size int) work {
	return func(hostport, path string, stop *atomic.Bool, ok, fail *atomic.Int64, st *statusCount) {
		c, br, status, err := handshake(hostport, path)
		st.add(status)
		if err != nil || status != "101" {
			fail.Add(1)
			return
		}
		defer c.Close()
		payload := bytes.Repeat([]byte("m"), size)
		for !stop.Load() {
			if _, err := c.Write(makeFrame(2, payload, true)); err != nil {
				fail.Add(1)
				return
			}
			op, p, err := readFrame(br)
			if err != nil || op != 2 || len(p) != size {
				fail.Add(1)
				return
			}
			ok.Add(1)
		}
	}
}
