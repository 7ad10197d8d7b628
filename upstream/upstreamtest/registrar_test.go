package upstreamtest

import (
	"context"
	"errors"
	"log/slog"
	"net"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/emiago/sipgo"
	"github.com/emiago/sipgo/sip"
	"github.com/icholy/digest"
	"go.uber.org/goleak"
)

func TestMain(m *testing.M) {
	// sipgo logs some warnings through its process-wide logger (for
	// example "UDP ref went negative" when a client user agent closes).
	sip.SetDefaultLogger(quiet)
	goleak.VerifyTestMain(m)
}

const aliceAOR = "sip:alice@example.com"

var quiet = slog.New(slog.DiscardHandler)

// testCtx bounds every wait in a test.
func testCtx(t *testing.T) context.Context {
	ctx, cancel := context.WithTimeout(t.Context(), 10*time.Second)
	t.Cleanup(cancel)
	return ctx
}

// newUAC returns a sipgo client on its own user agent, closed at cleanup.
func newUAC(t *testing.T) *sipgo.Client {
	t.Helper()
	ua, err := sipgo.NewUA(
		sipgo.WithUserAgent("uac"),
		sipgo.WithUserAgentHostname("example.com"),
		sipgo.WithUserAgentTransportLayerOptions(sip.WithTransportLayerLogger(quiet)),
		sipgo.WithUserAgentTransactionLayerOptions(sip.WithTransactionLayerLogger(quiet)),
	)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { ua.Close() })
	c, err := sipgo.NewClient(ua, sipgo.WithClientLogger(quiet))
	if err != nil {
		t.Fatal(err)
	}
	return c
}

// newRegister builds a REGISTER for alice to r; extra headers are appended
// as written, e.g. "Contact: <sip:alice@10.0.0.1>".
func newRegister(t *testing.T, r *Registrar, transport, callID string, cseq uint32, headers ...string) *sip.Request {
	t.Helper()
	var ruri sip.Uri
	if err := sip.ParseUri(r.URI(transport), &ruri); err != nil {
		t.Fatal(err)
	}
	req := sip.NewRequest(sip.REGISTER, ruri)
	aor := sip.Uri{Scheme: "sip", User: "alice", Host: "example.com"}
	req.AppendHeader(&sip.ToHeader{Address: aor})
	from := &sip.FromHeader{Address: aor, Params: sip.NewParams()}
	from.Params.Add("tag", sip.GenerateTagN(8))
	req.AppendHeader(from)
	cid := sip.CallIDHeader(callID)
	req.AppendHeader(&cid)
	req.AppendHeader(&sip.CSeqHeader{SeqNo: cseq, MethodName: sip.REGISTER})
	for _, h := range headers {
		name, value, ok := strings.Cut(h, ":")
		if !ok {
			t.Fatalf("bad header %q", h)
		}
		req.AppendHeader(sip.NewHeader(name, strings.TrimSpace(value)))
	}
	return req
}

func do(t *testing.T, c *sipgo.Client, req *sip.Request) *sip.Response {
	t.Helper()
	res, err := c.Do(testCtx(t), req)
	if err != nil {
		t.Fatalf("%s: %v", req.Method, err)
	}
	return res
}

func wantStatus(t *testing.T, res *sip.Response, code int) {
	t.Helper()
	if res.StatusCode != code {
		t.Fatalf("status = %d %s, want %d\n%s", res.StatusCode, res.Reason, code, res)
	}
}

// contacts returns the Contact URIs of a response with their expires param.
func contacts(t *testing.T, res *sip.Response) map[string]string {
	t.Helper()
	out := map[string]string{}
	for _, h := range res.GetHeaders("Contact") {
		c, ok := h.(*sip.ContactHeader)
		if !ok {
			t.Fatalf("Contact not parsed: %v", h)
		}
		out[c.Address.String()], _ = c.Params.Get("expires")
	}
	return out
}

