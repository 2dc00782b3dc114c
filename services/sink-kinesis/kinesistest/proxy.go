package kinesistest

import (
	"bytes"
	"encoding/json"
	"io"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync"
	"testing"
)

// ThrottleCode is the error code the proxy injects.
const ThrottleCode = "ProvisionedThroughputExceededException"

// Call is one PutRecords call that went through the proxy.
type Call struct {
	N         int // 1 for the first PutRecords call, 2 for the next...
	Stream    string
	Keys      []string // partition key of each record
	Sizes     []int    // data plus partition key bytes of each record
	Positions []uint64 // "position" of each record's JSON, 0 if it has none
	Fault     Fault    // what the proxy did to it
	Status    int      // HTTP status the client got (0: none, the reply was dropped)
}

// Bytes is the call's data plus partition key bytes (the 5MiB limit).
func (c *Call) Bytes() int {
	n := 0
	for _, s := range c.Sizes {
		n += s
	}
	return n
}

// Fault is what to do to one PutRecords call.
type Fault struct {
	// FailEntries are indexes of records whose result is rewritten to
	// ProvisionedThroughputExceededException after the server stored them
	// all: the client sees a partial failure, and the records it did not
	// re-send stay written, like on AWS.
	FailEntries []int
	// RejectEntries are indexes of records the proxy removes from the call
	// before forwarding it and answers as ProvisionedThroughputExceeded:
	// they are not stored, the other records are, as AWS does it. A later
	// record of the same partition key is then in the stream ahead of its
	// failed predecessor.
	RejectEntries []int
	// ThrottleCall answers the whole call with a 400
	// ProvisionedThroughputExceededException without forwarding it.
	ThrottleCall bool
	// DropReply forwards the call, then closes the connection without an
	// answer: the records are in, the client sees a transport error.
	DropReply bool
}

// Faulty reports whether the fault changes anything.
func (f Fault) Faulty() bool {
	return len(f.FailEntries) > 0 || len(f.RejectEntries) > 0 || f.ThrottleCall || f.DropReply
}

// Proxy is a reverse proxy in front of a Kinesis-compatible server that
// records every PutRecords call and injects faults into chosen ones. Every
// other call is passed through untouched.
type Proxy struct {
	URL string

	upstream string
	client   *http.Client

	mu    sync.Mutex
	fault func(*Call) Fault
	calls []Call
	down  bool
}

// NewProxy starts a proxy to upstream (e.g. testenv.Kinesalite(t).URL) on
// a free 127.0.0.1 port; it stops when the test ends.
func NewProxy(t testing.TB, upstream string) *Proxy {
	t.Helper()
	p := &Proxy{upstream: strings.TrimSuffix(upstream, "/"), client: &http.Client{}}
	srv := httptest.NewServer(p)
	p.URL = srv.URL
	t.Cleanup(func() {
		srv.CloseClientConnections()
		srv.Close()
	})
	return p
}

// SetFault makes f decide the fault of each following PutRecords call (nil:
// none). f sees the call's records and runs under the proxy's lock, one
// call at a time.
func (p *Proxy) SetFault(f func(*Call) Fault) {
	p.mu.Lock()
	defer p.mu.Unlock()
	p.fault = f
}

// SetDown makes the proxy close every connection at once without
// forwarding (down) or work again: an outage of the endpoint as the client
// sees it, also in front of a server the test cannot stop.
func (p *Proxy) SetDown(down bool) {
	p.mu.Lock()
	defer p.mu.Unlock()
	p.down = down
}

// Calls returns a copy of the PutRecords calls so far.
func (p *Proxy) Calls() []Call {
	p.mu.Lock()
	defer p.mu.Unlock()
	return append([]Call(nil), p.calls...)
}

// Retried returns the positions of every record of a call whose client
// did not get a clean answer: a call given a fault, or one the server
// failed or did not answer (it was down). Only these can have been sent
// twice by a writer that re-sends what it does not know to be in.
func (p *Proxy) Retried() map[uint64]bool {
	out := map[uint64]bool{}
	for _, c := range p.Calls() {
		if c.Fault.Faulty() || c.Status != http.StatusOK {
			for _, pos := range c.Positions {
				out[pos] = true
			}
		}
	}
	return out
}

