package deploy

import (
	"bytes"
	"encoding/json"
	"errors"
	"go/ast"
	goparser "go/parser"
	"go/token"
	"io"
	"net"
	"net/url"
	"os"
	"path"
	"path/filepath"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/compose-spec/compose-go/v2/types"
	"github.com/prometheus/common/model"
	"github.com/prometheus/prometheus/promql/parser"
	"go.yaml.in/yaml/v3"
)

// The monitoring files, relative to the repository root.
const (
	prometheusConfigFile = "deploy/prometheus/prometheus.yml"
	grafanaDatasources   = "deploy/grafana/provisioning/datasources"
	grafanaProviders     = "deploy/grafana/provisioning/dashboards"
	grafanaDashboards    = "deploy/grafana/dashboards"

	// Where the images look, unless their compose command says otherwise.
	prometheusDefaultConfig = "/etc/prometheus/prometheus.yml"
	prometheusDefaultListen = ":9090"
	grafanaProvisioning     = "/etc/grafana/provisioning"
	grafanaDefaultPort      = "3000"
)

// metricSources are the Go files that define every metric jetsync exports:
// the sinks' (pkg/metrics, served by pkg/sinkd) and the bridge's.
var metricSources = []string{"pkg/metrics/metrics.go", "services/bridge/metrics.go"}

// prometheusSeries are the series Prometheus records itself for each target.
var prometheusSeries = []string{"up", "scrape_duration_seconds", "scrape_samples_scraped", "scrape_samples_post_metric_relabeling", "scrape_series_added"}

// knownMetrics are the series names a dashboard may query.
type knownMetrics struct {
	names    map[string]bool
	prefixes []string // go_, process_: the runtime collectors' families
}

func (k knownMetrics) has(name string) bool {
	if k.names[name] {
		return true
	}
	for _, p := range k.prefixes {
		if strings.HasPrefix(name, p) {
			return true
		}
	}
	return false
}

// loadKnownMetrics reads the metric names out of metricSources.
func loadKnownMetrics(t *testing.T) knownMetrics {
	t.Helper()
	root := repoRoot(t)
	k := knownMetrics{names: map[string]bool{}}
	for _, s := range prometheusSeries {
		k.names[s] = true
	}
	for _, src := range metricSources {
		names, prefixes := metricsDefinedIn(t, filepath.Join(root, filepath.FromSlash(src)))
		for _, n := range names {
			k.names[n] = true
		}
		k.prefixes = append(k.prefixes, prefixes...)
	}
	// The extraction must find what the files are known to define, or a
	// change of their style would silently leave the set empty.
	for _, n := range []string{
		"jetsync_sink_events_applied_total", "jetsync_sink_lag_events", "jetsync_sink_errors_total",
		"jetsync_sink_flush_seconds_bucket", "jetsync_bridge_appends_total", "jetsync_bridge_append_seconds_bucket",
	} {
		if !k.names[n] {
			t.Fatalf("%v define no metric %s: the test's reading of those files (metricsDefinedIn) needs updating", metricSources, n)
		}
	}
	return k
}

