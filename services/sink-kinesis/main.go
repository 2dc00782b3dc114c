// Command sink-kinesis feeds an AWS Kinesis data stream from the jetsync
// event stream: one record per event, partitioned by stream id, in order
// per partition key, at least once (a duplicate carries the same position).
// Its checkpoint lives in the NATS KV bucket (checkpoint.bucket), saved
// after each batch is wholly in Kinesis. Exit codes: 0 after a clean stop,
// 2 for a bad configuration, 1 for anything else.
package main

import (
	"flag"
	"log/slog"
	"os"

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
		return sinkd.ConfigError("sink-kinesis", err)
	}
	w, err := kinesink.NewWriter(cfg, log)
	if err != nil {
		return sinkd.ConfigError("sink-kinesis", err)
	}

	return sinkd.Serve(cfg.Config, w, log, sinkd.WithConfigFile(*path, "JETSYNC"))
}
