package deploy

import (
	"context"
	"net"
	"net/url"
	"os"
	"path/filepath"
	"regexp"
	"slices"
	"strings"
	"testing"

	"github.com/compose-spec/compose-go/v2/loader"
	"github.com/compose-spec/compose-go/v2/types"
)

// acceptedEnv lists the JETSYNC_* variables each service reads. The config
// loader (pkg/config.ApplyEnv) maps JETSYNC_<KEY_PATH> onto the YAML key
// path, so these follow the services' config structs: keep them in step.
var acceptedEnv = map[string][]string{
	"bridge": {
		"JETSYNC_HTTP_LISTEN", "JETSYNC_HTTP_MAX_BODY_BYTES", "JETSYNC_HTTP_SHUTDOWN_TIMEOUT",
		"JETSYNC_NATS_URL",
		// pkg/natsutil.EmbeddedConfig, used when nats.url is empty.
		"JETSYNC_NATS_EMBEDDED_HOST", "JETSYNC_NATS_EMBEDDED_PORT", "JETSYNC_NATS_EMBEDDED_STORE_DIR",
		// pkg/natsutil.StreamConfig.
		"JETSYNC_STREAM_NAME", "JETSYNC_STREAM_REPLICAS", "JETSYNC_STREAM_MAX_AGE",
		"JETSYNC_STREAM_MAX_BYTES", "JETSYNC_STREAM_DUPLICATE_WINDOW",
		"JETSYNC_STREAM_ALLOW_DELETE", "JETSYNC_STREAM_ALLOW_PURGE",
		"JETSYNC_APPEND_TIMEOUT",
		// services/bridge HTTPConfig.TLS.
		"JETSYNC_HTTP_TLS_CERT_FILE", "JETSYNC_HTTP_TLS_KEY_FILE", "JETSYNC_HTTP_TLS_CLIENT_CA_FILE",
	},
	"sink-cache": {
		// pkg/sink.Config, inlined at the top of every sink's file.
		"JETSYNC_NAME", "JETSYNC_NATS_URL", "JETSYNC_STREAM", "JETSYNC_FILTERS",
		"JETSYNC_BATCH_MAX_EVENTS", "JETSYNC_BATCH_MAX_BYTES", "JETSYNC_BATCH_MAX_INTERVAL",
		"JETSYNC_RETRY_INITIAL", "JETSYNC_RETRY_MAX", "JETSYNC_ON_ERROR",
		"JETSYNC_SHUTDOWN_TIMEOUT", "JETSYNC_CHECKPOINT_BUCKET", "JETSYNC_HTTP_LISTEN",
		"JETSYNC_HTTP_TLS_CERT_FILE", "JETSYNC_HTTP_TLS_KEY_FILE", "JETSYNC_HTTP_TLS_CLIENT_CA_FILE",
		"JETSYNC_HTTP_TOKENS_FILE", "JETSYNC_HTTP_PROTECT_METRICS", "JETSYNC_HTTP_PROTECT_HEALTHZ",
		// services/sink-cache/cache.Config.
		"JETSYNC_REDIS_ADDR", "JETSYNC_REDIS_USERNAME", "JETSYNC_REDIS_PASSWORD",
		"JETSYNC_REDIS_DB", "JETSYNC_REDIS_CHECKPOINT_KEY", "JETSYNC_UNKNOWN_TYPES",
	},
	"sink-es": {
		// pkg/sink.Config, inlined at the top of every sink's file.
		"JETSYNC_NAME", "JETSYNC_NATS_URL", "JETSYNC_STREAM", "JETSYNC_FILTERS",
		"JETSYNC_BATCH_MAX_EVENTS", "JETSYNC_BATCH_MAX_BYTES", "JETSYNC_BATCH_MAX_INTERVAL",
		"JETSYNC_BATCH_FLUSH_WHEN_IDLE", "JETSYNC_RETRY_INITIAL", "JETSYNC_RETRY_MAX", "JETSYNC_ON_ERROR",
		"JETSYNC_SHUTDOWN_TIMEOUT", "JETSYNC_CHECKPOINT_BUCKET", "JETSYNC_HTTP_LISTEN",
		"JETSYNC_HTTP_TLS_CERT_FILE", "JETSYNC_HTTP_TLS_KEY_FILE", "JETSYNC_HTTP_TLS_CLIENT_CA_FILE",
		"JETSYNC_HTTP_TOKENS_FILE", "JETSYNC_HTTP_PROTECT_METRICS", "JETSYNC_HTTP_PROTECT_HEALTHZ",
		// services/sink-es/search.Config.
		"JETSYNC_ELASTICSEARCH_URLS", "JETSYNC_ELASTICSEARCH_USERNAME", "JETSYNC_ELASTICSEARCH_PASSWORD",
		"JETSYNC_ELASTICSEARCH_API_KEY", "JETSYNC_ELASTICSEARCH_REQUEST_TIMEOUT", "JETSYNC_ELASTICSEARCH_MAX_REQUEST_BYTES",
		"JETSYNC_ELASTICSEARCH_REFRESH", "JETSYNC_ELASTICSEARCH_POSITION_FIELD", "JETSYNC_UNKNOWN_TYPES",
		"JETSYNC_REBUILD_KEEP_OLD",
	},
	"sink-kinesis": {
		// pkg/sink.Config, inlined at the top of every sink's file.
		"JETSYNC_NAME", "JETSYNC_NATS_URL", "JETSYNC_STREAM", "JETSYNC_FILTERS",
		"JETSYNC_BATCH_MAX_EVENTS", "JETSYNC_BATCH_MAX_BYTES", "JETSYNC_BATCH_MAX_INTERVAL",
		"JETSYNC_BATCH_FLUSH_WHEN_IDLE", "JETSYNC_RETRY_INITIAL", "JETSYNC_RETRY_MAX", "JETSYNC_ON_ERROR",
		"JETSYNC_SHUTDOWN_TIMEOUT", "JETSYNC_CHECKPOINT_BUCKET", "JETSYNC_HTTP_LISTEN",
		"JETSYNC_HTTP_TLS_CERT_FILE", "JETSYNC_HTTP_TLS_KEY_FILE", "JETSYNC_HTTP_TLS_CLIENT_CA_FILE",
		"JETSYNC_HTTP_TOKENS_FILE", "JETSYNC_HTTP_PROTECT_METRICS", "JETSYNC_HTTP_PROTECT_HEALTHZ",
		// services/sink-kinesis/kinesink.KinesisConfig.
		"JETSYNC_KINESIS_STREAM_NAME", "JETSYNC_KINESIS_REGION", "JETSYNC_KINESIS_ENDPOINT",
		"JETSYNC_KINESIS_PARTITION_KEY", "JETSYNC_KINESIS_PROJECT", "JETSYNC_KINESIS_CREATE_STREAM_IF_MISSING",
		"JETSYNC_KINESIS_SHARD_COUNT", "JETSYNC_KINESIS_MAX_RECORDS_PER_CALL", "JETSYNC_KINESIS_MAX_BYTES_PER_CALL",
		"JETSYNC_KINESIS_REQUEST_TIMEOUT",
	},
	"relay": {
		// The bridge's config (bridge relay reads the same file format);
		// services/bridge SourceConfig.
		"JETSYNC_NATS_URL", "JETSYNC_STREAM_NAME",
		"JETSYNC_SOURCE_NAME", "JETSYNC_SOURCE_POSTGRES_URL", "JETSYNC_SOURCE_TABLE", "JETSYNC_SOURCE_ON_ERROR",
		"JETSYNC_SOURCE_LISTEN_CHANNEL", "JETSYNC_SOURCE_STATUS_LISTEN", "JETSYNC_SOURCE_BATCH_SIZE", "JETSYNC_SOURCE_POLL_INTERVAL",
	},
	"sink-postgres": {
		// pkg/sink.Config, inlined at the top of every sink's file.
		"JETSYNC_NAME", "JETSYNC_NATS_URL", "JETSYNC_STREAM", "JETSYNC_FILTERS",
		"JETSYNC_BATCH_MAX_EVENTS", "JETSYNC_BATCH_MAX_BYTES", "JETSYNC_BATCH_MAX_INTERVAL",
		"JETSYNC_BATCH_FLUSH_WHEN_IDLE", "JETSYNC_RETRY_INITIAL", "JETSYNC_RETRY_MAX", "JETSYNC_ON_ERROR",
		"JETSYNC_SHUTDOWN_TIMEOUT", "JETSYNC_CHECKPOINT_BUCKET", "JETSYNC_HTTP_LISTEN",
		"JETSYNC_HTTP_TLS_CERT_FILE", "JETSYNC_HTTP_TLS_KEY_FILE", "JETSYNC_HTTP_TLS_CLIENT_CA_FILE",
		"JETSYNC_HTTP_TOKENS_FILE", "JETSYNC_HTTP_PROTECT_METRICS", "JETSYNC_HTTP_PROTECT_HEALTHZ",
		// services/sink-postgres/relational.Config.
		"JETSYNC_POSTGRES_URL", "JETSYNC_UNKNOWN_TYPES",
	},
}