// metricsDefinedIn returns the series names a metrics file defines, in the
// style of pkg/metrics: the file sets Namespace and Subsystem once, and names
// each metric either with Name: "…" in a prometheus.*Opts literal, or as the
// string first argument of a local helper closure (opts("applied_total", …),
// hist("batch_events", …)). A histogram (HistogramOpts, or a helper that
// returns prometheus.Histogram) has _bucket, _sum and _count series. A Go or
// process collector makes go_* or process_* names known.
func metricsDefinedIn(t *testing.T, file string) (names, prefixes []string) {
	t.Helper()
	f, err := goparser.ParseFile(token.NewFileSet(), file, nil, goparser.SkipObjectResolution)
	if err != nil {
		t.Fatal(err)
	}
	type metric struct {
		name string
		hist bool
	}
	var (
		namespaces, subsystems []string
		defs                   []metric
		helpers                = map[string]bool{} // closure name -> returns a histogram
	)
	addOnce := func(list *[]string, s string) {
		if !slices.Contains(*list, s) {
			*list = append(*list, s)
		}
	}
	ast.Inspect(f, func(n ast.Node) bool {
		switch n := n.(type) {
		case *ast.AssignStmt:
			for i, rhs := range n.Rhs {
				fl, ok := rhs.(*ast.FuncLit)
				if !ok || i >= len(n.Lhs) {
					continue
				}
				if id, ok := n.Lhs[i].(*ast.Ident); ok {
					helpers[id.Name] = fl.Type.Results != nil && len(fl.Type.Results.List) > 0 &&
						isSelector(fl.Type.Results.List[0].Type, "prometheus", "Histogram")
				}
			}
		case *ast.CompositeLit:
			hist := isSelector(n.Type, "prometheus", "HistogramOpts")
			for _, el := range n.Elts {
				kv, ok := el.(*ast.KeyValueExpr)
				if !ok {
					continue
				}
				key, _ := kv.Key.(*ast.Ident)
				s, ok := stringLit(kv.Value)
				if key == nil || !ok {
					continue
				}
				switch key.Name {
				case "Namespace":
					addOnce(&namespaces, s)
				case "Subsystem":
					addOnce(&subsystems, s)
				case "Name":
					defs = append(defs, metric{s, hist})
				}
			}
		case *ast.CallExpr:
			if sel, ok := n.Fun.(*ast.SelectorExpr); ok {
				switch sel.Sel.Name {
				case "NewGoCollector":
					addOnce(&prefixes, "go_")
				case "NewProcessCollector":
					addOnce(&prefixes, "process_")
				}
			}
		}
		return true
	})
	// Helper calls, once every helper is known.
	ast.Inspect(f, func(n ast.Node) bool {
		call, ok := n.(*ast.CallExpr)
		if !ok || len(call.Args) == 0 {
			return true
		}
		id, ok := call.Fun.(*ast.Ident)
		if !ok {
			return true
		}
		hist, isHelper := helpers[id.Name]
		if s, ok := stringLit(call.Args[0]); ok && isHelper {
			defs = append(defs, metric{s, hist})
		}
		return true
	})
	if len(namespaces) != 1 || len(subsystems) != 1 {
		t.Fatalf("%s: want one Namespace and one Subsystem, found %q and %q", file, namespaces, subsystems)
	}
	prefix := namespaces[0] + "_" + subsystems[0] + "_"
	for _, d := range defs {
		if d.hist {
			names = append(names, prefix+d.name+"_bucket", prefix+d.name+"_sum", prefix+d.name+"_count")
		} else {
			names = append(names, prefix+d.name)
		}
	}
	return names, prefixes
}

func isSelector(e ast.Expr, pkg, name string) bool {
	sel, ok := e.(*ast.SelectorExpr)
	if !ok || sel.Sel.Name != name {
		return false
	}
	id, ok := sel.X.(*ast.Ident)
	return ok && id.Name == pkg
}

func stringLit(e ast.Expr) (string, bool) {
	lit, ok := e.(*ast.BasicLit)
	if !ok || lit.Kind != token.STRING {
		return "", false
	}
	s, err := strconv.Unquote(lit.Value)
	return s, err == nil
}

// Grafana ----------------------------------------------------------------

type grafanaDashboard struct {
	UID           string         `json:"uid"`
	Title         string         `json:"title"`
	SchemaVersion int            `json:"schemaVersion"`
	Panels        []grafanaPanel `json:"panels"`
	Templating    struct {
		List []grafanaVariable `json:"list"`
	} `json:"templating"`
}

type grafanaPanel struct {
	ID         int             `json:"id"`
	Type       string          `json:"type"`
	Title      string          `json:"title"`
	Datasource json.RawMessage `json:"datasource"`
	GridPos    *struct {
		X, Y, W, H int
	} `json:"gridPos"`
	Repeat  string          `json:"repeat"`
	Targets []grafanaTarget `json:"targets"`
	Panels  []grafanaPanel  `json:"panels"` // a collapsed row's
}

type grafanaTarget struct {
	Datasource json.RawMessage `json:"datasource"`
	Expr       string          `json:"expr"`
	RefID      string          `json:"refId"`
}

type grafanaVariable struct {
	Name       string          `json:"name"`
	Type       string          `json:"type"`
	Datasource json.RawMessage `json:"datasource"`
	Query      json.RawMessage `json:"query"`
	Multi      bool            `json:"multi"`
	IncludeAll bool            `json:"includeAll"`
}

// datasourceUID reads a panel's, target's or variable's datasource: an
// object with a uid (a bare name is the pre-8.3 form Grafana no longer
// resolves reliably). Empty raw means "inherited".
func datasourceUID(raw json.RawMessage) (string, error) {
	if len(raw) == 0 || string(raw) == "null" {
		return "", nil
	}
	var ref struct {
		Type string `json:"type"`
		UID  string `json:"uid"`
	}
	if err := json.Unmarshal(raw, &ref); err != nil || ref.UID == "" {
		return "", errors.New("datasource " + string(raw) + " is not {\"type\": …, \"uid\": …}")
	}
	return ref.UID, nil
}

