package natsutil_test

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"errors"
	"log/slog"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/nats-io/jwt/v2"
	"github.com/nats-io/nats-server/v2/server"
	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
	"github.com/nats-io/nkeys"

	"github.com/jetsync/jetsync/pkg/config"
	"github.com/jetsync/jetsync/pkg/natsutil"
	"github.com/jetsync/jetsync/pkg/testenv"
)

var quiet = slog.New(slog.DiscardHandler)

// mustUseJetStream proves a connection is logged in for real: it creates
// a stream, which an unauthenticated client could not.
func mustUseJetStream(t *testing.T, nc *nats.Conn) {
	t.Helper()
	js, err := jetstream.New(nc)
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	if _, err := natsutil.EnsureStream(ctx, js, natsutil.DefaultStreamConfig()); err != nil {
		t.Fatalf("using JetStream over the connection: %v", err)
	}
}

func connect(c natsutil.Config) (*nats.Conn, error) {
	// No reconnecting: a refused login must come back as an error here.
	return natsutil.Connect(c, "test", quiet, nats.MaxReconnects(0), nats.Timeout(5*time.Second))
}

func TestConnectUserPassword(t *testing.T) {
	srv := testenv.NATSWith(t, func(o *server.Options) { o.Username, o.Password = "app", "s3cret" })
	nc, err := connect(natsutil.Config{URL: srv.URL(), User: "app", Password: "s3cret"})
	if err != nil {
		t.Fatalf("the right user and password: %v", err)
	}
	defer nc.Close()
	mustUseJetStream(t, nc)
	for _, c := range []natsutil.Config{{URL: srv.URL(), User: "app", Password: "wrong"}, {URL: srv.URL()}} {
		if nc, err := connect(c); err == nil {
			nc.Close()
			t.Fatalf("%+v connected to a server that needs a password", c)
		} else if !errors.Is(err, nats.ErrAuthorization) && !strings.Contains(err.Error(), "Authorization") {
			t.Fatalf("%+v: want an authorization error, got %v", c, err)
		}
	}
}

func TestConnectToken(t *testing.T) {
	srv := testenv.NATSWith(t, func(o *server.Options) { o.Authorization = "tok-123" })
	nc, err := connect(natsutil.Config{URL: srv.URL(), Token: "tok-123"})
	if err != nil {
		t.Fatalf("the right token: %v", err)
	}
	defer nc.Close()
	mustUseJetStream(t, nc)
	if nc, err := connect(natsutil.Config{URL: srv.URL(), Token: "nope"}); err == nil {
		nc.Close()
		t.Fatal("a wrong token connected")
	}
}

func TestConnectMutualTLS(t *testing.T) {
	dir := t.TempDir()
	ca := testenv.NewCA(t, "nats-test-ca")
	serverCert, serverKey, _ := ca.Issue(t, pkix.Name{CommonName: "nats"}, true)
	clientCert, clientKey, _ := ca.Issue(t, pkix.Name{CommonName: "sink"}, false)
	write := func(name string, b []byte) string {
		p := filepath.Join(dir, name)
		if err := os.WriteFile(p, b, 0o600); err != nil {
			t.Fatal(err)
		}
		return p
	}
	caFile := write("ca.pem", ca.PEM)
	certFile, keyFile := write("client.pem", clientCert), write("client.key", clientKey)
	kp, err := tls.X509KeyPair(serverCert, serverKey)
	if err != nil {
		t.Fatal(err)
	}
	pool := x509.NewCertPool()
	pool.AddCert(ca.Cert)
	srv := testenv.NATSWith(t, func(o *server.Options) {
		o.TLS, o.TLSVerify = true, true
		o.TLSConfig = &tls.Config{Certificates: []tls.Certificate{kp}, ClientCAs: pool, ClientAuth: tls.RequireAndVerifyClientCert, MinVersion: tls.VersionTLS12}
		o.TLSTimeout = 5
	})
	url := strings.Replace(srv.URL(), "nats://", "tls://", 1)
	nc, err := connect(natsutil.Config{URL: url, TLS: natsutil.TLSConfig{CA: caFile, Cert: certFile, Key: keyFile}})
	if err != nil {
		t.Fatalf("mutual TLS with the CA and a client certificate: %v", err)
	}
	defer nc.Close()
	if !nc.TLSRequired() {
		t.Fatal("the connection is not TLS")
	}
	mustUseJetStream(t, nc)
	// The nats:// scheme works too: the tls options ask for TLS.
	nc2, err := connect(natsutil.Config{URL: srv.URL(), TLS: natsutil.TLSConfig{CA: caFile, Cert: certFile, Key: keyFile}})
	if err != nil {
		t.Fatalf("nats:// URL with tls options: %v", err)
	}
	nc2.Close()
	if nc, err := connect(natsutil.Config{URL: url, TLS: natsutil.TLSConfig{CA: caFile}}); err == nil {
		nc.Close()
		t.Fatal("connected without a client certificate to a server that verifies clients")
	}
	if nc, err := connect(natsutil.Config{URL: url}); err == nil {
		nc.Close()
		t.Fatal("connected without the CA: the server's certificate cannot be verified")
	}
}