func TestComposeLoads(t *testing.T) {
	p := loadCompose(t)
	if p.Name != "jetsync" {
		t.Errorf("project name = %q, want jetsync", p.Name)
	}
}

// The loader must reject what the compose spec rejects, or the other tests
// prove nothing about validity.
func TestComposeLoaderValidates(t *testing.T) {
	for name, yaml := range map[string]string{
		"unknown key":        "services:\n  a:\n    image: x\n    bogus: 1\n",
		"bad condition":      "services:\n  a:\n    image: x\n    depends_on:\n      b: {condition: when_ready}\n  b:\n    image: x\n",
		"missing dependency": "services:\n  a:\n    image: x\n    depends_on: [b]\n",
	} {
		t.Run(name, func(t *testing.T) {
			_, err := loader.LoadWithContext(context.Background(), types.ConfigDetails{
				WorkingDir:  t.TempDir(),
				ConfigFiles: []types.ConfigFile{{Filename: "compose.yml", Content: []byte(yaml)}},
				Environment: types.Mapping{},
			}, func(o *loader.Options) { o.SetProjectName("check", true) })
			if err == nil {
				t.Fatal("loaded without error")
			}
		})
	}
}

func TestComposeInterpolatesEnvironment(t *testing.T) {
	p := loadCompose(t, "BRIDGE_PORT=18080", "JETSYNC_TAG=ci")
	b := service(t, p, "bridge")
	if len(b.Ports) != 1 || b.Ports[0].Published != "18080" || b.Ports[0].Target != 8080 {
		t.Errorf("bridge ports = %+v, want 18080:8080", b.Ports)
	}
	if b.Image != "jetsync/bridge:ci" {
		t.Errorf("bridge image = %q, want jetsync/bridge:ci", b.Image)
	}
}

