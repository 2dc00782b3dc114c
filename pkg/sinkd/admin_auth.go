package sinkd

import (
	"errors"
	"net/http"
	"sync/atomic"

	"github.com/jetsync/jetsync/pkg/httpauth"
	"github.com/jetsync/jetsync/pkg/sink"
)

// adminGuard is the admin server's TLS and tokens (http.tls, http.tokens,
// http.tokens_file); both are re-read on SIGHUP.
type adminGuard struct {
	cfg   sink.HTTPConfig
	cats  []string                               // what a read: scope must cover: the filters' categories
	tls   *httpauth.CertReloader                 // nil without http.tls
	authn atomic.Pointer[httpauth.Authenticator] // nil: open
}

func newAdminGuard(cfg sink.Config) (*adminGuard, error) {
	g := &adminGuard{cfg: cfg.HTTP, cats: cfg.Categories()}
	if cfg.HTTP.TLS.Enabled() {
		tokens := len(cfg.HTTP.Tokens) > 0 || cfg.HTTP.TokensFile != ""
		var err error
		if g.tls, err = httpauth.NewCertReloader("http.tls", cfg.HTTP.TLS, tokens); err != nil {
			return nil, err
		}
	}
	return g, g.reloadTokens()
}

func (g *adminGuard) reloadTokens() error {
	if !g.cfg.AuthEnabled() {
		return nil
	}
	toks, err := g.cfg.ReadTokens()
	if err != nil {
		return err
	}
	a, err := httpauth.NewAuthenticator(toks, g.cfg.TLS.ClientCAFile != "")
	if err != nil {
		return err
	}
	g.authn.Store(a)
	return nil
}

// Reload re-reads the certificates and the tokens file; on error what was
// loaded before stays in use.
func (g *adminGuard) Reload() error {
	var errs []error
	if g.tls != nil {
		errs = append(errs, g.tls.Reload())
	}
	if g.cfg.TokensFile != "" {
		errs = append(errs, g.reloadTokens())
	}
	return errors.Join(errs...)
}

// guard wraps h: it needs a read: token covering the sink's categories
// when protect is true and auth is configured.
func (g *adminGuard) guard(protect bool, h http.Handler) http.Handler {
	if !protect {
		return h
	}
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r = g.authn.Load().Authorize(w, r, "read", g.cats); r != nil {
			h.ServeHTTP(w, r)
		}
	})
}

// ReloadAdminTLS re-reads the admin server's certificates and tokens file,
// as SIGHUP does.
func (s *Service) ReloadAdminTLS() error {
	if s.guard == nil {
		return nil
	}
	return s.guard.Reload()
}

// reloadAdmin is SIGHUP's part for the admin server.
func (s *Service) reloadAdmin() {
	if s.guard == nil || (s.guard.tls == nil && s.guard.cfg.TokensFile == "") {
		return
	}
	if err := s.guard.Reload(); err != nil {
		s.log.Error("SIGHUP: admin certificates or tokens not reloaded; the previous ones stay in use", "err", err)
		return
	}
	s.log.Info("SIGHUP: admin certificates and tokens reloaded")
}
