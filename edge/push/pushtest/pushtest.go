// Package pushtest runs stand-ins for the push services on 127.0.0.1, for
// tests: APNs (HTTP/2 only, provider-token auth), FCM (the OAuth2 token
// endpoint and HTTP v1 messages:send) and a generic push gateway. Each
// checks requests as the real service documents them and answers as it
// does, with the same error codes; each writes the credentials a client
// needs (a .p8 key, a service-account file, a token file) to a temporary
// directory, and records the pushes it accepted.
//
// It shares no code with the push package: it is a second, independent
// reading of the services' documentation.
package pushtest

import (
	"crypto/tls"
	"crypto/x509"
	"encoding/base64"
	"encoding/json"
	"net/http"
	"net/http/httptest"
	"sync"
	"testing"
	"time"
)

// Received is one push a server accepted.
type Received struct {
	// Token is the device token (APNs, from the path), the registration
	// token (FCM, message.token) or the pn-prid (gateway, "prid").
	Token string
	// Topic is the apns-topic (APNs) or the project (FCM).
	Topic  string
	Header http.Header
	Body   map[string]any // the JSON body
}

// Failure is how a server answers a push to a token marked bad.
type Failure struct {
	Status int
	Reason string // APNs reason, FCM errorCode, or the gateway's reason
	// RetryAfter, if set, is sent as the Retry-After header.
	RetryAfter string
}

// recorder keeps what a server received and how it treats tokens.
type recorder struct {
	mu       sync.Mutex
	fail     map[string]Failure
	stall    map[string]bool
	received []Received
	ch       chan Received
	quit     chan struct{} // closed at cleanup: stalled requests end
}

func newRecorder() recorder {
	return recorder{fail: map[string]Failure{}, stall: map[string]bool{}, ch: make(chan Received, 256), quit: make(chan struct{})}
}

// Fail makes pushes to token fail with status and reason.
func (r *recorder) Fail(token string, status int, reason string) {
	r.FailWith(token, Failure{Status: status, Reason: reason})
}

// FailWith makes pushes to token fail as f says.
func (r *recorder) FailWith(token string, f Failure) {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.fail[token] = f
}

// Stall makes pushes to token get no answer until the client gives up.
func (r *recorder) Stall(token string) {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.stall[token] = true
}

// Received returns the pushes accepted so far.
func (r *recorder) Received() []Received {
	r.mu.Lock()
	defer r.mu.Unlock()
	return append([]Received(nil), r.received...)
}

// Next waits up to 5 s for the next accepted push.
func (r *recorder) Next(t testing.TB) Received {
	t.Helper()
	select {
	case p := <-r.ch:
		return p
	case <-time.After(5 * time.Second):
		t.Fatal("pushtest: no push received within 5s")
		return Received{}
	}
}

// outcome reports how token is to be treated: stalled (after the stall
// ended), failed, or accepted.
func (r *recorder) outcome(req *http.Request, token string) (Failure, bool) {
	r.mu.Lock()
	f, failed := r.fail[token]
	stalled := r.stall[token]
	r.mu.Unlock()
	if stalled {
		select {
		case <-req.Context().Done():
		case <-r.quit:
		}
		return Failure{Status: http.StatusServiceUnavailable, Reason: "Shutdown"}, true
	}
	return f, failed
}

func (r *recorder) record(p Received) {
	r.mu.Lock()
	r.received = append(r.received, p)
	r.mu.Unlock()
	select {
	case r.ch <- p:
	default: // a test that does not call Next reads Received
	}
}

// start runs h on a TLS server (HTTP/2 only when h2), stopped at cleanup.
func start(t testing.TB, h http.Handler, r *recorder, h2, useTLS bool) *httptest.Server {
	srv := httptest.NewUnstartedServer(h)
	if useTLS {
		srv.EnableHTTP2 = h2
		srv.StartTLS()
	} else {
		srv.Start()
	}
	t.Cleanup(func() {
		close(r.quit)
		srv.Close()
	})
	return srv
}

// ClientTLS trusts the servers' certificates: the TLS config for a client
// of them.
func ClientTLS(servers ...*httptest.Server) *tls.Config {
	pool := x509.NewCertPool()
	for _, s := range servers {
		if c := s.Certificate(); c != nil {
			pool.AddCert(c)
		}
	}
	return &tls.Config{RootCAs: pool, MinVersion: tls.VersionTLS12}
}

// writeJSON answers status with v as JSON.
func writeJSON(w http.ResponseWriter, status int, v any) {
	w.Header().Set("Content-Type", "application/json; charset=utf-8")
	w.WriteHeader(status)
	_ = json.NewEncoder(w).Encode(v)
}

var b64 = base64.RawURLEncoding