type putRecordsRequest struct {
	StreamName string
	Records    []struct {
		Data         []byte // base64 in JSON
		PartitionKey string
	}
}

func (p *Proxy) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	p.mu.Lock()
	down := p.down
	p.mu.Unlock()
	if down {
		closeConn(w)
		return
	}
	body, err := io.ReadAll(r.Body)
	if err != nil {
		http.Error(w, err.Error(), http.StatusBadGateway)
		return
	}
	var call *Call
	if strings.HasSuffix(r.Header.Get("X-Amz-Target"), ".PutRecords") {
		call = p.newCall(body)
	}
	var fault Fault
	if call != nil {
		fault = call.Fault
	}

	if fault.ThrottleCall {
		p.finish(call, http.StatusBadRequest)
		writeJSON(w, http.StatusBadRequest, r.Header.Get("Content-Type"), map[string]string{
			"__type": ThrottleCode, "message": "Rate exceeded for stream (injected by kinesistest)",
		})
		return
	}

	var rejected []int
	if len(fault.RejectEntries) > 0 {
		var ok bool
		if body, rejected, ok = withoutEntries(body, fault.RejectEntries); !ok {
			http.Error(w, "kinesistest: cannot reject entries of this body", http.StatusBadGateway)
			return
		}
		if rejected == nil { // every record rejected: nothing to forward
			p.finish(call, http.StatusOK)
			writeJSON(w, http.StatusOK, r.Header.Get("Content-Type"), map[string]any{
				"FailedRecordCount": len(call.Keys), "Records": throttled(len(call.Keys)),
			})
			return
		}
	}

	req, err := http.NewRequestWithContext(r.Context(), r.Method, p.upstream+r.URL.RequestURI(), bytes.NewReader(body))
	if err != nil {
		http.Error(w, err.Error(), http.StatusBadGateway)
		return
	}
	req.Header = r.Header.Clone()
	resp, err := p.client.Do(req)
	if err != nil {
		p.finish(call, http.StatusBadGateway)
		http.Error(w, err.Error(), http.StatusBadGateway)
		return
	}
	respBody, err := io.ReadAll(resp.Body)
	resp.Body.Close()
	if err != nil {
		p.finish(call, http.StatusBadGateway)
		http.Error(w, err.Error(), http.StatusBadGateway)
		return
	}

	if fault.DropReply {
		p.finish(call, 0)
		closeConn(w)
		return
	}
	if len(rejected) > 0 && resp.StatusCode == http.StatusOK {
		respBody = spliceRejected(respBody, rejected)
	}
	if len(fault.FailEntries) > 0 && resp.StatusCode == http.StatusOK {
		respBody = failEntries(respBody, fault.FailEntries)
	}
	for k, vs := range resp.Header {
		if k != "Content-Length" {
			w.Header()[k] = vs
		}
	}
	p.finish(call, resp.StatusCode)
	w.WriteHeader(resp.StatusCode)
	_, _ = w.Write(respBody)
}

// closeConn closes the client's connection without an answer.
func closeConn(w http.ResponseWriter) {
	if hj, ok := w.(http.Hijacker); ok {
		if conn, _, err := hj.Hijack(); err == nil {
			conn.Close()
			return
		}
	}
	panic(http.ErrAbortHandler) // closes the connection too
}

// newCall records a PutRecords call and decides its fault.
func (p *Proxy) newCall(body []byte) *Call {
	var in putRecordsRequest
	_ = json.Unmarshal(body, &in) // a body it cannot read is passed on as it is
	c := &Call{Stream: in.StreamName}
	for _, rec := range in.Records {
		var pos struct {
			Position uint64 `json:"position"`
		}
		_ = json.Unmarshal(rec.Data, &pos)
		c.Keys = append(c.Keys, rec.PartitionKey)
		c.Sizes = append(c.Sizes, len(rec.Data)+len(rec.PartitionKey))
		c.Positions = append(c.Positions, pos.Position)
	}
	p.mu.Lock()
	defer p.mu.Unlock()
	c.N = len(p.calls) + 1
	if p.fault != nil {
		c.Fault = p.fault(c)
	}
	p.calls = append(p.calls, *c)
	return c
}

