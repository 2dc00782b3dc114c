// Package search is jetsync's Elasticsearch read-model sink: it maps each
// event type to document writes (index, merge, delete, script), folds a
// batch into one bulk request, makes every write idempotent with the event's
// position as the document's external version, and rebuilds an index behind
// its alias without downtime.
package search

import (
	"fmt"
	"net/url"
	"slices"
	"sort"
	"strings"
	"time"

	"github.com/jetsync/jetsync/pkg/config"
	"github.com/jetsync/jetsync/pkg/mapping"
	"github.com/jetsync/jetsync/pkg/sink"
)

// Actions a mapping can do with a document.
const (
	ActionIndex  = "index"  // the data (or projection) becomes the document
	ActionMerge  = "merge"  // the data (or projection) is merged into the document, created if missing
	ActionDelete = "delete" // the document is deleted
	ActionScript = "script" // a painless script updates the document (needs a full Elasticsearch)
)

var actions = []string{ActionIndex, ActionMerge, ActionDelete, ActionScript}

// What to do with an event type that has no mapping.
const (
	UnknownIgnore = "ignore" // move the checkpoint past it
	UnknownError  = "error"  // a permanent per-event error: on_error decides
)

// DefaultPositionField is the document field that holds the position of the
// last event applied to the document.
const DefaultPositionField = "_position"

// DefaultID is the document id template unless an action sets one.
const DefaultID = "{streamId}"

// Config is sink-es's configuration file.
type Config struct {
	sink.Config `yaml:",inline"`

	Elasticsearch ESConfig `yaml:"elasticsearch"`
	// Indices declares every index the mappings write to: its settings and
	// mappings. A plain name (orders) is an alias created at start in front
	// of a concrete index (orders-<time>); a name with placeholders
	// (orders-{category}) becomes an index template for orders-*.
	Indices map[string]IndexConfig `yaml:"indices"`
	// UnknownTypes is "ignore" or "error".
	UnknownTypes string `yaml:"unknown_types"`
	// Mappings lists, per event type, the document writes of its events.
	Mappings map[string][]Action `yaml:"mappings"`
	Rebuild  RebuildConfig       `yaml:"rebuild"`
}

// ESConfig says which Elasticsearch holds the read model and how to talk to it.
type ESConfig struct {
	URLs     []string `yaml:"urls"`
	Username string   `yaml:"username"`
	Password string   `yaml:"password"`
	APIKey   string   `yaml:"api_key"`
	// RequestTimeout bounds one bulk (or mget) request.
	RequestTimeout time.Duration `yaml:"request_timeout"`
	// MaxRequestBytes splits a batch's bulk request where it would grow
	// past this size (keep it under the server's http.max_content_length).
	MaxRequestBytes config.ByteSize `yaml:"max_request_bytes"`
	// Refresh is the bulk refresh parameter: "false" (default), "true" or
	// "wait_for" (the batch returns once its documents are searchable).
	Refresh string `yaml:"refresh"`
	// PositionField is the document field holding the position of the last
	// event applied to it.
	PositionField string `yaml:"position_field"`
}

// IndexConfig is what an index is created with: the bodies of Elasticsearch's
// create-index request, written in YAML.
type IndexConfig struct {
	Settings map[string]any `yaml:"settings"`
	Mappings map[string]any `yaml:"mappings"`
}

// RebuildConfig shapes `sink-es rebuild`.
type RebuildConfig struct {
	// KeepOld keeps the previous index (read-only) after the alias moved to
	// the rebuilt one; by default it is deleted.
	KeepOld bool `yaml:"keep_old"`
}

// Action is one document write for an event.
type Action struct {
	Action string `yaml:"action"`
	// Index is the target index or alias, a template: "orders",
	// "orders-{category}". It must be declared under indices.
	Index string `yaml:"index"`
	// ID is the document id template; {streamId} when empty.
	ID string `yaml:"id"`
	// Project is a jq expression over the envelope {id, streamId, category,
	// type, version, time, position, data, metadata}; its output replaces
	// the data for index and merge, and is params.doc for script.
	Project string `yaml:"project"`
	// Script is the painless source of a script action; it sees the event as
	// params.event and its position as params.position.
	Script string `yaml:"script"`
}

// DefaultConfig is the configuration before the file and the environment.
func DefaultConfig() Config {
	return Config{
		Config: sink.DefaultConfig("search"),
		Elasticsearch: ESConfig{
			URLs:            []string{"http://127.0.0.1:9200"},
			RequestTimeout:  30 * time.Second,
			MaxRequestBytes: 10 << 20,
			Refresh:         "false",
			PositionField:   DefaultPositionField,
		},
		UnknownTypes: UnknownIgnore,
	}
}

