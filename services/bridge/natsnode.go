package main

import (
	"context"
	"fmt"
	"io"
	"log/slog"

	"github.com/jetsync/jetsync/pkg/natsutil"
)

// natsCmd is `bridge nats`: run only the embedded NATS server of the
// config's nats.embedded section, no append API. With
// nats.embedded.cluster it is one node of a JetStream cluster: `make up
// CLUSTER=3` runs three, and the cluster drills SIGKILL them. It is the
// same nats-server the bridge embeds, so nothing else needs installing.
func natsCmd(ctx context.Context, args []string, stderr io.Writer) int {
	cfg, code, ok := configOnly("nats", args, stderr, "YAML config `file` (its nats.embedded section); JETSYNC_* environment variables override it")
	if !ok {
		return code
	}
	if cfg.NATS.URL != "" {
		fmt.Fprintln(stderr, "bridge nats: nats.url is set; this command runs the server of nats.embedded, so leave nats.url empty in its config")
		return exitUsage
	}
	log := slog.New(slog.NewTextHandler(stderr, nil))
	s, err := natsutil.RunEmbedded(cfg.NATS.Embedded)
	if err != nil {
		log.Error("NATS failed to start", "err", err)
		return exitFailed
	}
	log.Info("NATS running", "name", s.Name(), "url", s.ClientURL(), "cluster", cfg.NATS.Embedded.Cluster.Name,
		"store_dir", cfg.NATS.Embedded.StoreDir)
	<-ctx.Done()
	s.Shutdown()
	s.WaitForShutdown()
	log.Info("NATS stopped")
	return exitOK
}