// provisionedDatasource reads deploy/grafana/provisioning/datasources: it
// must provision exactly one Prometheus datasource.
type provisionedDatasource struct {
	Name     string         `yaml:"name"`
	Type     string         `yaml:"type"`
	UID      string         `yaml:"uid"`
	URL      string         `yaml:"url"`
	Access   string         `yaml:"access"`
	JSONData map[string]any `yaml:"jsonData"`
}

func prometheusDatasource(t *testing.T) provisionedDatasource {
	t.Helper()
	files := yamlFiles(t, grafanaDatasources)
	var found []provisionedDatasource
	for _, f := range files {
		var doc struct {
			APIVersion  int                     `yaml:"apiVersion"`
			Datasources []provisionedDatasource `yaml:"datasources"`
		}
		decodeYAML(t, f, &doc, false)
		if doc.APIVersion != 1 {
			t.Errorf("%s: apiVersion %d, want 1", f, doc.APIVersion)
		}
		for _, ds := range doc.Datasources {
			if ds.Type == "prometheus" {
				found = append(found, ds)
			}
		}
	}
	if len(found) != 1 {
		t.Fatalf("%s: want exactly one prometheus datasource, found %d", grafanaDatasources, len(found))
	}
	if found[0].UID == "" {
		t.Fatalf("%s: the prometheus datasource has no uid; dashboards refer to it by uid", grafanaDatasources)
	}
	return found[0]
}

// yamlFiles lists the .yml and .yaml files of a repository directory.
func yamlFiles(t *testing.T, dir string) []string {
	t.Helper()
	var files []string
	for _, pat := range []string{"*.yml", "*.yaml"} {
		m, err := filepath.Glob(filepath.Join(repoRoot(t), filepath.FromSlash(dir), pat))
		if err != nil {
			t.Fatal(err)
		}
		files = append(files, m...)
	}
	if len(files) == 0 {
		t.Fatalf("no YAML files in %s", dir)
	}
	return files
}

// decodeYAML decodes one YAML document into v; strict rejects unknown keys.
func decodeYAML(t *testing.T, file string, v any, strict bool) {
	t.Helper()
	raw, err := os.ReadFile(file)
	if err != nil {
		t.Fatal(err)
	}
	dec := yaml.NewDecoder(bytes.NewReader(raw))
	dec.KnownFields(strict)
	if err := dec.Decode(v); err != nil {
		t.Fatalf("%s: %v", file, err)
	}
	var extra any
	if err := dec.Decode(&extra); !errors.Is(err, io.EOF) {
		t.Fatalf("%s: want exactly one YAML document (%v)", file, err)
	}
}

var (
	// Grafana's interval macros; a duration stands in for them when parsing.
	grafanaInterval = regexp.MustCompile(`\$\{?__(rate_interval|interval|range)\}?`)
	// $name, ${name}, ${name:format}, [[name]].
	grafanaVarRef = regexp.MustCompile(`\$\{([A-Za-z0-9_]+)(?::[^}]*)?\}|\$([A-Za-z0-9_]+)|\[\[([A-Za-z0-9_]+)(?::[^\]]*)?\]\]`)
	// As Grafana's Prometheus datasource reads a label_values variable query.
	labelValuesQuery = regexp.MustCompile(`^label_values\((?:(.+),\s*)?([a-zA-Z_][a-zA-Z0-9_]*)\)\s*$`)
)

// checkPromQL parses expr as Prometheus does and fails for every metric it
// selects that known does not hold.
func checkPromQL(t *testing.T, where, expr string, known knownMetrics) {
	t.Helper()
	e, err := parser.ParseExpr(grafanaInterval.ReplaceAllString(expr, "1m"))
	if err != nil {
		t.Errorf("%s: %q is not valid PromQL: %v", where, expr, err)
		return
	}
	parser.Inspect(e, func(n parser.Node, _ []parser.Node) error {
		vs, ok := n.(*parser.VectorSelector)
		if !ok {
			return nil
		}
		name := vs.Name
		for _, m := range vs.LabelMatchers {
			if name == "" && m.Name == model.MetricNameLabel && m.Type.String() == "=" {
				name = m.Value
			}
		}
		switch {
		case name == "":
			t.Errorf("%s: %q selects series without naming a metric", where, vs.String())
		case !known.has(name):
			t.Errorf("%s: %q queries %s, which no service exports (defined in %v)", where, expr, name, metricSources)
		}
		return nil
	})
}