func TestComposeServices(t *testing.T) {
	p := loadCompose(t)
	for _, name := range []string{"nats", "redis", "bridge", "sink-cache", "elasticsearch", "sink-es"} {
		if _, ok := p.Services[name]; !ok {
			t.Errorf("service %q is missing; have %v", name, p.ServiceNames())
		}
	}
	for name := range jetsyncServices {
		if p.Services[name].Build == nil {
			t.Errorf("service %q has no build section", name)
		}
	}
	if ports := service(t, p, "bridge").Ports; len(ports) != 1 || ports[0].Target != 8080 {
		t.Errorf("bridge must publish container port 8080, has %+v", ports)
	}
	for _, name := range []string{"nats", "redis"} {
		vols := service(t, p, name).Volumes
		if len(vols) == 0 || vols[0].Type != types.VolumeTypeVolume || vols[0].Target != "/data" {
			t.Errorf("%s must keep /data in a named volume, has %+v", name, vols)
		}
	}
	es := service(t, p, "elasticsearch")
	if !strings.HasPrefix(es.Image, "docker.elastic.co/elasticsearch/elasticsearch:8.14.") {
		t.Errorf("elasticsearch: image %q, want docker.elastic.co/elasticsearch/elasticsearch:8.14.x", es.Image)
	}
	if vols := es.Volumes; len(vols) == 0 || vols[0].Type != types.VolumeTypeVolume || vols[0].Target != "/usr/share/elasticsearch/data" {
		t.Errorf("elasticsearch must keep its data in a named volume, has %+v", vols)
	}
	for k, want := range map[string]string{"discovery.type": "single-node", "xpack.security.enabled": "false"} {
		if v := es.Environment[k]; v == nil || *v != want {
			t.Errorf("elasticsearch: %s = %v, want %q (one node, plain http for sink-es)", k, deref(v), want)
		}
	}
}