func values(hs []sip.Header) []string {
	var out []string
	for _, h := range hs {
		out = append(out, h.Value())
	}
	return out
}

func TestRegisterUDP(t *testing.T) {
	r := Start(t, Options{})
	c := newUAC(t)
	const c1, c2 = "sip:alice@10.0.0.1:5060", "sip:alice@10.0.0.2:5070;transport=tcp"

	res := do(t, c, newRegister(t, r, "udp", "call-1", 1,
		"Contact: <"+c1+">",
		"Contact: <"+c2+">;expires=60",
		"Expires: 600"))
	wantStatus(t, res, 200)
	if got, want := contacts(t, res), map[string]string{c1: "600", c2: "60"}; !mapsEqual(got, want) {
		t.Fatalf("200 contacts = %v, want %v", got, want)
	}

	bs := r.Bindings(aliceAOR)
	if len(bs) != 2 {
		t.Fatalf("bindings = %+v, want 2", bs)
	}
	if b := bs[0]; b.Contact != c1 || b.Expires != 600*time.Second || b.CallID != "call-1" || b.CSeq != 1 ||
		!strings.HasPrefix(b.Received, "127.0.0.1:") || len(b.Path) != 0 {
		t.Errorf("binding 0 = %+v", b)
	}
	if b := bs[1]; b.Contact != c2 || b.Expires != 60*time.Second {
		t.Errorf("binding 1 = %+v", b)
	}
	if got := r.Bindings("sip:alice@EXAMPLE.com:5060;transport=udp"); len(got) != 2 {
		t.Errorf("AOR lookup ignores port, params and host case: got %d bindings", len(got))
	}

	// A refresh replaces the binding.
	res = do(t, c, newRegister(t, r, "udp", "call-1", 2, "Contact: <"+c1+">", "Expires: 120"))
	wantStatus(t, res, 200)
	if got, want := contacts(t, res), map[string]string{c1: "120", c2: "60"}; !mapsEqual(got, want) {
		t.Fatalf("after refresh: 200 contacts = %v, want %v", got, want)
	}
	if b := r.Bindings(aliceAOR)[0]; b.Expires != 120*time.Second || b.CSeq != 2 {
		t.Errorf("refreshed binding = %+v", b)
	}

	// expires=0 removes one contact.
	res = do(t, c, newRegister(t, r, "udp", "call-1", 3, "Contact: <"+c2+">;expires=0", "Expires: 600"))
	wantStatus(t, res, 200)
	if got, want := contacts(t, res), map[string]string{c1: "120"}; !mapsEqual(got, want) {
		t.Fatalf("after removal: 200 contacts = %v, want %v", got, want)
	}

	// A query returns the current bindings and changes nothing.
	res = do(t, c, newRegister(t, r, "udp", "call-1", 4))
	wantStatus(t, res, 200)
	if got, want := contacts(t, res), map[string]string{c1: "120"}; !mapsEqual(got, want) {
		t.Fatalf("query: 200 contacts = %v, want %v", got, want)
	}

	// Same Call-ID with a CSeq not higher than the stored one: 500.
	res = do(t, c, newRegister(t, r, "udp", "call-1", 2, "Contact: <"+c1+">"))
	wantStatus(t, res, 500)

	if n := len(r.Requests()); n != 5 {
		t.Errorf("recorded %d requests, want 5", n)
	}
}

func mapsEqual(a, b map[string]string) bool {
	if len(a) != len(b) {
		return false
	}
	for k, v := range a {
		if w, ok := b[k]; !ok || w != v {
			return false
		}
	}
	return true
}