func TestGrafanaDashboards(t *testing.T) {
	root := repoRoot(t)
	known := loadKnownMetrics(t)
	ds := prometheusDatasource(t)
	files, err := filepath.Glob(filepath.Join(root, filepath.FromSlash(grafanaDashboards), "*.json"))
	if err != nil {
		t.Fatal(err)
	}
	if !slices.Contains(files, filepath.Join(root, filepath.FromSlash(grafanaDashboards), "jetsync.json")) {
		t.Fatalf("%s/jetsync.json is missing", grafanaDashboards)
	}
	uids := map[string]string{}
	for _, file := range files {
		t.Run(filepath.Base(file), func(t *testing.T) {
			d := readDashboard(t, file)
			if prev, dup := uids[d.UID]; dup {
				t.Errorf("uid %q is also the uid of %s", d.UID, prev)
			}
			uids[d.UID] = filepath.Base(file)
			checkDashboard(t, d, ds.UID, known)
		})
	}
}

func readDashboard(t *testing.T, file string) grafanaDashboard {
	t.Helper()
	raw, err := os.ReadFile(file)
	if err != nil {
		t.Fatal(err)
	}
	dec := json.NewDecoder(bytes.NewReader(raw))
	var d grafanaDashboard
	if err := dec.Decode(&d); err != nil {
		t.Fatalf("not a dashboard JSON: %v", err)
	}
	if dec.More() {
		t.Fatal("data after the dashboard's JSON object")
	}
	return d
}

func checkDashboard(t *testing.T, d grafanaDashboard, dsUID string, known knownMetrics) {
	if d.UID == "" || d.Title == "" {
		t.Errorf("uid %q, title %q: both are needed (links and provisioning use the uid)", d.UID, d.Title)
	}
	// Grafana 11 migrates anything older; a newer one would not load there.
	if d.SchemaVersion < 36 || d.SchemaVersion > 41 {
		t.Errorf("schemaVersion %d, want 36..41 (Grafana 11)", d.SchemaVersion)
	}

	vars := map[string]grafanaVariable{}
	for _, v := range d.Templating.List {
		vars[v.Name] = v
		if v.Type != "query" {
			continue
		}
		where := "variable " + v.Name
		if uid, err := datasourceUID(v.Datasource); err != nil || uid != dsUID {
			t.Errorf("%s: datasource uid %q (%v), want the provisioned %q", where, uid, err, dsUID)
		}
		q := variableQuery(t, where, v.Query)
		m := labelValuesQuery.FindStringSubmatch(q)
		if m == nil {
			t.Errorf("%s: query %q is not label_values([selector,] label)", where, q)
			continue
		}
		if m[1] == "" {
			t.Errorf("%s: %q reads the label from every series; name the metric: label_values(metric, %s)", where, q, m[2])
			continue
		}
		checkPromQL(t, where, m[1], known)
	}
	checkRefs := func(where, s string) {
		for _, m := range grafanaVarRef.FindAllStringSubmatch(s, -1) {
			name := m[1] + m[2] + m[3]
			if _, ok := vars[name]; !ok && !strings.HasPrefix(name, "__") {
				t.Errorf("%s: %q uses $%s, which is not a variable of the dashboard", where, s, name)
			}
		}
	}

	ids := map[int]string{}
	queries := 0
	var walk func(panels []grafanaPanel)
	walk = func(panels []grafanaPanel) {
		for _, p := range panels {
			where := "panel " + strconv.Quote(p.Title)
			if p.ID <= 0 {
				t.Errorf("%s: id %d", where, p.ID)
			} else if prev, dup := ids[p.ID]; dup {
				t.Errorf("%s: id %d is also the id of %s", where, p.ID, prev)
			}
			ids[p.ID] = where
			if g := p.GridPos; g == nil || g.W <= 0 || g.H <= 0 || g.X < 0 || g.X+g.W > 24 {
				t.Errorf("%s: gridPos %+v does not fit the 24-column grid", where, p.GridPos)
			}
			checkRefs(where+" title", p.Title)
			if p.Repeat != "" {
				if v, ok := vars[p.Repeat]; !ok || !(v.Multi || v.IncludeAll) {
					t.Errorf("%s: repeats over %q, which is not a multi-value variable", where, p.Repeat)
				}
			}
			if len(p.Targets) > 0 {
				if uid, err := datasourceUID(p.Datasource); err != nil || uid != dsUID {
					t.Errorf("%s: datasource uid %q (%v), want the provisioned %q", where, uid, err, dsUID)
				}
			}
			refIDs := map[string]bool{}
			for _, tg := range p.Targets {
				twhere := where + " query " + tg.RefID
				if tg.RefID == "" || refIDs[tg.RefID] {
					t.Errorf("%s: refId empty or repeated", twhere)
				}
				refIDs[tg.RefID] = true
				if uid, err := datasourceUID(tg.Datasource); err != nil || (uid != "" && uid != dsUID) {
					t.Errorf("%s: datasource uid %q (%v), want the provisioned %q", twhere, uid, err, dsUID)
				}
				if strings.TrimSpace(tg.Expr) == "" {
					t.Errorf("%s: no expr", twhere)
					continue
				}
				queries++
				checkRefs(twhere, tg.Expr)
				checkPromQL(t, twhere, tg.Expr, known)
			}
			walk(p.Panels)
		}
	}
	walk(d.Panels)
	if queries == 0 {
		t.Error("the dashboard queries nothing")
	}
}