func TestComposeBuilds(t *testing.T) {
	root := repoRoot(t)
	p := loadCompose(t)
	for _, name := range p.ServicesWithBuild() {
		b := p.Services[name].Build
		if fi, err := os.Stat(b.Context); err != nil || !fi.IsDir() {
			t.Errorf("%s: build context %s is not a directory", name, b.Context)
			continue
		}
		// Every Dockerfile COPYs pkg/ next to its service: only the
		// repository root holds both.
		if b.Context != root {
			t.Errorf("%s: build context = %s, want the repository root %s", name, b.Context, root)
		}
		df := b.Dockerfile
		if !filepath.IsAbs(df) {
			df = filepath.Join(b.Context, df)
		}
		if fi, err := os.Stat(df); err != nil || !fi.Mode().IsRegular() {
			t.Errorf("%s: Dockerfile %s does not exist", name, df)
		}
		if want := filepath.Join(root, "services", name, "Dockerfile"); df != want {
			t.Errorf("%s: Dockerfile = %s, want %s", name, df, want)
		}
	}
}

func TestComposeConfigMounts(t *testing.T) {
	root := repoRoot(t)
	p := loadCompose(t)
	for _, s := range p.Services {
		for _, v := range s.Volumes {
			if v.Type != types.VolumeTypeBind {
				continue
			}
			if rel, err := filepath.Rel(root, v.Source); err != nil || strings.HasPrefix(rel, "..") {
				continue // not a file of this repository
			}
			fi, err := os.Stat(v.Source)
			if err != nil {
				t.Errorf("%s: bind mount source %s does not exist (docker would create an empty directory there)", s.Name, v.Source)
				continue
			}
			if strings.HasSuffix(v.Target, ".yaml") && !fi.Mode().IsRegular() {
				t.Errorf("%s: %s is mounted as a config file but is not a file", s.Name, v.Source)
			}
			if !v.ReadOnly {
				t.Errorf("%s: bind mount %s should be read_only", s.Name, v.Target)
			}
		}
	}
	// Each image reads /etc/jetsync/<service>.yaml (its ENTRYPOINT).
	for name := range jetsyncServices {
		want := filepath.Join(root, "deploy", "config", name+".yaml")
		if src, ok := mountSource(service(t, p, name), configPath(name)); !ok || src != want {
			t.Errorf("%s: %s must be mounted from %s, got %q", name, configPath(name), want, src)
		}
	}
}

