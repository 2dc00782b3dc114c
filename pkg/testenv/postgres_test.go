package testenv

import (
	"context"
	"net"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
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

// TestPostgresCPU: the server's CPU time grows by what a query spends in a
// backend, and is not known for PG_URL's server.
func TestPostgresCPU(t *testing.T) {
	s := Postgres(t)
	before, ok := s.CPU()
	if s.External {
		if ok {
			t.Fatal("CPU is known for PG_URL's server")
		}
		return
	}
	if !ok {
		t.Fatal("CPU of the local server is not known")
	}
	ctx := context.Background()
	conn, err := pgx.Connect(ctx, s.URL)
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close(ctx)
	start := time.Now()
	var n int64
	if err := conn.QueryRow(ctx, `SELECT count(*) FROM generate_series(1, 5000000)`).Scan(&n); err != nil {
		t.Fatal(err)
	}
	took := time.Since(start)
	after, _ := s.CPU()
	if used := after - before; used < took/4 || used > took+time.Second {
		t.Fatalf("the server used %v of CPU for a query of %v", used, took)
	}
}
