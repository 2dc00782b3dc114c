package search

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"maps"
	"net/http"
	"strings"
	"time"

	"github.com/elastic/go-elasticsearch/v8"
	"github.com/elastic/go-elasticsearch/v8/esapi"

	"github.com/jetsync/jetsync/pkg/mapping"
	"github.com/jetsync/jetsync/pkg/sink"
)

// setupIndices makes every declared index writable: a plain name gets a
// concrete index <name>-<time> with the configured settings and mappings
// behind the alias <name> (unless the alias, or an index of that name,
// exists); a templated name gets an index template, so the indices it
// renders are created with them on first write.
func (w *Writer) setupIndices(ctx context.Context, es *elasticsearch.Client) error {
	for _, name := range sortedKeys(w.indices) {
		ic := w.indices[name]
		t, err := mapping.CompileTemplate(name, w.name, true)
		if err != nil {
			return sink.Permanent(fmt.Errorf("%w: indices.%s: %v", ErrIndexSetup, name, err))
		}
		switch {
		case w.targets != nil:
			continue // a rebuild's writer: Rebuild made its indices
		case !t.Constant():
			err = w.putTemplate(ctx, es, name, indexPattern(name, w.name), ic)
		default:
			err = w.ensureAlias(ctx, es, name, ic)
		}
		if err != nil {
			return err
		}
	}
	return nil
}

// ensureAlias creates <alias>-<time> behind alias unless the alias exists.
func (w *Writer) ensureAlias(ctx context.Context, es *elasticsearch.Client, alias string, ic IndexConfig) error {
	for attempt := 0; ; attempt++ {
		exists, err := aliasExists(ctx, es, alias, w.es.RequestTimeout)
		if err != nil || exists {
			return err
		}
		isIndex, err := indexExists(ctx, es, alias, w.es.RequestTimeout)
		if err != nil {
			return err
		}
		if isIndex {
			w.log.Warn("writing to a concrete index, not an alias: it works, but sink-es rebuild needs an alias", "index", alias)
			return nil
		}
		concrete := NewIndexName(alias, time.Now())
		err = createIndex(ctx, es, w.es.RequestTimeout, concrete, indexBody(ic, w.es.PositionField, alias), "indices."+alias)
		if errors.Is(err, errExists) && attempt < 3 {
			continue // another instance was faster, or the same millisecond: look again
		}
		if err == nil {
			w.log.Info("created index behind alias", "alias", alias, "index", concrete)
		}
		return err
	}
}

// NewIndexName is the concrete index made for alias at time t.
func NewIndexName(alias string, t time.Time) string {
	t = t.UTC()
	return fmt.Sprintf("%s-%s-%03d", alias, t.Format("20060102-150405"), t.Nanosecond()/1e6)
}

// indexBody is the create-index body: the configured settings and mappings
// (the position field mapped as a long) and, when alias is set, the alias
// with this index as its write index.
func indexBody(ic IndexConfig, pf, alias string) map[string]any {
	body := map[string]any{}
	if len(ic.Settings) > 0 {
		body["settings"] = ic.Settings
	}
	body["mappings"] = withPositionMapping(ic.Mappings, pf)
	if alias != "" {
		body["aliases"] = map[string]any{alias: map[string]any{"is_write_index": true}}
	}
	return body
}

// withPositionMapping returns mappings with the position field mapped as a
// long (unless mapped already), without changing the configured maps.
func withPositionMapping(m map[string]any, pf string) map[string]any {
	out := maps.Clone(m)
	if out == nil {
		out = map[string]any{}
	}
	props, _ := out["properties"].(map[string]any)
	if _, ok := props[pf]; ok {
		return out
	}
	props = maps.Clone(props)
	if props == nil {
		props = map[string]any{}
	}
	props[pf] = map[string]any{"type": "long"}
	out["properties"] = props
	return out
}

// putTemplate creates or replaces the index template of a templated name.
func (w *Writer) putTemplate(ctx context.Context, es *elasticsearch.Client, name, pattern string, ic IndexConfig) error {
	tmpl := map[string]any{"mappings": withPositionMapping(ic.Mappings, w.es.PositionField)}
	if len(ic.Settings) > 0 {
		tmpl["settings"] = ic.Settings
	}
	body, err := json.Marshal(map[string]any{"index_patterns": []string{pattern}, "priority": 200, "template": tmpl,
		"_meta": map[string]any{"managed_by": "jetsync sink-es " + w.name, "declared_as": name}})
	if err != nil {
		return sink.Permanent(fmt.Errorf("%w: indices.%s: %v", ErrIndexSetup, name, err))
	}
	tname := "jetsync-" + w.name + "-" + strings.NewReplacer("*", "x", "{", "", "}", "").Replace(strings.ToLower(name))
	ctx, cancel := context.WithTimeout(ctx, w.es.RequestTimeout)
	defer cancel()
	res, err := esapi.IndicesPutIndexTemplateRequest{Name: tname, Body: bytes.NewReader(body)}.Do(ctx, es)
	if err != nil {
		return fmt.Errorf("index template %s: %w", tname, err)
	}
	defer res.Body.Close()
	if res.IsError() {
		return setupError("indices."+name, "index template "+tname, res)
	}
	w.log.Info("index template in place", "template", tname, "pattern", pattern)
	return nil
}