// variableQuery is a query variable's query: a string, or the object form
// of Grafana 10+ with the same string in "query".
func variableQuery(t *testing.T, where string, raw json.RawMessage) string {
	t.Helper()
	var s string
	if json.Unmarshal(raw, &s) == nil {
		return s
	}
	var obj struct {
		Query string `json:"query"`
	}
	if err := json.Unmarshal(raw, &obj); err != nil || obj.Query == "" {
		t.Errorf("%s: query %s is neither a string nor {\"query\": …}", where, raw)
	}
	return obj.Query
}

// The jetsync dashboard shows every metric the services export; a metric
// without a panel is reported, not failed.
func TestGrafanaDashboardCoversMetrics(t *testing.T) {
	root := repoRoot(t)
	raw, err := os.ReadFile(filepath.Join(root, filepath.FromSlash(grafanaDashboards), "jetsync.json"))
	if err != nil {
		t.Fatal(err)
	}
	for _, src := range metricSources {
		names, _ := metricsDefinedIn(t, filepath.Join(root, filepath.FromSlash(src)))
		for _, n := range names {
			base := strings.TrimSuffix(strings.TrimSuffix(strings.TrimSuffix(n, "_bucket"), "_sum"), "_count")
			if !bytes.Contains(raw, []byte(base)) {
				t.Logf("%s (%s) is on no panel of jetsync.json", n, src)
			}
		}
	}
}

