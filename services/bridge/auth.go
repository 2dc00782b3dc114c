package main

import (
	"context"
	"crypto/sha256"
	"crypto/subtle"
	"crypto/x509"
	"encoding/hex"
	"fmt"
	"net/http"
	"os"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/jetsync/jetsync/pkg/config"
	"github.com/jetsync/jetsync/pkg/envelope"
	"github.com/jetsync/jetsync/pkg/httpauth"
)

// AuthConfig turns on authentication: bearer tokens (listed here or in a
// tokens file, by name and SHA-256 hash, never the secret) and client
// certificates (http.tls.client_ca_file) mapped to scopes.
type AuthConfig struct {
	Tokens []TokenConfig `yaml:"tokens"`
	// TokensFile is a YAML file holding `tokens:` in the same form, so the
	// hashes can live apart from the config (a secret mount).
	TokensFile string `yaml:"tokens_file"`
	// ClientCerts grants scopes to verified client certificates, by subject.
	ClientCerts []ClientCertConfig `yaml:"client_certs"`
	// ProtectMetrics makes GET /metrics require the admin scope. /healthz
	// and /readyz are always open.
	ProtectMetrics bool `yaml:"protect_metrics"`
}

// TokenConfig is one bearer token.
type TokenConfig struct {
	Name   string   `yaml:"name"`   // the principal stored with the events it appends
	SHA256 string   `yaml:"sha256"` // hex SHA-256 of the secret: bridge token-hash
	Scopes []string `yaml:"scopes"` // append:<category pattern>, read:<category pattern>, admin
	// MaxInflight bounds this token's appends running at once; more get
	// 429 at once. 0: no bound.
	MaxInflight int `yaml:"max_inflight"`
	// Rate bounds this token's appends per second (a token bucket of Burst,
	// at least 1); an append past it gets 429 with Retry-After. 0: no bound.
	Rate  float64 `yaml:"rate"`
	Burst int     `yaml:"burst"`
	// Expires, an RFC 3339 time, ends the token: from then on it gets 401
	// saying it expired. Empty: it does not expire.
	Expires string `yaml:"expires"`
}

// expiry parses Expires; zero when empty.
func (t TokenConfig) expiry() (time.Time, error) {
	if t.Expires == "" {
		return time.Time{}, nil
	}
	return time.Parse(time.RFC3339, t.Expires)
}

// ClientCertConfig grants scopes to client certificates whose subject
// common name, or whole subject (e.g. "CN=orders,O=acme"), is Subject.
type ClientCertConfig struct {
	Subject string   `yaml:"subject"`
	Scopes  []string `yaml:"scopes"`
}

// tokensFile is the content of auth.tokens_file.
type tokensFile struct {
	Tokens []TokenConfig `yaml:"tokens"`
}

// enabled reports whether requests must be authenticated.
func (c *Config) authEnabled() bool {
	return len(c.Auth.Tokens) > 0 || c.Auth.TokensFile != "" || c.HTTP.TLS.ClientCAFile != ""
}

// validate checks the auth section, reading the tokens file.
func (a *AuthConfig) validate(p *config.Problems) {
	seen := map[string]string{}
	checkTokens := func(key string, toks []TokenConfig) {
		for i, t := range toks {
			k := fmt.Sprintf("%s[%d]", key, i)
			if t.Name == "" {
				p.Addf(k+".name", "is required: the principal stored with the events this token appends, e.g. orders-service")
			} else if strings.ContainsAny(t.Name, "\r\n") || len(t.Name) > envelope.MaxTokenLen {
				p.Addf(k+".name", "must be one line of at most %d bytes", envelope.MaxTokenLen)
			} else if prev, ok := seen[t.Name]; ok {
				p.Addf(k+".name", "%q is also the name of %s; give each token its own name", t.Name, prev)
			} else {
				seen[t.Name] = k
			}
			if b, err := hex.DecodeString(t.SHA256); err != nil || len(b) != sha256.Size {
				// Never echo the value: it may be the secret pasted by mistake.
				p.Addf(k+".sha256", "must be 64 hex digits, the SHA-256 of the token; compute it with `bridge token-hash` (never put the token itself here)")
			}
			checkScopes(k+".scopes", t.Scopes, p)
			if t.MaxInflight < 0 {
				p.Addf(k+".max_inflight", "must be 0 (no bound) or positive, got %d", t.MaxInflight)
			}
			if t.Rate < 0 {
				p.Addf(k+".rate", "must be 0 (no bound) or appends per second, e.g. 50; got %v", t.Rate)
			}
			if t.Burst < 0 || (t.Burst > 0 && t.Rate <= 0) {
				p.Addf(k+".burst", "is the appends a rate allows at once: positive, with rate set; got %d", t.Burst)
			}
			if _, err := t.expiry(); err != nil {
				p.Addf(k+".expires", "must be an RFC 3339 time such as 2030-01-31T00:00:00Z, got %q", t.Expires)
			}
		}
	}
	checkTokens("auth.tokens", a.Tokens)
	if a.TokensFile != "" {
		toks, err := readTokensFile(a.TokensFile)
		if err != nil {
			p.Addf("auth.tokens_file", "%v", err)
		}
		checkTokens("auth.tokens_file: tokens", toks)
	}
	for i, c := range a.ClientCerts {
		k := fmt.Sprintf("auth.client_certs[%d]", i)
		if c.Subject == "" {
			p.Addf(k+".subject", "is required: a certificate's common name or whole subject, e.g. orders or CN=orders,O=acme")
		}
		checkScopes(k+".scopes", c.Scopes, p)
	}
}