var errExists = errors.New("index exists")

// createIndex creates index with body; key names the config entry in errors.
func createIndex(ctx context.Context, es *elasticsearch.Client, timeout time.Duration, index string, body map[string]any, key string) error {
	raw, err := json.Marshal(body)
	if err != nil {
		return sink.Permanent(fmt.Errorf("%w: %s: %v", ErrIndexSetup, key, err))
	}
	ctx, cancel := context.WithTimeout(ctx, timeout)
	defer cancel()
	res, err := esapi.IndicesCreateRequest{Index: index, Body: bytes.NewReader(raw)}.Do(ctx, es)
	if err != nil {
		return fmt.Errorf("creating index %s: %w", index, err)
	}
	defer res.Body.Close()
	if res.IsError() {
		return setupError(key, "creating index "+index, res)
	}
	return nil
}

// setupError explains a refused index setup: a 400 names the config key
// (permanent), anything else is retried.
func setupError(key, what string, res *esapi.Response) error {
	body, _ := io.ReadAll(io.LimitReader(res.Body, 8<<10))
	var e struct {
		Error *esError `json:"error"`
	}
	reason := string(body)
	if json.Unmarshal(body, &e) == nil && e.Error != nil {
		reason = e.Error.String()
		if e.Error.Type == "resource_already_exists_exception" {
			return errExists
		}
	}
	switch res.StatusCode {
	case http.StatusBadRequest:
		return sink.Permanent(fmt.Errorf("%w: %s: Elasticsearch refused its settings or mappings (%s): %s", ErrIndexSetup, key, what, reason))
	case http.StatusUnauthorized, http.StatusForbidden:
		return sink.Permanent(fmt.Errorf("%w: %s: %s", ErrAuth, what, reason))
	}
	return fmt.Errorf("%s: %s: %s", what, res.Status(), reason)
}

// aliasExists reports whether alias names an alias.
func aliasExists(ctx context.Context, es *elasticsearch.Client, alias string, timeout time.Duration) (bool, error) {
	idx, err := aliasIndices(ctx, es, alias, timeout)
	return len(idx) > 0, err
}

// aliasIndices lists the indices behind alias (none when it is no alias).
func aliasIndices(ctx context.Context, es *elasticsearch.Client, alias string, timeout time.Duration) ([]string, error) {
	ctx, cancel := context.WithTimeout(ctx, timeout)
	defer cancel()
	res, err := esapi.IndicesGetAliasRequest{Name: []string{alias}}.Do(ctx, es)
	if err != nil {
		return nil, fmt.Errorf("looking up alias %s: %w", alias, err)
	}
	defer res.Body.Close()
	if res.StatusCode == http.StatusNotFound {
		_, _ = io.Copy(io.Discard, res.Body)
		return nil, nil
	}
	if res.IsError() {
		return nil, requestError("alias "+alias, res)
	}
	var out map[string]json.RawMessage
	if err := json.NewDecoder(res.Body).Decode(&out); err != nil {
		return nil, fmt.Errorf("alias %s: %w", alias, err)
	}
	return sortedKeys(out), nil
}

// indexExists reports whether name is an index (or an alias).
func indexExists(ctx context.Context, es *elasticsearch.Client, name string, timeout time.Duration) (bool, error) {
	ctx, cancel := context.WithTimeout(ctx, timeout)
	defer cancel()
	res, err := esapi.IndicesExistsRequest{Index: []string{name}}.Do(ctx, es)
	if err != nil {
		return false, fmt.Errorf("looking up index %s: %w", name, err)
	}
	defer res.Body.Close()
	_, _ = io.Copy(io.Discard, res.Body)
	switch res.StatusCode {
	case http.StatusOK:
		return true, nil
	case http.StatusNotFound:
		return false, nil
	}
	return false, fmt.Errorf("looking up index %s: %s", name, res.Status())
}
