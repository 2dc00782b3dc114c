package testenv

import (
	"net"
	"testing"
)

// TestPostgresStartsStopsAndRestarts starts a real server (or PG_URL's),
// and a local one again after a stop, on the same port.
func TestPostgresStartsStopsAndRestarts(t *testing.T) {
	s := Postgres(t)
	dial := func() error {
		c, err := net.Dial("tcp", s.Addr())
		if err == nil {
			c.Close()
		}
		return err
	}
	if err := dial(); err != nil {
		t.Fatalf("server at %s does not accept connections: %v", s.Addr(), err)
	}
	if s.External {
		return
	}
	s.Stop()
	if err := dial(); err == nil {
		t.Fatal("server still accepts connections after Stop")
	}
	s.Stop() // safe twice
	s.Start()
	if err := dial(); err != nil {
		t.Fatalf("server did not come back: %v", err)
	}
}
