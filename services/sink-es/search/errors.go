package search

import (
	"errors"

	"github.com/jetsync/jetsync/pkg/mapping"
)

var (
	// ErrNotConnected is returned by WriteBatch before Connect succeeded or
	// after Close. The engine retries it.
	ErrNotConnected = errors.New("elasticsearch writer is not connected")

	// ErrRetryItems means Elasticsearch refused some items of a bulk request
	// for now (429, 5xx, a write block): the writer keeps them and sends
	// only them again when the engine retries the same batch.
	ErrRetryItems = errors.New("elasticsearch asked to retry bulk items")

	// ErrRefused is the per-event failure of an item Elasticsearch refuses
	// for good (a mapping error, a missing alias): on_error decides.
	ErrRefused = errors.New("elasticsearch refused the document")

	// ErrAuth means Elasticsearch refused the credentials or a privilege.
	// Returned wrapped in sink.Permanent.
	ErrAuth = errors.New("elasticsearch refused the credentials or a privilege")

	// ErrBadRequest means Elasticsearch refused a whole request (not one
	// item): a bug or a setting such as max_request_bytes above the
	// server's http.max_content_length. Returned wrapped in sink.Permanent.
	ErrBadRequest = errors.New("elasticsearch refused the request")

	// ErrIndexSetup means an index, alias or index template could not be
	// created from the indices section at start. Returned wrapped in
	// sink.Permanent: fix the settings or mappings named in the message.
	ErrIndexSetup = errors.New("cannot set up the index")

	// ErrUnknownType is the per-event failure for an event type without a
	// mapping when unknown_types is "error".
	ErrUnknownType = errors.New("no mapping for event type")

	// ErrNotObject is the per-event failure of index and merge when the data
	// (or the projection's output) is not a JSON object.
	ErrNotObject = errors.New("not a JSON object")

	// ErrProjection is the per-event failure of a projection that fails at
	// run time or does not produce exactly one value.
	ErrProjection = mapping.ErrProjection

	// ErrBadTarget is the per-event failure of an index or id template that
	// renders something Elasticsearch cannot take (an index name with
	// capitals, an empty id).
	ErrBadTarget = errors.New("bad index name or document id")

	// ErrNoSource means merge found the current document without _source
	// (disabled in the mappings), so it cannot merge into it. Returned
	// wrapped in sink.Permanent.
	ErrNoSource = errors.New("document has no _source to merge into")

	// ErrRebuild is wrapped by every error of a rebuild (sink-es rebuild).
	ErrRebuild = errors.New("rebuild failed")
)