func readTokensFile(path string) ([]TokenConfig, error) {
	raw, err := os.ReadFile(path)
	if err != nil {
		return nil, fmt.Errorf("cannot be read: %v", err)
	}
	var f tokensFile
	if err := config.Decode(raw, &f); err != nil {
		return nil, fmt.Errorf("%s: %v", path, err)
	}
	return f.Tokens, nil
}

func checkScopes(key string, scopes []string, p *config.Problems) {
	if len(scopes) == 0 {
		p.Addf(key, "is empty; give e.g. [\"append:order\", \"read:*\"] or [admin]")
	}
	for i, s := range scopes {
		if _, err := httpauth.ParseScope(s); err != "" {
			p.Addf(fmt.Sprintf("%s[%d]", key, i), "%q %s", s, err)
		}
	}
}

// grant is a principal with its scopes and, for a token, its limits and
// expiry.
type grant struct {
	name    string
	scopes  []httpauth.Scope
	limits  *limits   // nil: none
	expires time.Time // zero: never
}

func (g *grant) allows(action, category string) bool {
	for _, s := range g.scopes {
		if s.Allows(action, category) {
			return true
		}
	}
	return false
}

// Authenticator checks requests against the configured tokens and client
// certificates. A nil *Authenticator lets every request through.
type Authenticator struct {
	cfg            AuthConfig
	tokens         atomic.Pointer[[]tokenEntry] // swapped by ReloadTokens
	certs          []certEntry
	protectMetrics bool
	now            func() time.Time
	reloadMu       sync.Mutex
}

type tokenEntry struct {
	hash [sha256.Size]byte
	cfg  TokenConfig
	grant
}

type certEntry struct {
	subject string
	grant
}

// NewAuthenticator builds the authenticator of a validated config; nil when
// auth is off.
func NewAuthenticator(cfg Config) (*Authenticator, error) {
	if !cfg.authEnabled() {
		return nil, nil
	}
	a := &Authenticator{cfg: cfg.Auth, protectMetrics: cfg.Auth.ProtectMetrics, now: time.Now}
	toks, err := a.loadTokens(nil)
	if err != nil {
		return nil, err
	}
	a.tokens.Store(&toks)
	for _, c := range cfg.Auth.ClientCerts {
		a.certs = append(a.certs, certEntry{subject: c.Subject, grant: grant{name: c.Subject, scopes: mustScopes(c.Scopes)}})
	}
	return a, nil
}

// ReloadTokens re-reads auth.tokens_file, as SIGHUP does. A file that does
// not load or holds a bad token is refused as a whole and the tokens in use
// stay. A token whose name and limits are unchanged keeps its rate bucket
// and its appends in flight. Without a tokens file it does nothing.
func (a *Authenticator) ReloadTokens() error {
	if a == nil || a.cfg.TokensFile == "" {
		return nil
	}
	a.reloadMu.Lock()
	defer a.reloadMu.Unlock()
	var p config.Problems
	a.cfg.validate(&p)
	if err := p.Err(); err != nil {
		return err
	}
	toks, err := a.loadTokens(*a.tokens.Load())
	if err != nil {
		return err
	}
	a.tokens.Store(&toks)
	return nil
}

// loadTokens builds the token entries of auth.tokens and the tokens file,
// reusing the limits of old entries of the same name and settings.
func (a *Authenticator) loadTokens(old []tokenEntry) ([]tokenEntry, error) {
	toks := a.cfg.Tokens
	if a.cfg.TokensFile != "" {
		more, err := readTokensFile(a.cfg.TokensFile)
		if err != nil {
			return nil, fmt.Errorf("auth.tokens_file %s", err)
		}
		toks = append(toks[:len(toks):len(toks)], more...)
	}
	prev := map[string]*tokenEntry{}
	for i := range old {
		prev[old[i].name] = &old[i]
	}
	out := make([]tokenEntry, 0, len(toks))
	for _, t := range toks {
		exp, err := t.expiry()
		if err != nil {
			return nil, fmt.Errorf("%w: token %q: expires must be an RFC 3339 time", config.ErrInvalid, t.Name)
		}
		e := tokenEntry{cfg: t, grant: grant{name: t.Name, scopes: mustScopes(t.Scopes), expires: exp}}
		if p := prev[t.Name]; p != nil && p.cfg.MaxInflight == t.MaxInflight && p.cfg.Rate == t.Rate && p.cfg.Burst == t.Burst {
			e.limits = p.limits
		} else {
			e.limits = newLimits(t)
		}
		if n, err := hex.Decode(e.hash[:], []byte(t.SHA256)); err != nil || n != sha256.Size {
			return nil, fmt.Errorf("%w: token %q: sha256 must be 64 hex digits", config.ErrInvalid, t.Name)
		}
		out = append(out, e)
	}
	return out, nil
}

