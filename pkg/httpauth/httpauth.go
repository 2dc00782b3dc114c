// Package httpauth guards a sink's admin HTTP server (pkg/sinkd): TLS,
// optionally mutual, with the files re-read on reload (SIGHUP), and bearer
// tokens defined by name and SHA-256 hash with scopes, answered 401 with
// WWW-Authenticate or 403 naming the missing scope.
//
// The bridge uses its TLS section, scopes and token hashes too, so one
// tokens file and one http.tls section mean the same everywhere; the
// bridge's own Authenticator adds per-token limits, expiry and
// client-certificate grants (services/bridge/auth.go).
package httpauth

import (
	"context"
	"crypto/sha256"
	"crypto/subtle"
	"crypto/tls"
	"crypto/x509"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"net/http"
	"os"
	"strconv"
	"strings"
	"sync/atomic"

	"github.com/jetsync/jetsync/pkg/config"
	"github.com/jetsync/jetsync/pkg/envelope"
)

// MaxNameLen bounds a token's name, as the bridge's principal header does.
const MaxNameLen = 256

// TLSConfig serves HTTPS. The files are re-read on Reload (SIGHUP).
type TLSConfig struct {
	CertFile string `yaml:"cert_file"` // PEM certificate chain
	KeyFile  string `yaml:"key_file"`  // PEM private key
	// ClientCAFile, when set, turns on mutual TLS: clients present a
	// certificate signed by one of these CAs. With tokens configured too, a
	// client may send either.
	ClientCAFile string `yaml:"client_ca_file"`
}

// Enabled reports whether HTTPS is configured.
func (c TLSConfig) Enabled() bool { return c.CertFile != "" || c.KeyFile != "" }

// Validate checks the section whose key is prefix (e.g. "http.tls"),
// loading the files.
func (c TLSConfig) Validate(prefix string, p *config.Problems) {
	switch {
	case c.CertFile == "" && c.KeyFile == "":
		if c.ClientCAFile != "" {
			p.Addf(prefix+".client_ca_file", "needs %s.cert_file and %s.key_file: mutual TLS is TLS", prefix, prefix)
		}
		return
	case c.CertFile == "":
		p.Addf(prefix+".cert_file", "is required with %s.key_file: the PEM certificate chain", prefix)
		return
	case c.KeyFile == "":
		p.Addf(prefix+".key_file", "is required with %s.cert_file: the PEM private key", prefix)
		return
	}
	if _, err := loadTLSFiles(prefix, c); err != nil {
		p.Add(err)
	}
}

type tlsFiles struct {
	cert *tls.Certificate
	cas  *x509.CertPool // nil without client_ca_file
}

func loadTLSFiles(prefix string, c TLSConfig) (*tlsFiles, error) {
	cert, err := tls.LoadX509KeyPair(c.CertFile, c.KeyFile)
	if err != nil {
		return nil, &config.KeyError{Key: prefix + ".cert_file", Reason: fmt.Sprintf("%s with %s.key_file %s does not load: %v", c.CertFile, prefix, c.KeyFile, err)}
	}
	f := &tlsFiles{cert: &cert}
	if c.ClientCAFile != "" {
		pem, err := os.ReadFile(c.ClientCAFile)
		if err != nil {
			return nil, &config.KeyError{Key: prefix + ".client_ca_file", Reason: err.Error()}
		}
		f.cas = x509.NewCertPool()
		if !f.cas.AppendCertsFromPEM(pem) {
			return nil, &config.KeyError{Key: prefix + ".client_ca_file", Reason: c.ClientCAFile + " holds no PEM certificate"}
		}
	}
	return f, nil
}

// CertReloader serves the TLS files loaded last; Reload swaps in new ones.
type CertReloader struct {
	prefix     string
	cfg        TLSConfig
	clientAuth tls.ClientAuthType
	cur        atomic.Pointer[tlsFiles]
}

// NewCertReloader loads the files of cfg (key prefix for errors). With a
// client CA, a client certificate is required, or only verified when given
// if tokens may authenticate instead.
func NewCertReloader(prefix string, cfg TLSConfig, tokens bool) (*CertReloader, error) {
	r := &CertReloader{prefix: prefix, cfg: cfg, clientAuth: tls.NoClientCert}
	if cfg.ClientCAFile != "" {
		r.clientAuth = tls.RequireAndVerifyClientCert
		if tokens {
			r.clientAuth = tls.VerifyClientCertIfGiven
		}
	}
	return r, r.Reload()
}

// Reload re-reads the files. On error the files loaded before stay in use.
func (r *CertReloader) Reload() error {
	f, err := loadTLSFiles(r.prefix, r.cfg)
	if err != nil {
		return err
	}
	r.cur.Store(f)
	return nil
}

