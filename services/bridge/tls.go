package main

import (
	"crypto/tls"
	"crypto/x509"
	"fmt"
	"os"
	"sync/atomic"

	"github.com/jetsync/jetsync/pkg/config"
)

// TLSConfig serves the API over HTTPS. The files are re-read on SIGHUP, so
// certificates rotate without a restart.
type TLSConfig struct {
	CertFile string `yaml:"cert_file"` // PEM certificate chain
	KeyFile  string `yaml:"key_file"`  // PEM private key
	// ClientCAFile, when set, turns on mutual TLS: clients present a
	// certificate signed by one of these CAs, and its subject is their
	// principal (auth.client_certs grants it scopes). With auth tokens
	// configured too, a client may send either.
	ClientCAFile string `yaml:"client_ca_file"`
}

func (c TLSConfig) enabled() bool { return c.CertFile != "" || c.KeyFile != "" }

func (c TLSConfig) validate(p *config.Problems) {
	switch {
	case c.CertFile == "" && c.KeyFile == "":
		if c.ClientCAFile != "" {
			p.Addf("http.tls.client_ca_file", "needs http.tls.cert_file and http.tls.key_file: mutual TLS is TLS")
		}
		return
	case c.CertFile == "":
		p.Addf("http.tls.cert_file", "is required with http.tls.key_file: the PEM certificate chain")
		return
	case c.KeyFile == "":
		p.Addf("http.tls.key_file", "is required with http.tls.cert_file: the PEM private key")
		return
	}
	if _, err := loadTLSFiles(c); err != nil {
		p.Add(err)
	}
}

// tlsFiles is what the TLS files hold, loaded together.
type tlsFiles struct {
	cert *tls.Certificate
	cas  *x509.CertPool // nil without client_ca_file
}

func loadTLSFiles(c TLSConfig) (*tlsFiles, error) {
	cert, err := tls.LoadX509KeyPair(c.CertFile, c.KeyFile)
	if err != nil {
		return nil, &config.KeyError{Key: "http.tls.cert_file", Reason: fmt.Sprintf("%s with http.tls.key_file %s does not load: %v", c.CertFile, c.KeyFile, err)}
	}
	f := &tlsFiles{cert: &cert}
	if c.ClientCAFile != "" {
		pem, err := os.ReadFile(c.ClientCAFile)
		if err != nil {
			return nil, &config.KeyError{Key: "http.tls.client_ca_file", Reason: err.Error()}
		}
		f.cas = x509.NewCertPool()
		if !f.cas.AppendCertsFromPEM(pem) {
			return nil, &config.KeyError{Key: "http.tls.client_ca_file", Reason: c.ClientCAFile + " holds no PEM certificate"}
		}
	}
	return f, nil
}

// certReloader serves the TLS files loaded last; Reload swaps in new ones.
type certReloader struct {
	cfg        TLSConfig
	clientAuth tls.ClientAuthType
	cur        atomic.Pointer[tlsFiles]
}

func newCertReloader(cfg TLSConfig, tokens bool) (*certReloader, error) {
	r := &certReloader{cfg: cfg, clientAuth: tls.NoClientCert}
	if cfg.ClientCAFile != "" {
		r.clientAuth = tls.RequireAndVerifyClientCert
		if tokens { // a token or a certificate
			r.clientAuth = tls.VerifyClientCertIfGiven
		}
	}
	return r, r.Reload()
}

// Reload re-reads the files. On error the files loaded before stay in use.
func (r *certReloader) Reload() error {
	f, err := loadTLSFiles(r.cfg)
	if err != nil {
		return err
	}
	r.cur.Store(f)
	return nil
}

// TLSConfig is the server's TLS configuration; every handshake uses the
// files loaded last.
func (r *certReloader) TLSConfig() *tls.Config {
	get := func() *tls.Config {
		f := r.cur.Load()
		return &tls.Config{
			MinVersion:   tls.VersionTLS12,
			Certificates: []tls.Certificate{*f.cert},
			ClientCAs:    f.cas,
			ClientAuth:   r.clientAuth,
			NextProtos:   []string{"h2", "http/1.1"},
		}
	}
	base := get()
	base.GetConfigForClient = func(*tls.ClientHelloInfo) (*tls.Config, error) { return get(), nil }
	return base
}
