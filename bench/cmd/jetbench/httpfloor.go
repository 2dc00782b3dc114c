package main

import (
	"context"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"strconv"
	"sync"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
)

// floorFront is the least an HTTP front over JetStream does per append:
// read the body, publish it as one message guarded by the subject's last
// sequence (kept in memory, as the bridge caches stream heads), answer a
// fixed JSON shape. No decoding, no validation, no headers, no metrics.
// Its rate, beside raw publishing, is the ceiling of any HTTP append API on
// this machine: HTTP and JetStream sharing the same cores.
type floorFront struct {
	nc   *nats.Conn
	js   jetstream.JetStream
	srv  *http.Server
	mu   sync.Mutex
	last map[string]uint64
}

// floorFrontArg, as jetbench's first argument, makes it run a floor front
// (a process of its own, like the bridge): jetbench floor-front ADDR NATS_URL.
const floorFrontArg = "floor-front"

// startFloorFront runs the floor front as a process of its own on a free
// loopback port and returns it with its base URL.
func (b *bench) startFloorFront(natsURL string) (*proc, string) {
	self, err := os.Executable()
	if err != nil {
		b.fatalf("appends: %v", err)
	}
	addr := fmt.Sprintf("127.0.0.1:%d", freePort())
	p, err := startProc(self, floorFrontArg, addr, natsURL)
	if err != nil {
		b.fatalf("appends: starting the floor front: %v", err)
	}
	url := "http://" + addr
	if err := waitHTTP(url+"/healthz", 30*time.Second, p); err != nil {
		b.fatalf("appends: floor front: %v", err)
	}
	return p, url
}

// serveFloorFront is the floor front process: it serves until killed.
func serveFloorFront(addr, natsURL string) error {
	nc, err := nats.Connect(natsURL, nats.Name("jetbench floor front"))
	if err != nil {
		return err
	}
	js, _ := jetstream.New(nc)
	ln, err := net.Listen("tcp", addr)
	if err != nil {
		return err
	}
	f := &floorFront{nc: nc, js: js, last: map[string]uint64{}}
	mux := http.NewServeMux()
	mux.HandleFunc("POST /streams/{category}/{id}/events", f.append)
	mux.HandleFunc("GET /healthz", func(w http.ResponseWriter, _ *http.Request) {})
	f.srv = &http.Server{Handler: mux, ReadHeaderTimeout: 10 * time.Second}
	return f.srv.Serve(ln)
}

func (f *floorFront) append(w http.ResponseWriter, r *http.Request) {
	body, err := io.ReadAll(r.Body)
	if err != nil {
		http.Error(w, err.Error(), http.StatusBadRequest)
		return
	}
	expected, _ := strconv.ParseUint(r.URL.Query().Get("expectedVersion"), 10, 64)
	subject := "events." + r.PathValue("category") + "." + r.PathValue("id")
	f.mu.Lock()
	last := f.last[subject]
	f.mu.Unlock()
	msg := nats.NewMsg(subject)
	msg.Data = body
	msg.Header.Set(jetstream.ExpectedLastSubjSeqHeader, strconv.FormatUint(last, 10))
	ctx, cancel := context.WithTimeout(r.Context(), 5*time.Second)
	defer cancel()
	ack, err := f.js.PublishMsg(ctx, msg)
	if err != nil {
		http.Error(w, err.Error(), http.StatusServiceUnavailable)
		return
	}
	f.mu.Lock()
	f.last[subject] = ack.Sequence
	f.mu.Unlock()
	w.Header().Set("Content-Type", "application/json")
	fmt.Fprintf(w, `{"positions":[%d],"version":%d}`+"\n", ack.Sequence, expected+1)
}
