package sinkd

import (
	"context"
	"encoding/json"
	"fmt"
	"os"
	"strings"
	"sync"

	"github.com/nats-io/nats.go"

	"github.com/jetsync/jetsync/pkg/config"
	"github.com/jetsync/jetsync/pkg/control"
	"github.com/jetsync/jetsync/pkg/sink"
)

// Option changes a Service.
type Option func(*Service)

// WithConfigFile lets the sink change its mappings while it runs, on
// jetsyncctl reload and (under Serve) SIGHUP: it reads path again with the
// environment variables of envPrefix, as config.Load did at start, and
// hands the result to its writer (sink.MappingReloader), which applies a
// changed mappings section from the next batch on, or refuses a file that
// does not load or changed keys that need a restart.
func WithConfigFile(path, envPrefix string) Option {
	return func(s *Service) {
		s.reloading.load = func(cfg config.Validator) error { return config.Load(path, envPrefix, cfg) }
	}
}

// withReloadSignal reloads on each signal sig delivers (Serve: SIGHUP).
func withReloadSignal(sig <-chan os.Signal) Option {
	return func(s *Service) { s.reloading.signal = sig }
}

// reloading is what a Service needs to reload its mappings.
type reloading struct {
	load   sink.ConfigLoader // nil: started without WithConfigFile
	signal <-chan os.Signal
	mu     sync.Mutex // one reload at a time
}

// Reload reads the sink's configuration again and applies a changed
// mappings section; the reply says what happened. by says who asked, for
// the log.
func (s *Service) Reload(by string) control.ReloadReply {
	s.reloading.mu.Lock()
	defer s.reloading.mu.Unlock()
	log := s.log.With("reload", by)
	r, ok := s.w.(sink.MappingReloader)
	switch {
	case s.reloading.load == nil:
		log.Error("reload refused: this sink has no config file to read again")
		return control.ReloadReply{Refused: s.cfg.Name + " was started without a config file to read again; restart it to change its mappings"}
	case !ok:
		log.Error("reload refused: this sink cannot change its mappings while it runs")
		return control.ReloadReply{Refused: s.cfg.Name + " cannot change its mappings while it runs; restart it"}
	}
	changed, err := r.ReloadMappings(s.reloading.load)
	if err != nil {
		log.Error("reload refused: the running mappings stay", "err", err)
		return control.ReloadReply{Refused: fmt.Sprintf("%s keeps its running mappings: %v", s.cfg.Name, err)}
	}
	cp := s.eng.Stats().Checkpoint
	if len(changed) == 0 {
		log.Info("reload: the mappings are unchanged")
		return control.ReloadReply{Done: s.cfg.Name + ": nothing to apply, the file's mappings are the running ones"}
	}
	log.Info("mappings reloaded: the next batch uses them", "changed", changed, "checkpoint", cp)
	return control.ReloadReply{Done: fmt.Sprintf("%s applied the new mappings (changed: %s): the next batch uses them; what is applied (checkpoint %d) stays as written",
		s.cfg.Name, strings.Join(changed, ", "), cp)}
}

// serveReload answers reload requests on control.ReloadSubject, and reloads
// on each signal of withReloadSignal, until ctx ends or stop is called.
func (s *Service) serveReload(ctx context.Context) (stop func(), err error) {
	sub, err := s.nc.Subscribe(control.ReloadSubject(s.cfg.Name), func(m *nats.Msg) {
		b, _ := json.Marshal(s.Reload("jetsyncctl reload"))
		_ = m.Respond(b)
	})
	if err != nil {
		return nil, err
	}
	ctx, cancel := context.WithCancel(ctx)
	done := make(chan struct{})
	go func() {
		defer close(done)
		for {
			select {
			case <-s.reloading.signal: // nil without withReloadSignal: never
				s.reloadAdmin()
				s.Reload("SIGHUP")
			case <-ctx.Done():
				return
			}
		}
	}()
	return func() {
		_ = sub.Unsubscribe()
		cancel()
		<-done
	}, nil
}