func TestRegisterTCP(t *testing.T) {
	r := Start(t, Options{DefaultExpires: 300})
	c := newUAC(t)
	res := do(t, c, newRegister(t, r, "tcp", "call-tcp", 1, "Contact: <sip:alice@10.0.0.1:5060;transport=tcp>"))
	wantStatus(t, res, 200)
	if got := contacts(t, res)["sip:alice@10.0.0.1:5060;transport=tcp"]; got != "300" {
		t.Errorf("expires = %q, want default 300", got)
	}
	reqs := r.Requests()
	if len(reqs) != 1 || reqs[0].Transport() != "TCP" {
		t.Fatalf("requests = %v", reqs)
	}
	if b := r.Bindings(aliceAOR); len(b) != 1 || b[0].Received != reqs[0].Source() {
		t.Errorf("bindings = %+v, source %s", b, reqs[0].Source())
	}
}

func TestSameUDPAndTCPPort(t *testing.T) {
	r := Start(t, Options{})
	if !r.Addr().Addr().IsLoopback() || r.Addr().Port() == 0 {
		t.Fatalf("Addr = %v", r.Addr())
	}
	want := "sip:" + r.Addr().String() + ";transport=udp"
	if got := r.URI("UDP"); got != want {
		t.Errorf("URI = %q, want %q", got, want)
	}
	// Both listeners are bound: a dial to the TCP side succeeds.
	conn, err := net.Dial("tcp", r.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	conn.Close()
}

func TestDigestAuth(t *testing.T) {
	r := Start(t, Options{Users: map[string]string{"alice": "secret"}})
	c := newUAC(t)
	req := newRegister(t, r, "udp", "call-auth", 1, "Contact: <sip:alice@10.0.0.1>")

	res := do(t, c, req)
	wantStatus(t, res, 401)
	www := res.GetHeader("WWW-Authenticate")
	if www == nil || !strings.Contains(www.Value(), `realm="sipedge.test"`) || !strings.Contains(www.Value(), `qop="auth"`) {
		t.Fatalf("WWW-Authenticate = %v", www)
	}
	if len(r.Bindings(aliceAOR)) != 0 {
		t.Fatal("challenged REGISTER created a binding")
	}

	res, err := c.DoDigestAuth(testCtx(t), req, res, sipgo.DigestAuth{Username: "alice", Password: "secret"})
	if err != nil {
		t.Fatal(err)
	}
	wantStatus(t, res, 200)
	if len(r.Bindings(aliceAOR)) != 1 {
		t.Fatal("no binding after authenticated REGISTER")
	}
	reqs := r.Requests()
	if len(reqs) != 2 || reqs[0].GetHeader("Authorization") != nil || reqs[1].GetHeader("Authorization") == nil {
		t.Fatalf("requests = %v", reqs)
	}
}

func TestDigestWrongPassword(t *testing.T) {
	r := Start(t, Options{Users: map[string]string{"alice": "secret"}})
	c := newUAC(t)
	req := newRegister(t, r, "udp", "call-wrong", 1, "Contact: <sip:alice@10.0.0.1>")
	res := do(t, c, req)
	wantStatus(t, res, 401)

	res, err := c.DoDigestAuth(testCtx(t), req, res, sipgo.DigestAuth{Username: "alice", Password: "guess"})
	if err != nil {
		t.Fatal(err)
	}
	wantStatus(t, res, 403)

	// An unknown user is forbidden too.
	req = newRegister(t, r, "udp", "call-unknown", 1, "Contact: <sip:alice@10.0.0.1>")
	res = do(t, c, req)
	res, err = c.DoDigestAuth(testCtx(t), req, res, sipgo.DigestAuth{Username: "mallory", Password: "secret"})
	if err != nil {
		t.Fatal(err)
	}
	wantStatus(t, res, 403)
	if len(r.Bindings(aliceAOR)) != 0 {
		t.Fatal("forbidden REGISTER created a binding")
	}
}

// TestDigestNoQOPForeignURI answers an RFC 2069 style challenge (no qop)
// with a digest over a uri that is not the Request-URI, as sipp does.
func TestDigestNoQOPForeignURI(t *testing.T) {
	r := Start(t, Options{Users: map[string]string{"alice": "secret"}, DigestNoQOP: true})
	c := newUAC(t)
	res := do(t, c, newRegister(t, r, "udp", "call-noqop", 1, "Contact: <sip:alice@10.0.0.1>"))
	wantStatus(t, res, 401)
	chal, err := digest.ParseChallenge(res.GetHeader("WWW-Authenticate").Value())
	if err != nil {
		t.Fatal(err)
	}
	if len(chal.QOP) != 0 {
		t.Fatalf("challenge has qop %v", chal.QOP)
	}
	cred, err := digest.Digest(chal, digest.Options{
		Method: "REGISTER", URI: "sip:192.0.2.1:5060", Username: "alice", Password: "secret",
	})
	if err != nil {
		t.Fatal(err)
	}
	res = do(t, c, newRegister(t, r, "udp", "call-noqop", 2,
		"Contact: <sip:alice@10.0.0.1>", "Authorization: "+cred.String()))
	wantStatus(t, res, 200)
}

// fakeClock is an Options.Now that tests move by hand.
type fakeClock struct {
	mu  sync.Mutex
	now time.Time
}

func (c *fakeClock) Now() time.Time {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.now
}

func (c *fakeClock) Advance(d time.Duration) {
	c.mu.Lock()
	c.now = c.now.Add(d)
	c.mu.Unlock()
}

func TestDigestStaleNonce(t *testing.T) {
	clock := &fakeClock{now: time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC)}
	r := Start(t, Options{Users: map[string]string{"alice": "secret"}, Now: clock.Now})
	c := newUAC(t)
	req := newRegister(t, r, "udp", "call-stale", 1, "Contact: <sip:alice@10.0.0.1>")
	res := do(t, c, req)
	wantStatus(t, res, 401)

	clock.Advance(nonceTTL + time.Second)
	auth := sipgo.DigestAuth{Username: "alice", Password: "secret"}
	res, err := c.DoDigestAuth(testCtx(t), req, res, auth)
	if err != nil {
		t.Fatal(err)
	}
	wantStatus(t, res, 401)
	if v := res.GetHeader("WWW-Authenticate").Value(); !strings.Contains(v, "stale=true") {
		t.Fatalf("stale nonce challenge = %q", v)
	}

	res, err = c.DoDigestAuth(testCtx(t), req, res, auth)
	if err != nil {
		t.Fatal(err)
	}
	wantStatus(t, res, 200)
}

