// Package activity tells a read helper's idle clock that data arrived.
package activity

import "io"

// Reader reads from R and calls Seen after every read that returned data,
// so that a large message arriving slowly but steadily keeps its socket
// alive.
type Reader struct {
	R    io.Reader
	Seen func()
}

func (a Reader) Read(b []byte) (int, error) {
	n, err := a.R.Read(b)
	if n > 0 {
		a.Seen()
	}
	return n, err
}