func TestGrafanaProvisioning(t *testing.T) {
	root := repoRoot(t)
	p := loadCompose(t)
	g := service(t, p, "grafana")

	// Grafana reads the provisioning directories from the repository.
	for _, dir := range []string{grafanaDatasources, grafanaProviders} {
		target := path.Join(grafanaProvisioning, path.Base(dir))
		src, ok := hostPath(g, target)
		if want := filepath.Join(root, filepath.FromSlash(dir)); !ok || src != want {
			t.Errorf("grafana: %s must be mounted from %s, is %q", target, want, src)
		}
	}

	// The datasource is the compose prometheus service, on the port it
	// listens on, and knows the scrape interval.
	ds := prometheusDatasource(t)
	checkAddressHost(t, p, grafanaDatasources+" url", ds.URL)
	if u, err := url.Parse(ds.URL); err != nil || u.Scheme != "http" {
		t.Errorf("%s: url %q, want http://prometheus:<port>", grafanaDatasources, ds.URL)
	} else if _, port, _ := net.SplitHostPort(prometheusListen(t, p)); u.Port() != port {
		t.Errorf("%s: url %q, but prometheus listens on port %s", grafanaDatasources, ds.URL, port)
	}
	if ti, ok := ds.JSONData["timeInterval"]; ok {
		if want := scrapeInterval(t, readPrometheusConfig(t), nil); ti != want.String() {
			t.Errorf("%s: jsonData.timeInterval %v, want the scrape interval %s", grafanaDatasources, ti, want)
		}
	}

	// Each file provider's path is a mount of the dashboards directory.
	providers := 0
	for _, f := range yamlFiles(t, grafanaProviders) {
		var doc struct {
			APIVersion int `yaml:"apiVersion"`
			Providers  []struct {
				Name    string `yaml:"name"`
				Type    string `yaml:"type"`
				Options struct {
					Path string `yaml:"path"`
				} `yaml:"options"`
			} `yaml:"providers"`
		}
		decodeYAML(t, f, &doc, false)
		if doc.APIVersion != 1 {
			t.Errorf("%s: apiVersion %d, want 1", f, doc.APIVersion)
		}
		for _, pr := range doc.Providers {
			if pr.Type != "" && pr.Type != "file" {
				continue
			}
			providers++
			src, ok := hostPath(g, pr.Options.Path)
			if want := filepath.Join(root, filepath.FromSlash(grafanaDashboards)); !ok || src != want {
				t.Errorf("%s: provider %q loads %s, which grafana has mounted from %q, want %s", filepath.Base(f), pr.Name, pr.Options.Path, src, want)
			}
		}
	}
	if providers == 0 {
		t.Errorf("%s: no file provider, so no dashboard is loaded", grafanaProviders)
	}

	// Local use: anonymous access, the jetsync dashboard at home.
	if v := g.Environment["GF_AUTH_ANONYMOUS_ENABLED"]; v == nil || *v != "true" {
		t.Errorf("grafana: GF_AUTH_ANONYMOUS_ENABLED = %v, want \"true\"", deref(v))
	}
	if v := g.Environment["GF_AUTH_ANONYMOUS_ORG_ROLE"]; v == nil || *v == "" {
		t.Error("grafana: GF_AUTH_ANONYMOUS_ORG_ROLE is not set")
	}
	if v := g.Environment["GF_DASHBOARDS_DEFAULT_HOME_DASHBOARD_PATH"]; v != nil {
		src, ok := hostPath(g, *v)
		if fi, err := os.Stat(src); !ok || err != nil || !fi.Mode().IsRegular() {
			t.Errorf("grafana: the home dashboard %s is no file of the repository (mounted from %q)", *v, src)
		}
	}
	port := grafanaDefaultPort
	if v := g.Environment["GF_SERVER_HTTP_PORT"]; v != nil {
		port = *v
	}
	if !slices.ContainsFunc(g.Ports, func(pc types.ServicePortConfig) bool { return strconv.Itoa(int(pc.Target)) == port }) {
		t.Errorf("grafana: publishes %+v, not its port %s", g.Ports, port)
	}
}

// hostPath maps a path inside a service's container to the host path bind
// mounted there (the innermost mount holding it).
func hostPath(s types.ServiceConfig, target string) (string, bool) {
	best, src := "", ""
	for _, v := range s.Volumes {
		if v.Type != types.VolumeTypeBind {
			continue
		}
		if (target == v.Target || strings.HasPrefix(target, v.Target+"/")) && len(v.Target) > len(best) {
			best = v.Target
			src = filepath.Join(v.Source, filepath.FromSlash(strings.TrimPrefix(target, v.Target)))
		}
	}
	return src, best != ""
}

// Prometheus ---------------------------------------------------------------

type prometheusConfig struct {
	Global struct {
		ScrapeInterval     string `yaml:"scrape_interval"`
		ScrapeTimeout      string `yaml:"scrape_timeout"`
		EvaluationInterval string `yaml:"evaluation_interval"`
	} `yaml:"global"`
	ScrapeConfigs []scrapeConfig `yaml:"scrape_configs"`
}

type scrapeConfig struct {
	JobName        string `yaml:"job_name"`
	ScrapeInterval string `yaml:"scrape_interval"`
	ScrapeTimeout  string `yaml:"scrape_timeout"`
	MetricsPath    string `yaml:"metrics_path"`
	Scheme         string `yaml:"scheme"`
	StaticConfigs  []struct {
		Targets []string          `yaml:"targets"`
		Labels  map[string]string `yaml:"labels"`
	} `yaml:"static_configs"`
}

// readPrometheusConfig decodes prometheus.yml, rejecting keys this test does
// not know (a misspelt key is otherwise ignored until Prometheus refuses to
// start); extend the structs above when the file needs more.
func readPrometheusConfig(t *testing.T) prometheusConfig {
	t.Helper()
	var c prometheusConfig
	decodeYAML(t, filepath.Join(repoRoot(t), filepath.FromSlash(prometheusConfigFile)), &c, true)
	return c
}

func duration(t *testing.T, key, s string, def time.Duration) time.Duration {
	t.Helper()
	if s == "" {
		return def
	}
	d, err := model.ParseDuration(s)
	if err != nil || d <= 0 {
		t.Errorf("%s: %s = %q is not a Prometheus duration (%v)", prometheusConfigFile, key, s, err)
		return def
	}
	return time.Duration(d)
}

