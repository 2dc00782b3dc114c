package main

import "github.com/jetsync/jetsync/pkg/httpauth"

// TLSConfig serves the API over HTTPS (http.tls): the sinks' admin servers
// use the same section, keys and reloading (pkg/httpauth). The files are
// re-read on SIGHUP, so certificates rotate without a restart. With
// client_ca_file, clients present a certificate whose subject is their
// principal (auth.client_certs grants it scopes); with auth tokens
// configured too, a client may send either.
type TLSConfig = httpauth.TLSConfig

// tlsKey is the section's key in the bridge's config, for error messages.
const tlsKey = "http.tls"
