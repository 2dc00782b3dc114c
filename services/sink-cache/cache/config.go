// Package cache is jetsync's Redis read-model sink: it maps each event type
// to a list of Redis writes (set, hset, merge, del, incr, append) and commits
// every batch in one MULTI/EXEC together with the sink's checkpoint.
package cache

import (
	"fmt"
	"net"
	"slices"
	"strings"
	"time"

	"github.com/jetsync/jetsync/pkg/config"
	"github.com/jetsync/jetsync/pkg/mapping"
	"github.com/jetsync/jetsync/pkg/sink"
)

// Ops a mapping action can do.
const (
	OpSet    = "set"    // SET key to the data (or projection) JSON
	OpHSet   = "hset"   // replace the hash: DEL key, HSET the top-level fields
	OpMerge  = "merge"  // HSET the top-level fields, keeping the others
	OpDel    = "del"    // DEL key
	OpIncr   = "incr"   // HINCRBY key field 1
	OpAppend = "append" // RPUSH key value (default: the data JSON)
)

var ops = []string{OpSet, OpHSet, OpMerge, OpDel, OpIncr, OpAppend}

// What to do with an event type that has no mapping.
const (
	UnknownIgnore = "ignore" // move the checkpoint past it
	UnknownError  = "error"  // a permanent per-event error: on_error decides
)

// DefaultCheckpointKey is where the checkpoint lives unless configured.
const DefaultCheckpointKey = "jetsync:checkpoint:{sink}"

// Config is sink-cache's configuration file.
type Config struct {
	sink.Config `yaml:",inline"`

	Redis RedisConfig `yaml:"redis"`
	// UnknownTypes is "ignore" or "error".
	UnknownTypes string `yaml:"unknown_types"`
	// Mappings lists, per event type, the actions applied in order.
	Mappings map[string][]Action `yaml:"mappings"`
}

// RedisConfig says which Redis holds the read model and its checkpoint.
type RedisConfig struct {
	Addr     string `yaml:"addr"`
	Username string `yaml:"username"`
	Password string `yaml:"password"`
	DB       int    `yaml:"db"`
	// CheckpointKey is a template where {sink} is the sink's name.
	CheckpointKey string `yaml:"checkpoint_key"`
}

// Action is one Redis write for an event.
type Action struct {
	Op  string `yaml:"op"`
	Key string `yaml:"key"`
	// TTL, when set, makes the key expire that long after the write.
	TTL time.Duration `yaml:"ttl"`
	// Project is a jq expression run on the envelope object
	// {id, streamId, category, type, version, time, position, data, metadata};
	// its output replaces the data for set, hset, merge and append.
	Project string `yaml:"project"`
	// Field is the hash field incr counts in (a template).
	Field string `yaml:"field"`
	// Value is what append pushes (a template); the data JSON when empty.
	Value string `yaml:"value"`
}

// DefaultConfig is the configuration before the file and the environment.
func DefaultConfig() Config {
	return Config{
		Config:       sink.DefaultConfig("cache"),
		Redis:        RedisConfig{Addr: "127.0.0.1:6379", CheckpointKey: DefaultCheckpointKey},
		UnknownTypes: UnknownIgnore,
	}
}

// Validate reports every problem at once, each naming its YAML key.
func (c *Config) Validate() error {
	var p config.Problems
	c.Config.Validate(&p)
	if _, _, err := net.SplitHostPort(c.Redis.Addr); err != nil || c.Redis.Addr == "" {
		p.Addf("redis.addr", "must be host:port, e.g. 127.0.0.1:6379 (got %q)", c.Redis.Addr)
	}
	if c.Redis.DB < 0 {
		p.Addf("redis.db", "must not be negative, got %d", c.Redis.DB)
	}
	if c.Redis.CheckpointKey == "" {
		p.Addf("redis.checkpoint_key", "is required, e.g. %s", DefaultCheckpointKey)
	} else if _, err := mapping.CompileTemplate(c.Redis.CheckpointKey, c.Name, false); err != nil {
		p.Addf("redis.checkpoint_key", "%v", err)
	}
	if c.UnknownTypes != UnknownIgnore && c.UnknownTypes != UnknownError {
		p.Addf("unknown_types", "must be %q or %q, got %q", UnknownIgnore, UnknownError, c.UnknownTypes)
	}
	compileMappings(c.Name, c.Mappings, &p)
	return p.Err()
}

// compileMappings turns the mappings into actions ready to run, reporting
// every problem to p. The result is only usable when p stayed empty.
func compileMappings(sinkName string, m map[string][]Action, p *config.Problems) map[string][]action {
	if len(m) == 0 {
		p.Addf("mappings", "needs at least one event type, e.g. OrderPlaced: [{op: set, key: \"order:{streamId}\"}]")
		return nil
	}
	types := make([]string, 0, len(m))
	for t := range m {
		types = append(types, t)
	}
	slices.Sort(types)
	out := make(map[string][]action, len(m))
	for _, typ := range types {
		if typ == "" || strings.ContainsAny(typ, "\r\n") {
			p.Addf("mappings."+typ, "an event type must be one non-empty line")
		}
		list := m[typ]
		if len(list) == 0 {
			p.Addf("mappings."+typ, "needs at least one action, e.g. [{op: del, key: \"order:{streamId}\"}]")
			continue
		}
		acts := make([]action, 0, len(list))
		for i, a := range list {
			acts = append(acts, compileAction(sinkName, fmt.Sprintf("mappings.%s[%d]", typ, i), a, p))
		}
		out[typ] = acts
	}
	return out
}

func compileAction(sinkName, key string, a Action, p *config.Problems) action {
	act := action{where: key}
	if !slices.Contains(ops, a.Op) {
		p.Addf(key+".op", "must be one of %s", strings.Join(ops, ", "))
	}
	act.op = a.Op

	tmpl := func(sub, s string) *mapping.Template {
		t, err := mapping.CompileTemplate(s, sinkName, true)
		if err != nil {
			p.Addf(key+"."+sub, "%v", err)
		}
		return t
	}
	if a.Key == "" {
		p.Addf(key+".key", "is required: a key template such as \"order:{streamId}\"")
	} else {
		act.key = tmpl("key", a.Key)
	}

	switch {
	case a.TTL == 0:
	case a.TTL < time.Millisecond:
		p.Addf(key+".ttl", "must be at least 1ms, got %s", a.TTL)
	case a.Op == OpDel:
		p.Addf(key+".ttl", "is not allowed with op del")
	default:
		act.ttl = a.TTL
	}

	if a.Project != "" {
		if a.Op == OpDel || a.Op == OpIncr {
			p.Addf(key+".project", "is not allowed with op %s: it writes no data", a.Op)
		} else if code, err := mapping.CompileProjection(a.Project); err != nil {
			p.Addf(key+".project", "%v", err)
		} else {
			act.project = code
		}
	}

	switch {
	case a.Op == OpIncr && a.Field == "":
		p.Addf(key+".field", "is required with op incr: the hash field to count in, e.g. events")
	case a.Op == OpIncr:
		act.field = tmpl("field", a.Field)
	case a.Field != "":
		p.Addf(key+".field", "is only allowed with op incr")
	}

	if a.Value != "" {
		switch {
		case a.Op != OpAppend:
			p.Addf(key+".value", "is only allowed with op append")
		case a.Project != "":
			p.Addf(key+".value", "and project exclude each other: append pushes either the value template or the projection's output")
		default:
			act.value = tmpl("value", a.Value)
		}
	}
	return act
}