// scrapeInterval is a job's interval (the global one for nil).
func scrapeInterval(t *testing.T, c prometheusConfig, job *scrapeConfig) time.Duration {
	t.Helper()
	d := duration(t, "global.scrape_interval", c.Global.ScrapeInterval, time.Minute)
	if job != nil {
		d = duration(t, job.JobName+".scrape_interval", job.ScrapeInterval, d)
	}
	return d
}

func TestPrometheusConfig(t *testing.T) {
	root := repoRoot(t)
	c := readPrometheusConfig(t)
	p := loadCompose(t)

	// Prometheus reads this file.
	prom := service(t, p, "prometheus")
	cfgPath := flagValue(prom.Command, "--config.file", prometheusDefaultConfig)
	if src, ok := hostPath(prom, cfgPath); !ok || src != filepath.Join(root, filepath.FromSlash(prometheusConfigFile)) {
		t.Errorf("prometheus reads %s, mounted from %q, want %s", cfgPath, src, prometheusConfigFile)
	}

	duration(t, "global.evaluation_interval", c.Global.EvaluationInterval, time.Minute)
	if len(c.ScrapeConfigs) == 0 {
		t.Fatal("no scrape_configs")
	}
	scraped := map[string]string{} // service -> job
	for i := range c.ScrapeConfigs {
		job := &c.ScrapeConfigs[i]
		where := prometheusConfigFile + " job " + strconv.Quote(job.JobName)
		if job.JobName == "" {
			t.Errorf("%s: scrape_configs[%d] has no job_name", prometheusConfigFile, i)
		}
		interval := scrapeInterval(t, c, job)
		timeout := duration(t, job.JobName+".scrape_timeout", job.ScrapeTimeout,
			duration(t, "global.scrape_timeout", c.Global.ScrapeTimeout, 0))
		if timeout > interval {
			t.Errorf("%s: scrape_timeout %s is longer than scrape_interval %s; Prometheus refuses that", where, timeout, interval)
		}
		if job.MetricsPath != "" && job.MetricsPath != "/metrics" {
			t.Errorf("%s: metrics_path %q; the services serve /metrics", where, job.MetricsPath)
		}
		if job.Scheme != "" && job.Scheme != "http" {
			t.Errorf("%s: scheme %q; the services serve plain http", where, job.Scheme)
		}
		if len(job.StaticConfigs) == 0 {
			t.Errorf("%s: no static_configs", where)
		}
		for _, sc := range job.StaticConfigs {
			for _, target := range sc.Targets {
				host, port, err := net.SplitHostPort(target)
				if err != nil {
					t.Errorf("%s: target %q is not host:port", where, target)
					continue
				}
				if prev, dup := scraped[host]; dup {
					t.Errorf("%s: %s is also scraped by job %q", where, host, prev)
				}
				scraped[host] = job.JobName
				checkScrapeTarget(t, p, where, host, port)
			}
		}
	}
	for _, name := range p.ServiceNames() {
		if _, isJetsync := mountSource(p.Services[name], configPath(name)); isJetsync {
			if _, ok := scraped[name]; !ok {
				t.Errorf("%s: no job scrapes the jetsync service %s", prometheusConfigFile, name)
			}
		}
	}
}

// checkScrapeTarget checks that a target is a jetsync compose service that
// serves /metrics on that port to other containers.
func checkScrapeTarget(t *testing.T, p *types.Project, where, host, port string) {
	t.Helper()
	s, ok := p.Services[host]
	if !ok {
		// A service of this repository that compose does not run yet
		// (being added): checked once it is in docker-compose.yml.
		if fi, err := os.Stat(filepath.Join(repoRoot(t), "services", host)); err == nil && fi.IsDir() {
			t.Logf("%s: target %s:%s: services/%s is not in docker-compose.yml yet; not checked", where, host, port, host)
			return
		}
		t.Errorf("%s: target host %q is not a compose service (%v)", where, host, p.ServiceNames())
		return
	}
	listen, from, ok := metricsListen(t, s)
	if !ok {
		t.Errorf("%s: %s is not a jetsync service (no %s), so the test does not know where it serves /metrics", where, host, configPath(host))
		return
	}
	lhost, lport, err := net.SplitHostPort(listen)
	switch {
	case err != nil:
		t.Errorf("%s: %s listens on %q (%s), not host:port", where, host, listen, from)
	case lport != port:
		t.Errorf("%s: scrapes %s:%s, but %s serves /metrics on %s (%s)", where, host, port, host, listen, from)
	case lhost != "" && lhost != "0.0.0.0" && lhost != "::":
		t.Errorf("%s: %s serves /metrics on %s (%s), which other containers cannot reach; listen on 0.0.0.0:%s", where, host, listen, from, port)
	}
	if exposed, ok := jetsyncServices[host]; ok && exposed != port {
		t.Errorf("%s: scrapes %s:%s, but its image EXPOSEs %s", where, host, port, exposed)
	}
}