func TestComposeEnvironment(t *testing.T) {
	p := loadCompose(t)
	for _, s := range p.Services {
		accepted, known := acceptedEnv[s.Name]
		for key, val := range s.Environment {
			if !strings.HasPrefix(key, "JETSYNC_") {
				continue
			}
			switch {
			case !known:
				t.Errorf("%s: sets %s but is not a jetsync service", s.Name, key)
			case !slices.Contains(accepted, key):
				t.Errorf("%s: %s is not a variable the service reads; it reads %v", s.Name, key, accepted)
			case val == nil:
				t.Errorf("%s: %s has no value", s.Name, key)
			}
		}
	}
	want := map[string]map[string]string{
		"bridge":        {"JETSYNC_NATS_URL": "nats://nats:4222", "JETSYNC_HTTP_LISTEN": "0.0.0.0:8080"},
		"sink-cache":    {"JETSYNC_NATS_URL": "nats://nats:4222", "JETSYNC_REDIS_ADDR": "redis:6379"},
		"sink-kinesis":  {"JETSYNC_NATS_URL": "nats://nats:4222", "JETSYNC_KINESIS_ENDPOINT": "http://kinesis:4567"},
		"sink-es":       {"JETSYNC_NATS_URL": "nats://nats:4222", "JETSYNC_ELASTICSEARCH_URLS": "http://elasticsearch:9200"},
		"sink-postgres": {"JETSYNC_NATS_URL": "nats://nats:4222"},
	}
	for name, vars := range want {
		env := service(t, p, name).Environment
		for k, v := range vars {
			if got := env[k]; got == nil || *got != v {
				t.Errorf("%s: %s = %v, want %q", name, k, deref(got), v)
			}
		}
	}
}

// Addresses in a service's environment name other compose services.
func TestComposeAddressesNameServices(t *testing.T) {
	p := loadCompose(t)
	for _, s := range p.Services {
		for key, val := range s.Environment {
			if !strings.HasPrefix(key, "JETSYNC_") || val == nil ||
				!(strings.HasSuffix(key, "_URL") || strings.HasSuffix(key, "_ADDR")) {
				continue
			}
			checkAddressHost(t, p, s.Name+": "+key, *val)
		}
	}
}

func TestComposeDependsOn(t *testing.T) {
	p := loadCompose(t)
	want := map[string]map[string]string{
		"bridge": {"nats": types.ServiceConditionHealthy},
		"sink-cache": {
			"nats":   types.ServiceConditionHealthy,
			"redis":  types.ServiceConditionHealthy,
			"bridge": types.ServiceConditionStarted, // it provisions the stream
		},
		"sink-kinesis": {
			"nats":    types.ServiceConditionHealthy,
			"kinesis": types.ServiceConditionHealthy,
			"bridge":  types.ServiceConditionStarted,
		},
		"sink-es": {
			"nats":          types.ServiceConditionHealthy,
			"elasticsearch": types.ServiceConditionHealthy,
			"bridge":        types.ServiceConditionStarted,
		},
	}
	for name, deps := range want {
		got := service(t, p, name).DependsOn
		for dep, cond := range deps {
			d, ok := got[dep]
			switch {
			case !ok:
				t.Errorf("%s must depend on %s", name, dep)
			case d.Condition != cond:
				t.Errorf("%s depends on %s with condition %q, want %q", name, dep, d.Condition, cond)
			}
		}
	}
	// Waiting for a service to be healthy needs a health check, or
	// `docker compose up` fails.
	for _, s := range p.Services {
		for dep, d := range s.DependsOn {
			if d.Condition != types.ServiceConditionHealthy {
				continue
			}
			if _, active := p.Services[dep]; !active && !d.Required {
				continue // in a profile that is off (the cluster's nodes)
			}
			hc := p.Services[dep].HealthCheck
			if hc == nil || hc.Disable || len(hc.Test) == 0 {
				t.Errorf("%s waits for %s to be healthy, but %s has no health check", s.Name, dep, dep)
			}
		}
	}
}

func configPath(svc string) string { return "/etc/jetsync/" + svc + ".yaml" }

// mountSource is the host path bind-mounted at target.
func mountSource(s types.ServiceConfig, target string) (string, bool) {
	for _, v := range s.Volumes {
		if v.Type == types.VolumeTypeBind && v.Target == target {
			return v.Source, true
		}
	}
	return "", false
}