func mustScopes(ss []string) []httpauth.Scope {
	out := make([]httpauth.Scope, 0, len(ss))
	for _, s := range ss {
		if sc, err := httpauth.ParseScope(s); err == "" {
			out = append(out, sc)
		}
	}
	return out
}

// lookupToken finds the token's grant. Every configured hash is compared,
// in constant time, whatever matches.
func (a *Authenticator) lookupToken(token string) *grant {
	h := sha256.Sum256([]byte(token))
	tokens := *a.tokens.Load()
	var found *grant
	for i := range tokens {
		if subtle.ConstantTimeCompare(h[:], tokens[i].hash[:]) == 1 && found == nil {
			found = &tokens[i].grant
		}
	}
	return found
}

// certGrant finds the grant of a verified client certificate: the entry
// naming its whole subject or its common name. The principal is the whole
// subject.
func (a *Authenticator) certGrant(cert *x509.Certificate) *grant {
	subject := cert.Subject.String()
	for i := range a.certs {
		if s := a.certs[i].subject; s == subject || s == cert.Subject.CommonName {
			return &grant{name: subject, scopes: a.certs[i].scopes}
		}
	}
	return &grant{name: subject} // authenticated, no scopes: 403 names the one missing
}

type grantKey struct{}

// grantFrom is the authenticated principal's grant in a request's context;
// nil when auth is off.
func grantFrom(ctx context.Context) *grant {
	g, _ := ctx.Value(grantKey{}).(*grant)
	return g
}

// principalFrom is the authenticated principal of a request's context; ""
// when auth is off.
func principalFrom(ctx context.Context) string {
	if g := grantFrom(ctx); g != nil {
		return g.name
	}
	return ""
}

// authorize answers 401 or 403 and returns that status unless the request
// may do action (append, read, admin) on category; then it returns 0 and the
// request with the principal in its context.
func (a *Authenticator) authorize(w http.ResponseWriter, r *http.Request, action, category string) (*http.Request, int) {
	if a == nil {
		return r, 0
	}
	var g *grant
	authz := r.Header.Get("Authorization")
	switch {
	case authz != "":
		scheme, token, _ := strings.Cut(authz, " ")
		token = strings.TrimSpace(token)
		if !strings.EqualFold(scheme, "Bearer") || token == "" {
			return r, unauthorized(w, `error="invalid_request"`, "the Authorization header must be \"Bearer <token>\"")
		}
		if g = a.lookupToken(token); g == nil {
			return r, unauthorized(w, `error="invalid_token"`, "unknown token; check it, or ask for one to be configured (auth.tokens)")
		}
		if !g.expires.IsZero() && !a.now().Before(g.expires) {
			return r, unauthorized(w, `error="invalid_token", error_description="the token expired"`,
				fmt.Sprintf("token %q expired at %s; ask for a new one", g.name, g.expires.UTC().Format(time.RFC3339)))
		}
	case r.TLS != nil && len(r.TLS.VerifiedChains) > 0 && len(r.TLS.VerifiedChains[0]) > 0:
		g = a.certGrant(r.TLS.VerifiedChains[0][0])
	default:
		return r, unauthorized(w, "", "authentication required; send Authorization: Bearer <token>")
	}
	if !g.allows(action, category) {
		need := action
		if action != "admin" {
			need += ":" + category
		}
		w.Header().Set("WWW-Authenticate", `Bearer realm="jetsync", error="insufficient_scope", scope=`+strconv.Quote(need))
		return r, writeJSON(w, http.StatusForbidden, errorBody{Error: fmt.Sprintf("%q lacks the scope %s", g.name, need)})
	}
	return r.WithContext(context.WithValue(r.Context(), grantKey{}, g)), 0
}

func unauthorized(w http.ResponseWriter, params, msg string) int {
	v := `Bearer realm="jetsync"`
	if params != "" {
		v += ", " + params
	}
	w.Header().Set("WWW-Authenticate", v)
	return writeJSON(w, http.StatusUnauthorized, errorBody{Error: msg})
}

// tokenCount is the number of tokens in use.
func (a *Authenticator) tokenCount() int { return len(*a.tokens.Load()) }
