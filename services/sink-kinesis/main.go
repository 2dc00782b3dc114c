// Command sink-kinesis feeds an AWS Kinesis data stream from the jetsync
// event stream: one record per event, partitioned by stream id, in order
// per partition key, at least once (a duplicate carries the same position).
// Its checkpoint lives in the NATS KV bucket (checkpoint.bucket), saved
// after each batch is wholly in Kinesis. Exit codes: 0 after a clean stop,
// 2 for a bad configuration, 1 for anything else.
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

	"github.com/jetsync/jetsync/pkg/config"
	"github.com/jetsync/jetsync/pkg/sinkd"
	"github.com/jetsync/jetsync/services/sink-kinesis/kinesink"
)

func main() { os.Exit(run()) }

func run() int {
	path := flag.String("config", "", "YAML config file; JETSYNC_* environment variables override it (e.g. JETSYNC_KINESIS_STREAM_NAME); "+
		"AWS credentials come from the SDK's standard chain (AWS_ACCESS_KEY_ID, AWS_PROFILE, an IAM role)")
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

	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGINT, syscall.SIGTERM)
	defer stop()
	// sinkd opens the checkpoint store in NATS KV (the writer keeps none in
	// Kinesis) and runs the engine with the admin endpoints around it.
	svc, err := sinkd.New(ctx, cfg.Config, w, log)
	if err != nil {
		log.Error("cannot start", "err", err)
		return 1
	}
	if err := svc.Run(ctx); err != nil {
		log.Error("sink failed", "err", err)
		return 1
	}
	return 0
}