func TestBindingExpiry(t *testing.T) {
	clock := &fakeClock{now: time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC)}
	r := Start(t, Options{Now: clock.Now})
	c := newUAC(t)
	wantStatus(t, do(t, c, newRegister(t, r, "udp", "call-exp", 1,
		"Contact: <sip:alice@10.0.0.1>;expires=30", "Contact: <sip:alice@10.0.0.2>;expires=90")), 200)

	clock.Advance(60 * time.Second)
	bs := r.Bindings(aliceAOR)
	if len(bs) != 1 || bs[0].Contact != "sip:alice@10.0.0.2" {
		t.Fatalf("bindings after 60s = %+v", bs)
	}
	res := do(t, c, newRegister(t, r, "udp", "call-exp", 2))
	if got, want := contacts(t, res), map[string]string{"sip:alice@10.0.0.2": "30"}; !mapsEqual(got, want) {
		t.Fatalf("query after 60s: contacts = %v, want %v", got, want)
	}
}

func TestContactStar(t *testing.T) {
	r := Start(t, Options{})
	c := newUAC(t)
	wantStatus(t, do(t, c, newRegister(t, r, "udp", "call-star", 1,
		"Contact: <sip:alice@10.0.0.1>", "Contact: <sip:alice@10.0.0.2>")), 200)

	// * needs Expires: 0.
	wantStatus(t, do(t, c, newRegister(t, r, "udp", "call-star", 2, "Contact: *", "Expires: 60")), 400)
	if n := len(r.Bindings(aliceAOR)); n != 2 {
		t.Fatalf("rejected * removed bindings: %d left", n)
	}

	res := do(t, c, newRegister(t, r, "udp", "call-star", 3, "Contact: *", "Expires: 0"))
	wantStatus(t, res, 200)
	if got := res.GetHeaders("Contact"); len(got) != 0 {
		t.Errorf("200 to * lists contacts %v", values(got))
	}
	if bs := r.Bindings(aliceAOR); len(bs) != 0 {
		t.Errorf("bindings after * = %+v", bs)
	}
}

