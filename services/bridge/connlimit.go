package main

import (
	"net"
	"sync"
	"sync/atomic"
)

// DefaultMaxConnections is http.max_connections' default.
const DefaultMaxConnections = 10000

// limitListener accepts at most max connections at once. A connection past
// the cap is accepted and closed at once (the client sees the connection
// end before any answer) rather than left waiting in the kernel's backlog:
// a client that holds connections open cannot make others queue behind it
// unseen, and every refusal is counted (refused). Idle and slow connections
// free their place when http.Server's ReadHeaderTimeout or IdleTimeout
// closes them.
type limitListener struct {
	net.Listener
	sem     chan struct{}
	refused atomic.Uint64
}

func newLimitListener(l net.Listener, max int) *limitListener {
	return &limitListener{Listener: l, sem: make(chan struct{}, max)}
}

func (l *limitListener) Accept() (net.Conn, error) {
	for {
		c, err := l.Listener.Accept()
		if err != nil {
			return nil, err
		}
		select {
		case l.sem <- struct{}{}:
			return &limitConn{Conn: c, release: func() { <-l.sem }}, nil
		default:
			l.refused.Add(1)
			c.Close()
		}
	}
}

// open is the number of connections holding a place.
func (l *limitListener) open() int { return len(l.sem) }

type limitConn struct {
	net.Conn
	once    sync.Once
	release func()
}

func (c *limitConn) Close() error {
	err := c.Conn.Close()
	c.once.Do(c.release)
	return err
}