// TLSConfig is the server's TLS configuration; every handshake uses the
// files loaded last.
func (r *CertReloader) TLSConfig() *tls.Config {
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

// Token is one bearer token: its name (the principal), the hex SHA-256 of
// its secret (never the secret), and its scopes: read:<category pattern>,
// append:<category pattern>, admin.
type Token struct {
	Name   string   `yaml:"name"`
	SHA256 string   `yaml:"sha256"`
	Scopes []string `yaml:"scopes"`
}

// fileToken is a token of a tokens file, which the bridge reads too: its
// per-token limits are accepted and ignored here.
type fileToken struct {
	Token       `yaml:",inline"`
	MaxInflight int     `yaml:"max_inflight"`
	Rate        float64 `yaml:"rate"`
	Burst       int     `yaml:"burst"`
}

// HashToken is the SHA-256 of a token in hex, as Token.SHA256 holds it.
func HashToken(token string) string {
	h := sha256.Sum256([]byte(token))
	return hex.EncodeToString(h[:])
}

// ReadTokensFile reads a YAML file holding `tokens:` (the bridge's
// auth.tokens_file format).
func ReadTokensFile(path string) ([]Token, error) {
	raw, err := os.ReadFile(path)
	if err != nil {
		return nil, fmt.Errorf("cannot be read: %v", err)
	}
	var f struct {
		Tokens []fileToken `yaml:"tokens"`
	}
	if err := config.Decode(raw, &f); err != nil {
		return nil, fmt.Errorf("%s: %v", path, err)
	}
	out := make([]Token, len(f.Tokens))
	for i, t := range f.Tokens {
		out[i] = t.Token
	}
	return out, nil
}

// ValidateTokens checks tokens listed under key (e.g. "http.tokens").
func ValidateTokens(key string, toks []Token, p *config.Problems) {
	seen := map[string]string{}
	for i, t := range toks {
		k := fmt.Sprintf("%s[%d]", key, i)
		if t.Name == "" {
			p.Addf(k+".name", "is required: who holds this token, e.g. orders-service")
		} else if strings.ContainsAny(t.Name, "\r\n") || len(t.Name) > MaxNameLen {
			p.Addf(k+".name", "must be one line of at most %d bytes", MaxNameLen)
		} else if prev, ok := seen[t.Name]; ok {
			p.Addf(k+".name", "%q is also the name of %s; give each token its own name", t.Name, prev)
		} else {
			seen[t.Name] = k
		}
		if b, err := hex.DecodeString(t.SHA256); err != nil || len(b) != sha256.Size {
			// Never echo the value: it may be the secret pasted by mistake.
			p.Addf(k+".sha256", "must be 64 hex digits, the SHA-256 of the token; compute it with `bridge token-hash` (never put the token itself here)")
		}
		if len(t.Scopes) == 0 {
			p.Addf(k+".scopes", "is empty; give e.g. [\"read:*\"] or [admin]")
		}
		for j, s := range t.Scopes {
			if _, err := ParseScope(s); err != "" {
				p.Addf(fmt.Sprintf("%s.scopes[%d]", k, j), "%q %s", s, err)
			}
		}
	}
}

// Scope is one parsed grant: an action and, for append and read, a
// category pattern ("*", "order", or a prefix "order-*"). The bridge and
// the sinks' admin servers share it, so one tokens file means the same
// everywhere.
type Scope struct {
	action  string // append, read, admin
	pattern string
}

// ParseScope parses append:<pattern>, read:<pattern> or admin; the string
// is empty or says what is wrong with s.
func ParseScope(s string) (Scope, string) {
	if s == "admin" {
		return Scope{action: "admin"}, ""
	}
	action, pat, ok := strings.Cut(s, ":")
	if !ok || (action != "append" && action != "read") {
		return Scope{}, "is not a scope; use append:<category pattern>, read:<category pattern> or admin"
	}
	if pat == "" {
		return Scope{}, "has no category pattern; use e.g. " + action + ":order or " + action + ":*"
	}
	if pat != "*" {
		if err := envelope.ValidateToken("pattern", strings.TrimSuffix(pat, "*")); err != nil {
			return Scope{}, "has a bad category pattern: a category, a prefix ending in * (order-*) or *"
		}
	}
	return Scope{action: action, pattern: pat}, ""
}

// Allows reports whether s grants action on category; category "*" (all
// categories) needs the pattern "*".
func (s Scope) Allows(action, category string) bool {
	switch {
	case s.action != action:
		return false
	case s.action == "admin" || s.pattern == "*":
		return true
	case category == "*":
		return false
	}
	if prefix, ok := strings.CutSuffix(s.pattern, "*"); ok {
		return strings.HasPrefix(category, prefix)
	}
	return s.pattern == category
}

// IsAdmin reports whether s is the admin scope.
func (s Scope) IsAdmin() bool { return s.action == "admin" }

type tokenEntry struct {
	hash   [sha256.Size]byte
	name   string
	scopes []Scope
}

// Authenticator checks requests' bearer tokens (or verified client
// certificates, which the client CA vouches for). A nil *Authenticator lets
// every request through.
type Authenticator struct {
	tokens []tokenEntry
	certs  bool // a verified client certificate is accepted
}

// NewAuthenticator builds an authenticator of validated tokens; certs says
// a verified client certificate is accepted in place of a token.
func NewAuthenticator(toks []Token, certs bool) (*Authenticator, error) {
	a := &Authenticator{certs: certs}
	for _, t := range toks {
		e := tokenEntry{name: t.Name}
		if n, err := hex.Decode(e.hash[:], []byte(t.SHA256)); err != nil || n != sha256.Size {
			return nil, fmt.Errorf("%w: token %q: sha256 must be 64 hex digits", config.ErrInvalid, t.Name)
		}
		for _, s := range t.Scopes {
			if sc, err := ParseScope(s); err == "" {
				e.scopes = append(e.scopes, sc)
			}
		}
		a.tokens = append(a.tokens, e)
	}
	return a, nil
}

// lookup finds the token's entry, comparing every hash in constant time.
func (a *Authenticator) lookup(token string) *tokenEntry {
	h := sha256.Sum256([]byte(token))
	var found *tokenEntry
	for i := range a.tokens {
		if subtle.ConstantTimeCompare(h[:], a.tokens[i].hash[:]) == 1 && found == nil {
			found = &a.tokens[i]
		}
	}
	return found
}

type principalKey struct{}

// Principal is the authenticated principal of a request's context (the
// token's name or the client certificate's subject); "" when none.
func Principal(ctx context.Context) string {
	s, _ := ctx.Value(principalKey{}).(string)
	return s
}

// Authorize answers 401 (missing or unknown token) or 403 (the token lacks
// every one of the categories' action scope) and returns nil; or it returns
// the request with the principal in its context. Categories "*" means all.
// An admin token is allowed everything.
func (a *Authenticator) Authorize(w http.ResponseWriter, r *http.Request, action string, categories []string) *http.Request {
	if a == nil {
		return r
	}
	authz := r.Header.Get("Authorization")
	if authz == "" && a.certs && r.TLS != nil && len(r.TLS.VerifiedChains) > 0 && len(r.TLS.VerifiedChains[0]) > 0 {
		return r.WithContext(context.WithValue(r.Context(), principalKey{}, r.TLS.VerifiedChains[0][0].Subject.String()))
	}
	if authz == "" {
		unauthorized(w, "", "authentication required; send Authorization: Bearer <token>")
		return nil
	}
	scheme, token, _ := strings.Cut(authz, " ")
	token = strings.TrimSpace(token)
	if !strings.EqualFold(scheme, "Bearer") || token == "" {
		unauthorized(w, `error="invalid_request"`, "the Authorization header must be \"Bearer <token>\"")
		return nil
	}
	e := a.lookup(token)
	if e == nil {
		unauthorized(w, `error="invalid_token"`, "unknown token; check it, or ask for one to be configured (http.tokens)")
		return nil
	}
	for _, c := range categories {
		ok := false
		for _, s := range e.scopes {
			if s.IsAdmin() || s.Allows(action, c) {
				ok = true
				break
			}
		}
		if !ok {
			need := action + ":" + c
			w.Header().Set("WWW-Authenticate", `Bearer realm="jetsync", error="insufficient_scope", scope=`+strconv.Quote(need))
			writeJSON(w, http.StatusForbidden, map[string]string{"error": fmt.Sprintf("%q lacks the scope %s", e.name, need)})
			return nil
		}
	}
	return r.WithContext(context.WithValue(r.Context(), principalKey{}, e.name))
}

func unauthorized(w http.ResponseWriter, params, msg string) {
	v := `Bearer realm="jetsync"`
	if params != "" {
		v += ", " + params
	}
	w.Header().Set("WWW-Authenticate", v)
	writeJSON(w, http.StatusUnauthorized, map[string]string{"error": msg})
}

func writeJSON(w http.ResponseWriter, code int, v any) {
	w.Header().Set("Content-Type", "application/json")
	w.WriteHeader(code)
	_ = json.NewEncoder(w).Encode(v)
}
