package main

import (
	"io"
	"net"
	"net/http"
	"testing"
	"time"
)

// Past http.max_connections a connection is closed as soon as it is
// accepted; closing one frees its place.
func TestLimitListener(t *testing.T) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	ll := newLimitListener(ln, 2)
	srv := &http.Server{Handler: http.NotFoundHandler(), ReadHeaderTimeout: 10 * time.Second}
	go srv.Serve(ll)
	defer srv.Close()
	dial := func() net.Conn {
		c, err := net.Dial("tcp", ln.Addr().String())
		if err != nil {
			t.Fatal(err)
		}
		return c
	}
	closedAtOnce := func(c net.Conn) bool {
		_ = c.SetReadDeadline(time.Now().Add(500 * time.Millisecond))
		_, err := c.Read(make([]byte, 1))
		return err == io.EOF || (err != nil && !isTimeout(err))
	}
	a, b := dial(), dial()
	if closedAtOnce(a) || closedAtOnce(b) {
		t.Fatal("a connection within the cap was closed")
	}
	c := dial()
	if !closedAtOnce(c) {
		t.Fatal("a connection past the cap was not closed")
	}
	if ll.refused.Load() != 1 || ll.open() != 2 {
		t.Fatalf("refused %d, open %d", ll.refused.Load(), ll.open())
	}
	a.Close()
	deadline := time.Now().Add(5 * time.Second)
	for ll.open() != 1 && time.Now().Before(deadline) {
		time.Sleep(10 * time.Millisecond)
	}
	if d := dial(); closedAtOnce(d) {
		t.Fatal("the place of a closed connection was not freed")
	}
	b.Close()
}
