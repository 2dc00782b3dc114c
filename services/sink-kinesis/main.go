// Command sink-kinesis feeds an AWS Kinesis data stream from the jetsync
// event stream: one record per event, partitioned by stream id, in order
// per partition key, at least once. Exit codes: 0 after a clean stop, 2 for
// a bad configuration, 1 for anything else.
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"log/slog"
	"os"
	"os/signal"
	"syscall"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/jetsync/jetsync/pkg/checkpoint"
	"github.com/jetsync/jetsync/pkg/config"
	"github.com/jetsync/jetsync/pkg/natsutil"
	"github.com/jetsync/jetsync/pkg/sink"
	"github.com/jetsync/jetsync/services/sink-kinesis/kinesink"
)

func main() { os.Exit(run()) }

func run() int {
	path := flag.String("config", "", "YAML config file; JETSYNC_* environment variables override it (e.g. JETSYNC_KINESIS_STREAM_NAME); AWS credentials come from the SDK's standard chain (AWS_ACCESS_KEY_ID, AWS_PROFILE, roles)")
	flag.Parse()
	log := slog.New(slog.NewTextHandler(os.Stderr, nil))

	cfg := kinesink.DefaultConfig()
	if err := config.Load(*path, "JETSYNC", &cfg); err != nil {
		fmt.Fprintf(os.Stderr, "sink-kinesis: %v\n", err)
		if errors.Is(err, config.ErrInvalid) {
			return 2
		}
		return 1
	}
	w, err := kinesink.NewWriter(cfg, log)
	if err != nil {
		fmt.Fprintf(os.Stderr, "sink-kinesis: %v\n", err)
		return 2
	}

	nc, err := natsutil.Connect(cfg.NATS.URL, "jetsync-sink-"+cfg.Name, log)
	if err != nil {
		log.Error("cannot start", "err", err)
		return 1
	}
	defer drain(nc)
	js, err := jetstream.New(nc)
	if err != nil {
		log.Error("cannot start", "err", err)
		return 1
	}

	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGINT, syscall.SIGTERM)
	defer stop()
	// Kinesis cannot hold the checkpoint with the records: it lives in
	// the NATS KV bucket, saved after each batch is wholly in.
	store, err := checkpoint.NewKV(ctx, js, cfg.Checkpoint.Bucket)
	if err != nil {
		log.Error("cannot start", "err", err)
		return 1
	}
	eng, err := sink.New(cfg.Config, js, w, store, log)
	if err != nil {
		log.Error("cannot start", "err", err)
		return 1
	}
	if err := eng.Run(ctx); err != nil {
		log.Error("sink failed", "err", err)
		return 1
	}
	return 0
}

// drain closes the NATS connection gracefully, waiting at most 5s.
func drain(nc *nats.Conn) {
	closed := make(chan struct{})
	nc.SetClosedHandler(func(*nats.Conn) { close(closed) })
	if err := nc.Drain(); err != nil {
		nc.Close()
		return
	}
	select {
	case <-closed:
	case <-time.After(5 * time.Second):
		nc.Close()
	}
}