func TestConnectCreds(t *testing.T) {
	okp, _ := nkeys.CreateOperator()
	opub, _ := okp.PublicKey()
	oc := jwt.NewOperatorClaims(opub)
	if _, err := oc.Encode(okp); err != nil {
		t.Fatal(err)
	}
	akp, _ := nkeys.CreateAccount()
	apub, _ := akp.PublicKey()
	ac := jwt.NewAccountClaims(apub)
	ac.Limits.JetStreamLimits = jwt.JetStreamLimits{MemoryStorage: -1, DiskStorage: -1, Streams: -1, Consumer: -1}
	ajwt, err := ac.Encode(okp)
	if err != nil {
		t.Fatal(err)
	}
	ukp, _ := nkeys.CreateUser()
	upub, _ := ukp.PublicKey()
	ujwt, err := jwt.NewUserClaims(upub).Encode(akp)
	if err != nil {
		t.Fatal(err)
	}
	seed, _ := ukp.Seed()
	creds, err := jwt.FormatUserConfig(ujwt, seed)
	if err != nil {
		t.Fatal(err)
	}
	credsFile := filepath.Join(t.TempDir(), "sink.creds")
	if err := os.WriteFile(credsFile, creds, 0o600); err != nil {
		t.Fatal(err)
	}
	// Operator mode wants a system account.
	skp, _ := nkeys.CreateAccount()
	spub, _ := skp.PublicKey()
	sjwt, err := jwt.NewAccountClaims(spub).Encode(okp)
	if err != nil {
		t.Fatal(err)
	}
	resolver := &server.MemAccResolver{}
	if err := errors.Join(resolver.Store(apub, ajwt), resolver.Store(spub, sjwt)); err != nil {
		t.Fatal(err)
	}
	srv := testenv.NATSWith(t, func(o *server.Options) {
		o.TrustedOperators = []*jwt.OperatorClaims{oc}
		o.AccountResolver = resolver
		o.SystemAccount = spub
	})
	nc, err := connect(natsutil.Config{URL: srv.URL(), Creds: credsFile})
	if err != nil {
		t.Fatalf("connecting with the creds file: %v", err)
	}
	defer nc.Close()
	mustUseJetStream(t, nc)
	if nc, err := connect(natsutil.Config{URL: srv.URL()}); err == nil {
		nc.Close()
		t.Fatal("connected without creds to an operator-mode server")
	}
}