// metricsListen is where a jetsync service serves /metrics in its
// container: JETSYNC_HTTP_LISTEN from compose, else http.listen from its
// mounted config file, else the services' loopback default (bridge:
// services/bridge/config.go, sinks: pkg/sink/config.go). ok is false for
// services that are not jetsync's.
func metricsListen(t *testing.T, s types.ServiceConfig) (listen, from string, ok bool) {
	t.Helper()
	src, ok := mountSource(s, configPath(s.Name))
	if !ok {
		return "", "", false
	}
	if s.Name == "relay" { // bridge relay serves /metrics on source.status_listen
		if v := s.Environment["JETSYNC_SOURCE_STATUS_LISTEN"]; v != nil {
			return *v, "JETSYNC_SOURCE_STATUS_LISTEN in docker-compose.yml", true
		}
		src2, _ := readConfig(t, src)["source"].(map[string]any)
		l, _ := src2["status_listen"].(string)
		return l, "source.status_listen in " + filepath.Base(src), true
	}
	if v := s.Environment["JETSYNC_HTTP_LISTEN"]; v != nil {
		return *v, "JETSYNC_HTTP_LISTEN in docker-compose.yml", true
	}
	if h, ok := readConfig(t, src)["http"].(map[string]any); ok {
		if l, ok := h["listen"].(string); ok {
			return l, "http.listen in " + filepath.Base(src), true
		}
	}
	def := "127.0.0.1:9090"
	if s.Name == "bridge" {
		def = "127.0.0.1:8080"
	}
	return def, "the default: http.listen is not set in " + filepath.Base(src), true
}

// flagValue reads --name=value or --name value from a command line.
func flagValue(cmd []string, name, def string) string {
	for i, a := range cmd {
		if v, ok := strings.CutPrefix(a, name+"="); ok {
			return v
		}
		if a == name && i+1 < len(cmd) {
			return cmd[i+1]
		}
	}
	return def
}

// prometheusListen is the address the prometheus service listens on.
func prometheusListen(t *testing.T, p *types.Project) string {
	t.Helper()
	return flagValue(service(t, p, "prometheus").Command, "--web.listen-address", prometheusDefaultListen)
}

func TestComposeMonitoringServices(t *testing.T) {
	p := loadCompose(t)
	for name, image := range map[string]string{"prometheus": "prom/prometheus:v3.", "grafana": "grafana/grafana:11."} {
		s := service(t, p, name)
		if !strings.HasPrefix(s.Image, image) {
			t.Errorf("%s: image %q, want a pinned %s* (the dashboards and the PromQL checks are written for it)", name, s.Image, image)
		}
	}
	prom := service(t, p, "prometheus")
	_, port, err := net.SplitHostPort(prometheusListen(t, p))
	if err != nil {
		t.Fatal(err)
	}
	if !slices.ContainsFunc(prom.Ports, func(pc types.ServicePortConfig) bool { return strconv.Itoa(int(pc.Target)) == port }) {
		t.Errorf("prometheus: publishes %+v, not its port %s", prom.Ports, port)
	}
	if _, ok := hostPath(prom, flagValue(prom.Command, "--storage.tsdb.path", "/prometheus")); ok {
		t.Error("prometheus: keep the TSDB in a named volume, not a bind mount of the repository")
	}
}

// Two services publishing the same host port make `docker compose up` fail.
func TestComposeHostPortsDistinct(t *testing.T) {
	p := loadCompose(t)
	seen := map[string]string{}
	for _, name := range p.ServiceNames() {
		for _, pc := range p.Services[name].Ports {
			if pc.Published == "" {
				continue
			}
			key := pc.Published + "/" + pc.Protocol
			if prev, dup := seen[key]; dup {
				t.Errorf("%s and %s both publish host port %s", prev, name, key)
			}
			seen[key] = name
		}
	}
}
