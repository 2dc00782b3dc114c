package sinkd

import (
	"context"
	"log/slog"

	"github.com/nats-io/nats.go/jetstream"

	"github.com/jetsync/jetsync/pkg/deadletter"
	"github.com/jetsync/jetsync/pkg/natsutil"
	"github.com/jetsync/jetsync/pkg/sink"
)

// RebuildConn is what a sink's rebuild command needs of NATS: a JetStream
// context on its own connection, and the engine options its error policy
// asks for (the dead-letter queue under on_error dead-letter or park).
// close drains the connection.
func RebuildConn(ctx context.Context, cfg sink.Config, log *slog.Logger) (js jetstream.JetStream, opts []sink.Option, close func(), err error) {
	nc, err := natsutil.Connect(cfg.NATS, "jetsync-sink-"+cfg.Name+"-rebuild", log)
	if err != nil {
		return nil, nil, nil, err
	}
	close = func() { natsutil.Drain(nc) }
	if js, err = jetstream.New(nc); err != nil {
		close()
		return nil, nil, nil, err
	}
	if cfg.OnError == sink.OnErrorDeadLetter || cfg.OnError == sink.OnErrorPark {
		q, err := deadletter.Open(ctx, js)
		if err != nil {
			close()
			return nil, nil, nil, err
		}
		opts = append(opts, sink.WithDeadLetters(q))
	}
	return js, opts, close, nil
}