func TestConfigValidate(t *testing.T) {
	file := filepath.Join(t.TempDir(), "f.pem")
	if err := os.WriteFile(file, []byte("x"), 0o600); err != nil {
		t.Fatal(err)
	}
	for _, tc := range []struct {
		name string
		cfg  natsutil.Config
		want []string // keys named in the error; none: valid
	}{
		{"cluster URLs", natsutil.Config{URL: "nats://a:4222, nats://b:4222,tls://c:4222"}, nil},
		{"user and password", natsutil.Config{URL: "nats://a:4222", User: "u", Password: "p"}, nil},
		{"mutual TLS", natsutil.Config{URL: "tls://a:4222", TLS: natsutil.TLSConfig{CA: file, Cert: file, Key: file}}, nil},
		{"empty entry", natsutil.Config{URL: "nats://a:4222,,nats://b:4222"}, []string{"nats.url"}},
		{"bad scheme", natsutil.Config{URL: "http://a:4222"}, []string{"nats.url"}},
		{"password alone", natsutil.Config{URL: "nats://a", Password: "p"}, []string{"nats.user"}},
		{"user alone", natsutil.Config{URL: "nats://a", User: "u"}, []string{"nats.password"}},
		{"two logins", natsutil.Config{URL: "nats://a", Token: "t", Creds: file}, []string{"nats:"}},
		{"missing creds", natsutil.Config{URL: "nats://a", Creds: "/nonexistent.creds"}, []string{"nats.creds"}},
		{"cert without key", natsutil.Config{URL: "nats://a", TLS: natsutil.TLSConfig{Cert: file}}, []string{"nats.tls"}},
		{"missing ca", natsutil.Config{URL: "nats://a", TLS: natsutil.TLSConfig{CA: "/nonexistent.pem"}}, []string{"nats.tls.ca"}},
		{"credentials without url", natsutil.Config{Token: "t"}, []string{"nats.url"}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			var p config.Problems
			tc.cfg.Validate("nats", &p)
			err := p.Err()
			if len(tc.want) == 0 {
				if err != nil {
					t.Fatalf("want valid, got %v", err)
				}
				return
			}
			if err == nil {
				t.Fatalf("want an error naming %v, got none", tc.want)
			}
			for _, k := range tc.want {
				if !strings.Contains(err.Error(), k) {
					t.Errorf("error does not name %s: %v", k, err)
				}
			}
		})
	}
}

// TestReplicasUnmeetable: asking for more replicas than the servers can
// place is an error that names stream.replicas and says what to do, on a
// single server and on a 3-node cluster alike.
func TestReplicasUnmeetable(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	check := func(js jetstream.JetStream, n int, want string) {
		t.Helper()
		cfg := natsutil.DefaultStreamConfig()
		cfg.Replicas = n
		_, err := natsutil.EnsureStream(ctx, js, cfg)
		if !errors.Is(err, natsutil.ErrReplicas) {
			t.Fatalf("R%d: want ErrReplicas, got %v", n, err)
		}
		if !strings.Contains(err.Error(), "stream.replicas is") || !strings.Contains(err.Error(), want) {
			t.Fatalf("R%d: the error does not say what to change: %v", n, err)
		}
	}
	_, js := testenv.NATS(t).Connect(t)
	check(js, 3, "not a cluster")

	c := testenv.StartCluster(t, 3)
	_, cjs := c.Connect(t)
	c.EnsureStream(t, cjs, 3) // R3 fits three nodes
	check(cjs, 5, "cannot place")
}

// TestConnectFailsOverAcrossClusterURLs: a client given every node keeps
// working when the node it is connected to stops.
func TestConnectFailsOverAcrossClusterURLs(t *testing.T) {
	c := testenv.StartCluster(t, 3)
	nc, err := natsutil.Connect(natsutil.Config{URL: c.URLs()}, "test", quiet)
	if err != nil {
		t.Fatal(err)
	}
	defer nc.Close()
	js, _ := jetstream.New(nc)
	c.EnsureStream(t, js, 3)
	first := nc.ConnectedServerName()
	c.StopNode(c.Node(first))
	testenv.Eventually(t, 60*time.Second, func() bool {
		ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
		defer cancel()
		_, err := js.Publish(ctx, "events.order.1", []byte("{}"))
		return err == nil
	}, "no publish succeeded after node %s stopped", first)
	if nc.ConnectedServerName() == first {
		t.Fatalf("still connected to the stopped node %s", first)
	}
}
