package main

import (
	_ "embed"
	"encoding/json"
	"fmt"
	"net/http"
	"sync"

	"go.yaml.in/yaml/v3"
)

// The API contract. docs/openapi.yaml is the source of truth; this package
// embeds a copy (go:embed cannot reach outside the module), refreshed by
// `go generate`, and TestOpenAPICopyIsCurrent fails when the two differ.
//
//go:generate cp ../../docs/openapi.yaml openapi.yaml
//go:embed openapi.yaml
var openapiYAML []byte

// openapiJSON is the contract as JSON, converted once.
var openapiJSON = sync.OnceValues(func() ([]byte, error) {
	var doc any
	if err := yaml.Unmarshal(openapiYAML, &doc); err != nil {
		return nil, fmt.Errorf("openapi.yaml: %w", err)
	}
	return json.Marshal(doc)
})

func serveOpenAPIYAML(w http.ResponseWriter, _ *http.Request) {
	w.Header().Set("Content-Type", "application/yaml")
	_, _ = w.Write(openapiYAML)
}

func serveOpenAPIJSON(w http.ResponseWriter, _ *http.Request) {
	b, err := openapiJSON()
	if err != nil {
		writeJSON(w, http.StatusInternalServerError, errorBody{Error: err.Error()})
		return
	}
	w.Header().Set("Content-Type", "application/json")
	_, _ = w.Write(b)
}