func TestPathStoredAndEchoed(t *testing.T) {
	r := Start(t, Options{})
	c := newUAC(t)
	paths := []string{"<sip:tok1@127.0.0.1:5099;lr;ob>", "<sip:p2.example.net;lr>"}
	res := do(t, c, newRegister(t, r, "udp", "call-path", 1,
		"Contact: <sip:alice@10.0.0.1>",
		"Supported: outbound, path",
		"Path: "+paths[0],
		"Path: "+paths[1]))
	wantStatus(t, res, 200)
	if got := values(res.GetHeaders("Path")); !slices.Equal(got, paths) {
		t.Errorf("200 Path = %q, want %q", got, paths)
	}
	if h := res.GetHeader("Supported"); h == nil || h.Value() != "path" {
		t.Errorf("200 Supported = %v", h)
	}
	bs := r.Bindings(aliceAOR)
	if len(bs) != 1 || !slices.Equal(bs[0].Path, paths) {
		t.Fatalf("bindings = %+v", bs)
	}

	// Comma-separated Path values are split into entries.
	res = do(t, c, newRegister(t, r, "udp", "call-path", 2,
		"Contact: <sip:alice@10.0.0.1>", "Path: "+paths[0]+", "+paths[1]))
	wantStatus(t, res, 200)
	if bs := r.Bindings(aliceAOR); !slices.Equal(bs[0].Path, paths) {
		t.Fatalf("comma list: path = %q", bs[0].Path)
	}
}

func TestRequirePath(t *testing.T) {
	r := Start(t, Options{RequirePath: true})
	c := newUAC(t)
	res := do(t, c, newRegister(t, r, "udp", "call-req", 1,
		"Contact: <sip:alice@10.0.0.1>", "Path: <sip:edge@127.0.0.1:5099;lr>"))
	wantStatus(t, res, 420)
	if h := res.GetHeader("Unsupported"); h == nil || h.Value() != "path" {
		t.Errorf("Unsupported = %v", h)
	}

	res = do(t, c, newRegister(t, r, "udp", "call-req", 2,
		"Contact: <sip:alice@10.0.0.1>", "Path: <sip:edge@127.0.0.1:5099;lr>", "Supported: path"))
	wantStatus(t, res, 200)

	// Without Path there is nothing to require.
	res = do(t, c, newRegister(t, r, "udp", "call-req", 3, "Contact: <sip:alice@10.0.0.1>"))
	wantStatus(t, res, 200)
}

func newRequest(t *testing.T, r *Registrar, method sip.RequestMethod, transport string) *sip.Request {
	t.Helper()
	var ruri sip.Uri
	if err := sip.ParseUri(r.URI(transport), &ruri); err != nil {
		t.Fatal(err)
	}
	ruri.User = "core"
	return sip.NewRequest(method, ruri)
}