// metadataFields are Elasticsearch's own document fields; the position field
// cannot be one of them.
var metadataFields = []string{"_id", "_index", "_source", "_version", "_routing", "_seq_no", "_primary_term",
	"_ignored", "_field_names", "_doc_count", "_tier", "_data_stream_timestamp", "_feature", "_nested_path", "_tsid", "_type"}

// Validate reports every problem at once, each naming its YAML key.
func (c *Config) Validate() error {
	var p config.Problems
	c.Config.Validate(&p)
	c.Elasticsearch.validate(&p)
	if c.UnknownTypes != UnknownIgnore && c.UnknownTypes != UnknownError {
		p.Addf("unknown_types", "must be %q or %q, got %q", UnknownIgnore, UnknownError, c.UnknownTypes)
	}
	validateIndices(c.Indices, c.Name, &p)
	compileMappings(c, &p)
	return p.Err()
}

func (e *ESConfig) validate(p *config.Problems) {
	if len(e.URLs) == 0 {
		p.Addf("elasticsearch.urls", "needs at least one node URL, e.g. [http://127.0.0.1:9200]")
	}
	for i, u := range e.URLs {
		pu, err := url.Parse(u)
		if err != nil || (pu.Scheme != "http" && pu.Scheme != "https") || pu.Host == "" {
			p.Addf(fmt.Sprintf("elasticsearch.urls[%d]", i), "must be an http(s) URL such as http://127.0.0.1:9200, got %q", u)
		}
	}
	if e.APIKey != "" && (e.Username != "" || e.Password != "") {
		p.Addf("elasticsearch.api_key", "and elasticsearch.username/password exclude each other; use one")
	}
	if e.RequestTimeout <= 0 {
		p.Addf("elasticsearch.request_timeout", "must be positive, e.g. 30s")
	}
	if e.MaxRequestBytes < 64<<10 {
		p.Addf("elasticsearch.max_request_bytes", "must be at least 64KiB, got %s", e.MaxRequestBytes)
	}
	switch e.Refresh {
	case "false", "true", "wait_for":
	case "":
		e.Refresh = "false"
	default:
		p.Addf("elasticsearch.refresh", "must be false, true or wait_for, got %q", e.Refresh)
	}
	switch pf := e.PositionField; {
	case pf == "":
		p.Addf("elasticsearch.position_field", "is required, e.g. %s", DefaultPositionField)
	case strings.ContainsAny(pf, ". \t*\"\\"):
		p.Addf("elasticsearch.position_field", "must be a top-level field name without dots, spaces or quotes, got %q", pf)
	case slices.Contains(metadataFields, pf):
		p.Addf("elasticsearch.position_field", "%q is an Elasticsearch metadata field; use e.g. %s", pf, DefaultPositionField)
	}
}

func validateIndices(m map[string]IndexConfig, sinkName string, p *config.Problems) {
	if len(m) == 0 {
		p.Addf("indices", "needs at least one index, e.g. orders: {settings: {number_of_shards: 1}, mappings: {properties: {total: {type: double}}}}")
	}
	for _, name := range sortedKeys(m) {
		if _, err := mapping.CompileTemplate(name, "", true); err != nil {
			p.Addf("indices."+name, "%v", err)
			continue
		}
		if err := validIndexName(indexPattern(name, sinkName), true); err != nil {
			p.Addf("indices."+name, "%v", err)
		}
		ic := m[name]
		if props, ok := ic.Mappings["properties"]; ok {
			if _, isMap := props.(map[string]any); !isMap {
				p.Addf("indices."+name+".mappings.properties", "must be a mapping of field names to field mappings")
			}
		}
		for _, k := range []string{"aliases", "settings", "mappings"} {
			if _, ok := ic.Settings[k]; ok {
				p.Addf("indices."+name+".settings."+k, "belongs one level up: indices.%s.%s (aliases are managed by the sink)", name, k)
			}
		}
	}
}

// validIndexName checks what Elasticsearch requires of an index name;
// pattern allows the '*' a templated name's pattern holds.
func validIndexName(name string, pattern bool) error {
	bad := `\/?"<>| ,#:`
	if !pattern {
		bad += "*"
	}
	switch {
	case name == "" || name == "." || name == "..":
		return fmt.Errorf("%q is not an index name", name)
	case len(name) > 255:
		return fmt.Errorf("index name %q is longer than 255 bytes", name)
	case strings.ContainsAny(name[:1], "-_+"):
		return fmt.Errorf("index name %q must not start with '-', '_' or '+'", name)
	case strings.ToLower(name) != name:
		return fmt.Errorf("index name %q must be lowercase", name)
	case strings.ContainsAny(name, bad):
		return fmt.Errorf("index name %q must not contain any of %s", name, bad)
	}
	return nil
}

