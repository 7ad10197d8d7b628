package edge_test

import (
	"bytes"
	"crypto/tls"
	"crypto/x509"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/sipedge/sipedge/edge/edgetest"
	"github.com/sipedge/sipedge/upstream"
	"github.com/sipedge/sipedge/upstream/upstreamtest"
)

// tlsCore starts a registrar serving TLS with a fresh self-signed
// certificate for 127.0.0.1, and returns it with that certificate's PEM.
func tlsCore(t *testing.T) (*upstreamtest.Registrar, string) {
	t.Helper()
	dir := t.TempDir()
	certFile, keyFile := edgetest.SelfSignedCert(t, dir)
	cert, err := tls.LoadX509KeyPair(certFile, keyFile)
	if err != nil {
		t.Fatal(err)
	}
	return upstreamtest.Start(t, upstreamtest.Options{TLS: &tls.Config{Certificates: []tls.Certificate{cert}}}), certFile
}

// syncLog collects the edge's log lines.
type syncLog struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (l *syncLog) Write(p []byte) (int, error) { l.mu.Lock(); defer l.mu.Unlock(); return l.b.Write(p) }
func (l *syncLog) String() string              { l.mu.Lock(); defer l.mu.Unlock(); return l.b.String() }

// A core over TLS whose certificate the edge trusts (core.tls_ca) takes
// registrations; one whose certificate it cannot verify is never used:
// the try fails, the failure is logged, and the next core takes it.
func TestCoreOverTLS(t *testing.T) {
	good, goodCert := tlsCore(t)
	bad, _ := tlsCore(t) // another self-signed certificate: not in the CA file
	cfg := upstream.DefaultConfig()
	cfg.TLSCA = goodCert
	coreTLS, err := cfg.ClientTLS()
	if err != nil {
		t.Fatal(err)
	}
	e := edgetest.StartWith(t, good.URI("tls"), func(c *edgetest.Config) {
		c.Core.Upstreams = []string{bad.URI("tls"), good.URI("tls")}
		c.Core.HealthInterval = 0
	}, edgetest.Hooks{CoreTLS: coreTLS})
	phone := edgetest.Dial(t, "udp", e.UDP)
	phone.Send(phone.Register(edgetest.Reg{User: "tess"}))
	if res := phone.MustRecvResponse(wait); res.StatusCode != 200 {
		t.Fatalf("REGISTER via TLS got %d, want 200 from the trusted core", res.StatusCode)
	}
	if bs := good.Bindings("sip:tess@example.com"); len(bs) != 1 {
		t.Fatalf("the trusted TLS core holds %d bindings", len(bs))
	}
	if n := len(bad.Requests()); n != 0 {
		t.Errorf("the untrusted core received %d requests", n)
	}
	if got := good.Requests()[0]; !strings.Contains(got.Via().Transport, "TLS") {
		t.Errorf("the core got the REGISTER over %s, want TLS", got.Via().Transport)
	}
}

// The failure is an error in the log, naming the core, never a silent
// acceptance.
func TestCoreCertificateFailureLogged(t *testing.T) {
	bad, _ := tlsCore(t)
	good := upstreamtest.Start(t, upstreamtest.Options{})
	pool := x509.NewCertPool() // trusts nothing
	var lines syncLog
	e := edgetest.StartWith(t, good.URI("udp"), func(c *edgetest.Config) {
		c.Core.Upstreams = []string{bad.URI("tls"), good.URI("udp")}
		c.Core.HealthInterval = 0
	}, edgetest.Hooks{CoreTLS: &tls.Config{RootCAs: pool, MinVersion: tls.VersionTLS12}, Log: &lines})
	log := lines.String
	phone := edgetest.Dial(t, "udp", e.UDP)
	phone.Send(phone.Register(edgetest.Reg{User: "uma"}))
	if res := phone.MustRecvResponse(wait); res.StatusCode != 200 {
		t.Fatalf("REGISTER got %d, want 200 from the next core", res.StatusCode)
	}
	deadline := time.Now().Add(wait)
	for !strings.Contains(log(), "certificate failed verification") {
		if time.Now().After(deadline) {
			t.Fatal("no error logged for the core's bad certificate")
		}
		time.Sleep(10 * time.Millisecond)
	}
	if !strings.Contains(log(), "level=ERROR") || !strings.Contains(log(), bad.Addr().String()) {
		t.Errorf("the log line is not an error naming the core:\n%s", log())
	}
}