// checkAddressHost fails unless addr (a URL or host:port) names a service of
// the project, the only hosts a container reaches by name.
func checkAddressHost(t *testing.T, p *types.Project, what, addr string) {
	t.Helper()
	host := addr
	if u, err := url.Parse(addr); err == nil && u.Host != "" {
		host = u.Hostname()
	} else if h, _, err := net.SplitHostPort(addr); err == nil {
		host = h
	}
	if _, ok := p.Services[host]; !ok {
		t.Errorf("%s = %q: host %q is not a compose service (%v)", what, addr, host, p.ServiceNames())
	}
}

func deref(s *string) any {
	if s == nil {
		return nil
	}
	return *s
}

// The compose bridge listens on every address of its container, so it must
// authenticate (it refuses to start otherwise): auth.tokens_file in its
// config is bind-mounted, and the file holds names, hashes and scopes only.
func TestComposeBridgeRequiresTokens(t *testing.T) {
	p := loadCompose(t)
	s := service(t, p, "bridge")
	src, ok := mountSource(s, configPath("bridge"))
	if !ok {
		t.Fatal("bridge: no config mounted")
	}
	cfg := readConfig(t, src)
	auth, _ := cfg["auth"].(map[string]any)
	tokensFile, _ := auth["tokens_file"].(string)
	if tokensFile == "" {
		t.Fatalf("%s: auth.tokens_file is not set; the bridge listens on 0.0.0.0 and would refuse to start", src)
	}
	tsrc, ok := mountSource(s, tokensFile)
	if !ok {
		t.Fatalf("bridge: auth.tokens_file %s is not bind-mounted", tokensFile)
	}
	toks, _ := readConfig(t, tsrc)["tokens"].([]any)
	if len(toks) == 0 {
		t.Fatalf("%s: no tokens", tsrc)
	}
	hexHash := regexp.MustCompile(`^[0-9a-f]{64}$`)
	for i, tok := range toks {
		m, _ := tok.(map[string]any)
		for k := range m {
			if k != "name" && k != "sha256" && k != "scopes" {
				t.Errorf("%s: tokens[%d] has key %q; only name, sha256 and scopes (never the secret)", tsrc, i, k)
			}
		}
		if h, _ := m["sha256"].(string); !hexHash.MatchString(h) {
			t.Errorf("%s: tokens[%d].sha256 is not 64 hex digits", tsrc, i)
		}
	}
}

// The relay runs the bridge's image with `relay` on its own config, after
// postgres (its source) is healthy.
func TestComposeRelay(t *testing.T) {
	p := loadCompose(t)
	s := service(t, p, "relay")
	if b := service(t, p, "bridge"); s.Image != b.Image || s.Build != nil {
		t.Errorf("relay: image %q, want the bridge's %q, not a build of its own", s.Image, b.Image)
	}
	if got := strings.Join(s.Command, " "); got != "relay -config /etc/jetsync/relay.yaml" {
		t.Errorf("relay: command %q, want relay -config /etc/jetsync/relay.yaml", got)
	}
	root := repoRoot(t)
	if src, ok := mountSource(s, configPath("relay")); !ok || src != filepath.Join(root, "deploy", "config", "relay.yaml") {
		t.Errorf("relay: %s must be mounted from deploy/config/relay.yaml, got %q", configPath("relay"), src)
	}
	for dep, cond := range map[string]string{"nats": types.ServiceConditionHealthy, "postgres": types.ServiceConditionHealthy, "bridge": types.ServiceConditionStarted} {
		if d, ok := s.DependsOn[dep]; !ok || d.Condition != cond {
			t.Errorf("relay must depend on %s (%s)", dep, cond)
		}
	}
	src := readConfig(t, filepath.Join(root, "deploy", "config", "relay.yaml"))["source"].(map[string]any)
	checkAddressHost(t, p, "relay: relay.yaml source.postgres_url", src["postgres_url"].(string))
	pg := service(t, p, "postgres").Environment
	u, err := url.Parse(src["postgres_url"].(string))
	if err != nil || u.User.Username() != *pg["POSTGRES_USER"] || u.Path != "/"+*pg["POSTGRES_DB"] {
		t.Errorf("relay: source.postgres_url %q does not match the postgres service's user and database", src["postgres_url"])
	}
}