func (p *Proxy) finish(c *Call, status int) {
	if c == nil {
		return
	}
	p.mu.Lock()
	defer p.mu.Unlock()
	p.calls[c.N-1].Status = status
}

// failEntries rewrites the results at idx of a PutRecords answer into
// throttling errors and fixes FailedRecordCount.
func failEntries(body []byte, idx []int) []byte {
	var out struct {
		FailedRecordCount int
		Records           []map[string]any
		EncryptionType    any `json:",omitempty"`
	}
	if err := json.Unmarshal(body, &out); err != nil {
		return body
	}
	for _, i := range idx {
		if i >= 0 && i < len(out.Records) {
			out.Records[i] = map[string]any{
				"ErrorCode":    ThrottleCode,
				"ErrorMessage": "Rate exceeded for shard (injected by kinesistest; the record was stored)",
			}
		}
	}
	out.FailedRecordCount = 0
	for _, r := range out.Records {
		if _, bad := r["ErrorCode"]; bad {
			out.FailedRecordCount++
		}
	}
	b, err := json.Marshal(out)
	if err != nil {
		return body
	}
	return b
}

// withoutEntries removes the records at idx from a PutRecords body. It
// returns the new body and a map of the original indexes (-1: rejected, or
// the index in the forwarded call), nil when every record is rejected.
func withoutEntries(body []byte, idx []int) ([]byte, []int, bool) {
	var in map[string]any
	if err := json.Unmarshal(body, &in); err != nil {
		return body, nil, false
	}
	recs, ok := in["Records"].([]any)
	if !ok {
		return body, nil, false
	}
	drop := map[int]bool{}
	for _, i := range idx {
		drop[i] = true
	}
	kept := make([]any, 0, len(recs))
	mapping := make([]int, len(recs))
	for i, r := range recs {
		if drop[i] {
			mapping[i] = -1
			continue
		}
		mapping[i] = len(kept)
		kept = append(kept, r)
	}
	if len(kept) == 0 {
		return body, nil, true
	}
	in["Records"] = kept
	b, err := json.Marshal(in)
	if err != nil {
		return body, nil, false
	}
	return b, mapping, true
}

// spliceRejected turns the answer to a call without the rejected records
// into the answer to the whole call.
func spliceRejected(body []byte, mapping []int) []byte {
	var out struct {
		FailedRecordCount int
		Records           []map[string]any
		EncryptionType    any `json:",omitempty"`
	}
	if err := json.Unmarshal(body, &out); err != nil {
		return body
	}
	all := make([]map[string]any, len(mapping))
	fail := throttled(1)[0]
	for i, j := range mapping {
		if j < 0 || j >= len(out.Records) {
			all[i] = fail
			continue
		}
		all[i] = out.Records[j]
	}
	out.Records = all
	out.FailedRecordCount = 0
	for _, r := range out.Records {
		if _, bad := r["ErrorCode"]; bad {
			out.FailedRecordCount++
		}
	}
	b, err := json.Marshal(out)
	if err != nil {
		return body
	}
	return b
}

func throttled(n int) []map[string]any {
	out := make([]map[string]any, n)
	for i := range out {
		out[i] = map[string]any{
			"ErrorCode":    ThrottleCode,
			"ErrorMessage": "Rate exceeded for shard (injected by kinesistest; the record was not stored)",
		}
	}
	return out
}

func writeJSON(w http.ResponseWriter, status int, contentType string, v any) {
	if contentType == "" {
		contentType = "application/x-amz-json-1.1"
	}
	b, _ := json.Marshal(v)
	w.Header().Set("Content-Type", contentType)
	w.WriteHeader(status)
	_, _ = w.Write(b)
}