func TestNextRequest(t *testing.T) {
	r := Start(t, Options{})
	c := newUAC(t)

	short, cancel := context.WithTimeout(t.Context(), 20*time.Millisecond)
	defer cancel()
	if _, err := r.NextRequest(short); !errors.Is(err, context.DeadlineExceeded) {
		t.Fatalf("NextRequest on idle registrar: %v", err)
	}

	// A waiter started before the request arrives gets it.
	got := make(chan *sip.Request, 1)
	go func() {
		req, err := r.NextRequest(testCtx(t))
		if err != nil {
			t.Error(err)
		}
		got <- req
	}()
	wantStatus(t, do(t, c, newRequest(t, r, sip.OPTIONS, "udp")), 200)
	if req := <-got; req == nil || req.Method != sip.OPTIONS {
		t.Fatalf("waiter got %v", req)
	}

	// Requests already received are handed out in order, without waiting.
	wantStatus(t, do(t, c, newRequest(t, r, sip.MESSAGE, "udp")), 200)
	wantStatus(t, do(t, c, newRequest(t, r, sip.INFO, "tcp")), 200)
	for _, want := range []sip.RequestMethod{sip.MESSAGE, sip.INFO} {
		req, err := r.NextRequest(testCtx(t))
		if err != nil || req.Method != want {
			t.Fatalf("NextRequest = %v, %v; want %s", req, err, want)
		}
	}

	r.Close()
	if _, err := r.NextRequest(testCtx(t)); !errors.Is(err, ErrClosed) {
		t.Fatalf("NextRequest after Close: %v", err)
	}
}

func TestOtherMethods(t *testing.T) {
	r := Start(t, Options{})
	c := newUAC(t)
	wantStatus(t, do(t, c, newRequest(t, r, sip.OPTIONS, "udp")), 200)

	res := do(t, c, newRequest(t, r, sip.INVITE, "tcp"))
	wantStatus(t, res, 200)
	if res.Contact() == nil {
		t.Error("200 to INVITE has no Contact")
	}
	if n := len(r.Requests()); n != 2 {
		t.Errorf("recorded %d requests, want 2", n)
	}
}