// action is a compiled Action.
type action struct {
	where   string // "mappings.OrderPlaced[0]", for error messages
	kind    opKind
	index   *mapping.Template
	indexAt string // the declared index name (the template's text)
	alias   bool   // a plain name: an alias the sink manages
	id      *mapping.Template
	project *mapping.Projection
	script  string
}

// compileMappings turns the mappings into actions ready to run, reporting
// every problem to p. The result is only usable when p stayed empty.
func compileMappings(c *Config, p *config.Problems) map[string][]action {
	if len(c.Mappings) == 0 {
		p.Addf("mappings", "needs at least one event type, e.g. OrderPlaced: [{action: index, index: orders}]")
		return nil
	}
	out := make(map[string][]action, len(c.Mappings))
	for _, typ := range sortedKeys(c.Mappings) {
		if typ == "" || strings.ContainsAny(typ, "\r\n") {
			p.Addf("mappings."+typ, "an event type must be one non-empty line")
		}
		list := c.Mappings[typ]
		if len(list) == 0 {
			p.Addf("mappings."+typ, "needs at least one action, e.g. [{action: index, index: orders}]")
			continue
		}
		acts := make([]action, 0, len(list))
		for i, a := range list {
			acts = append(acts, compileAction(c, fmt.Sprintf("mappings.%s[%d]", typ, i), a, p))
		}
		out[typ] = acts
	}
	return out
}

func compileAction(c *Config, key string, a Action, p *config.Problems) action {
	act := action{where: key, script: a.Script}
	switch a.Action {
	case ActionIndex:
		act.kind = opIndex
	case ActionMerge:
		act.kind = opMerge
	case ActionDelete:
		act.kind = opDelete
	case ActionScript:
		act.kind = opScript
	default:
		p.Addf(key+".action", "must be one of %s, got %q", strings.Join(actions, ", "), a.Action)
	}

	switch {
	case a.Index == "":
		p.Addf(key+".index", "is required: the target index or alias, e.g. orders (declared under indices)")
	default:
		if _, declared := c.Indices[a.Index]; !declared {
			p.Addf(key+".index", "%q is not declared under indices: add indices.%s with its settings and mappings (may be {})", a.Index, a.Index)
		}
		t, err := mapping.CompileTemplate(a.Index, c.Name, true)
		if err != nil {
			p.Addf(key+".index", "%v", err)
		} else {
			act.index, act.indexAt, act.alias = t, a.Index, t.Constant()
		}
	}

	id := a.ID
	if id == "" {
		id = DefaultID
	}
	if t, err := mapping.CompileTemplate(id, c.Name, true); err != nil {
		p.Addf(key+".id", "%v", err)
	} else if t.Constant() {
		p.Addf(key+".id", "%q has no placeholder, so every event would write the same document; use e.g. {streamId}", id)
	} else {
		act.id = t
	}

	if a.Project != "" {
		if a.Action == ActionDelete {
			p.Addf(key+".project", "is not allowed with action delete: it writes no data")
		} else if code, err := mapping.CompileProjection(a.Project); err != nil {
			p.Addf(key+".project", "%v", err)
		} else {
			act.project = code
		}
	}
	switch {
	case a.Action == ActionScript && strings.TrimSpace(a.Script) == "":
		p.Addf(key+".script", "is required with action script: painless source, e.g. ctx._source.count = (ctx._source.count ?: 0) + 1")
	case a.Action != ActionScript && a.Script != "":
		p.Addf(key+".script", "is only allowed with action script")
	}
	return act
}

func sortedKeys[V any](m map[string]V) []string {
	keys := make([]string, 0, len(m))
	for k := range m {
		keys = append(keys, k)
	}
	sort.Strings(keys)
	return keys
}

// indexPattern is a templated index name with '*' for every event
// placeholder and the sink's name for {sink}: the index pattern of its index
// template ("orders-{category}" -> "orders-*"). "{{" and "}}" stand for
// literal braces, as in templates.
func indexPattern(name, sinkName string) string {
	var b strings.Builder
	for i := 0; i < len(name); i++ {
		c := name[i]
		switch {
		case (c == '{' || c == '}') && i+1 < len(name) && name[i+1] == c:
			b.WriteByte(c)
			i++
		case c == '{' && strings.IndexByte(name[i:], '}') > 0:
			end := strings.IndexByte(name[i:], '}')
			if name[i+1:i+end] == "sink" {
				b.WriteString(sinkName)
			} else {
				b.WriteByte('*')
			}
			i += end
		default:
			b.WriteByte(c)
		}
	}
	return b.String()
}