// TestSilent checks that a silent registrar records but does not answer:
// the client's REGISTER is answered only after SetSilent(false), through a
// retransmission.
func TestSilent(t *testing.T) {
	r := Start(t, Options{Silent: true})
	c := newUAC(t)
	ctx := testCtx(t)
	tx, err := c.TransactionRequest(ctx, newRegister(t, r, "udp", "call-silent", 1, "Contact: <sip:alice@10.0.0.1>"))
	if err != nil {
		t.Fatal(err)
	}
	defer tx.Terminate()
	first, err := r.NextRequest(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if len(r.Bindings(aliceAOR)) != 0 {
		t.Fatal("silent registrar created a binding")
	}
	r.SetSilent(false)

	select {
	case res := <-tx.Responses():
		wantStatus(t, res, 200)
	case <-tx.Done():
		t.Fatal(tx.Err())
	case <-ctx.Done():
		t.Fatal(ctx.Err())
	}
	reqs := r.Requests()
	if len(reqs) < 2 {
		t.Fatalf("answered without a retransmission: the first REGISTER was answered")
	}
	for _, req := range reqs {
		if b, _ := req.Via().Params.Get("branch"); b != branch(first) {
			t.Errorf("unexpected request %s", req.StartLine())
		}
	}
}

func branch(req *sip.Request) string {
	b, _ := req.Via().Params.Get("branch")
	return b
}

// startEdge runs a stand-in for sipedge on its own socket that answers
// every request with 200 and reports it.
func startEdge(t *testing.T, transport string) (string, <-chan *sip.Request) {
	t.Helper()
	ua, err := sipgo.NewUA(
		sipgo.WithUserAgentTransportLayerOptions(sip.WithTransportLayerLogger(quiet)),
		sipgo.WithUserAgentTransactionLayerOptions(sip.WithTransactionLayerLogger(quiet)),
	)
	if err != nil {
		t.Fatal(err)
	}
	srv, err := sipgo.NewServer(ua, sipgo.WithServerLogger(quiet))
	if err != nil {
		t.Fatal(err)
	}
	got := make(chan *sip.Request, 10)
	srv.OnNoRoute(func(req *sip.Request, tx sip.ServerTransaction) {
		got <- req.Clone()
		tx.Respond(sip.NewResponseFromRequest(req, 200, "OK", nil))
	})

	var (
		addr  string
		stop  func() error
		serve func() error
	)
	switch transport {
	case "udp":
		pc, err := net.ListenPacket("udp4", "127.0.0.1:0")
		if err != nil {
			t.Fatal(err)
		}
		addr, stop, serve = pc.LocalAddr().String(), pc.Close, func() error { return srv.ServeUDP(pc) }
	case "tcp":
		ln, err := net.Listen("tcp4", "127.0.0.1:0")
		if err != nil {
			t.Fatal(err)
		}
		addr, stop, serve = ln.Addr().String(), ln.Close, func() error { return srv.ServeTCP(ln) }
	}
	done := make(chan struct{})
	go func() {
		defer close(done)
		serve()
	}()
	t.Cleanup(func() {
		stop()
		<-done
		ua.Close()
	})
	return addr, got
}

func TestSendViaPath(t *testing.T) {
	for _, transport := range []string{"udp", "tcp"} {
		t.Run(transport, func(t *testing.T) {
			edge, received := startEdge(t, transport)
			r := Start(t, Options{})
			c := newUAC(t)
			path := "<sip:tok@" + edge + ";transport=" + transport + ";lr>"
			wantStatus(t, do(t, c, newRegister(t, r, transport, "call-send", 1,
				"Contact: <sip:alice@10.0.0.1:5060;ob>", "Supported: path", "Path: "+path)), 200)

			bs := r.Bindings(aliceAOR)
			if len(bs) != 1 {
				t.Fatalf("bindings = %+v", bs)
			}
			req, err := RequestTo(sip.MESSAGE, aliceAOR, bs[0])
			if err != nil {
				t.Fatal(err)
			}
			res, err := r.Send(testCtx(t), req)
			if err != nil {
				t.Fatal(err)
			}
			wantStatus(t, res, 200)

			got := <-received
			if got.Recipient.String() != "sip:alice@10.0.0.1:5060;ob" {
				t.Errorf("Request-URI = %s", got.Recipient.String())
			}
			if rt := got.Route(); rt == nil || rt.Address.Host != "127.0.0.1" || !strings.Contains(rt.Value(), "tok@") {
				t.Errorf("Route = %v", rt)
			}
			if got.To().Address.String() != aliceAOR {
				t.Errorf("To = %s", got.To().Address.String())
			}
			if transport == "udp" && got.Source() != r.Addr().String() {
				t.Errorf("UDP request left from %s, want the listening socket %s", got.Source(), r.Addr())
			}
			if req.Via() != nil {
				t.Error("Send modified the caller's request")
			}
		})
	}
}

// TestSendRightAfterStart sends over UDP before the registrar has received
// anything: the listening socket must already be usable as Laddr.
func TestSendRightAfterStart(t *testing.T) {
	edge, received := startEdge(t, "udp")
	for range 20 {
		r := Start(t, Options{})
		req, err := RequestTo(sip.OPTIONS, aliceAOR, Binding{Contact: "sip:alice@" + edge})
		if err != nil {
			t.Fatal(err)
		}
		res, err := r.Send(testCtx(t), req)
		if err != nil {
			t.Fatal(err)
		}
		wantStatus(t, res, 200)
		if got := <-received; got.Source() != r.Addr().String() {
			t.Fatalf("request left from %s, want %s", got.Source(), r.Addr())
		}
		r.Close()
	}
}

func TestSendAfterClose(t *testing.T) {
	r := Start(t, Options{})
	r.Close()
	r.Close() // idempotent
	req, err := RequestTo(sip.OPTIONS, aliceAOR, Binding{Contact: "sip:alice@127.0.0.1:9"})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := r.Send(testCtx(t), req); !errors.Is(err, ErrClosed) {
		t.Fatalf("Send after Close: %v", err)
	}
}
