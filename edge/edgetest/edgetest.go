// Package edgetest starts an edge on 127.0.0.1:0 for tests and gives them
// a raw SIP phone that speaks text over real sockets.
package edgetest

import (
	"bufio"
	"bytes"
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"fmt"
	"io"
	"log/slog"
	"math/big"
	"net"
	"net/netip"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/emiago/sipgo/sip"
	"github.com/sipedge/sipedge/edge"
	"github.com/sipedge/sipedge/edge/audit"
	"github.com/sipedge/sipedge/edge/clock"
	"github.com/sipedge/sipedge/edge/registry"
	"github.com/sipedge/sipedge/nat"
	"github.com/sipedge/sipedge/ratelimit"
	"github.com/sipedge/sipedge/upstream"
)

// Key is the fixed flow-token key tests use.
var Key = bytes.Repeat([]byte{0x5e}, 32)

// Config is every section a test edge reads.
type Config struct {
	Access       edge.AccessConfig
	Core         upstream.Config
	Registration edge.RegistrationConfig
	NAT          nat.Config
	RateLimit    ratelimit.Config
	Drain        edge.DrainConfig
	Survival     edge.SurvivalConfig
	Wake         edge.WakeConfig
	Tenants      []edge.TenantConfig
}

func (c Config) edge() edge.Config {
	return edge.Config{Access: c.Access, Registration: c.Registration, Core: c.Core, NAT: c.NAT, Drain: c.Drain, Survival: c.Survival, Wake: c.Wake, Tenants: c.Tenants}
}

// Hooks let a test watch the edge and move its time.
type Hooks struct {
	OnEvent   func(registry.Event) // the registry's events
	RateLimit ratelimit.Events
	Clock     clock.Clock // nil: the system clock
	// Restore is state from an earlier run, saved at StateSaved, loaded
	// into the registry before the edge starts.
	Restore    []registry.Binding
	StateSaved time.Time
	// CoreTLS is the TLS configuration toward TLS cores.
	CoreTLS *tls.Config
	// Log, if set, gets the edge's log lines too.
	Log io.Writer
	// Events gets the edge's own audit events; Meter counts requests.
	Events func(audit.Event)
	Meter  edge.Meter
	// Pusher wakes phones registered with RFC 8599 parameters (nil: none).
	Pusher edge.Pusher
}

// Edge is a running edge.
type Edge struct {
	*edge.Server
	UDP, TCP     netip.AddrPort // access side
	TLS, WS, WSS netip.AddrPort // access side, when configured
	Signer       *nat.Signer
	registry     *registry.Registry
	limiter      *ratelimit.Limiter
	flows        *nat.FlowTable
	core         netip.AddrPort
	stop         func()
	cfg          edge.Config
}

// Config is the edge configuration it runs with, as a reload would take
// it.
func (e *Edge) Config() edge.Config { return e.cfg }

// Stop shuts the edge down now, as its test's end would; the sockets are
// free for another edge afterwards.
func (e *Edge) Stop() { e.stop() }

// Bindings is the registry of registrations the core accepted.
func (e *Edge) Bindings() *registry.Registry { return e.registry }

// Limiter is the rate limiter and ban list.
func (e *Edge) Limiter() *ratelimit.Limiter { return e.limiter }

// Flows is the edge's flow table.
func (e *Edge) Flows() *nat.FlowTable { return e.flows }

// CoreAddr is the edge's core-side address (where Path points).
func (e *Edge) CoreAddr() netip.AddrPort { return e.core }

// Start runs an edge toward core (a SIP URI) with the default config as
// changed by mutate. It stops when the test ends.
func Start(t testing.TB, core string, mutate func(*Config)) *Edge {
	t.Helper()
	return StartWith(t, core, mutate, Hooks{})
}

// StartWith is Start with hooks.
func StartWith(t testing.TB, core string, mutate func(*Config), h Hooks) *Edge {
	t.Helper()
	cfg := Config{
		Access:       edge.AccessConfig{UDP: []string{"127.0.0.1:0"}, TCP: []string{"127.0.0.1:0"}, MaxDialogs: 1000, HideTopology: true},
		Core:         upstream.DefaultConfig(),
		Registration: edge.DefaultRegistrationConfig(),
		NAT:          nat.DefaultConfig(),
		RateLimit:    ratelimit.DefaultConfig(),
		Drain:        edge.DrainConfig{Grace: time.Second, RetryAfter: 30 * time.Second},
		Wake:         edge.DefaultWakeConfig(),
	}
	cfg.Core.Listen = "127.0.0.1:0"
	cfg.Core.Upstreams = []string{core}
	cfg.Core.Timeout = 2 * time.Second
	if mutate != nil {
		mutate(&cfg)
	}
	clk := h.Clock
	if clk == nil {
		clk = clock.Real{}
	}
	socks, err := edge.Listen(cfg.Access, cfg.Core.Listen)
	if err != nil {
		t.Fatal(err)
	}
	signer, err := nat.NewSigner(nat.Keys{Current: Key}, time.Hour, clk.Now)
	if err != nil {
		t.Fatal(err)
	}
	tw := &testWriter{t: t}
	t.Cleanup(tw.stop) // runs last: sipgo may still log while transactions end
	// SIPEDGE_TEST_LOG=debug shows sipgo's and the edge's debug lines.
	level := slog.LevelInfo
	_ = level.UnmarshalText([]byte(os.Getenv("SIPEDGE_TEST_LOG")))
	var out io.Writer = tw
	if h.Log != nil {
		out = io.MultiWriter(tw, h.Log)
	}
	log := slog.New(slog.NewTextHandler(out, &slog.HandlerOptions{Level: level}))

	srv, reg, limiter, flows := build(t, cfg, h, clk, socks, signer, log)
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- srv.Serve(ctx) }()
	var once sync.Once
	stop := func() {
		once.Do(func() {
			cancel()
			select {
			case <-done:
			case <-time.After(10 * time.Second):
				t.Error("edge did not stop within 10s")
			}
		})
	}
	t.Cleanup(stop)
	select {
	case <-srv.Ready():
	case err := <-done:
		t.Fatalf("edge stopped before it was ready: %v", err)
	case <-time.After(10 * time.Second):
		t.Fatal("edge not ready within 10s")
	}
	e := &Edge{Server: srv, Signer: signer, registry: reg, limiter: limiter, flows: flows, stop: stop, cfg: cfg.edge(),
		core: netip.MustParseAddrPort(socks.CoreUDP.LocalAddr().String())}
	e.addrs(socks)
	return e
}

// build puts the parts together the way cmd/sipedge does, with the
// test's clock and observers.
func build(t testing.TB, cfg Config, h Hooks, clk clock.Clock, socks *edge.Sockets, signer *nat.Signer, log *slog.Logger) (*edge.Server, *registry.Registry, *ratelimit.Limiter, *nat.FlowTable) {
	t.Helper()
	must := func(err error) {
		t.Helper()
		if err != nil {
			socks.Close()
			t.Fatal(err)
		}
	}
	pools, err := edge.NewPools(cfg.edge(), nil)
	must(err)
	limiter, err := ratelimit.New(cfg.RateLimit, clk.Now, h.RateLimit)
	must(err)
	var reg *registry.Registry
	flows, err := nat.NewFlowTable(cfg.NAT.MaxFlows, clk.Now, nat.FlowEvents{OnDead: func(k nat.FlowKey, why string) { reg.FlowDead(k, why) }})
	must(err)
	keepaliver := func(kc nat.KeepaliveConfig) *nat.Keepaliver {
		pingCap, err := ratelimit.NewRate(float64(kc.MaxPerSecond), kc.MaxPerSecond)
		must(err)
		ka, err := nat.NewKeepaliver(kc, nat.KeepaliverDeps{Flows: flows, Now: clk.Now, Cap: pingCap})
		must(err)
		return ka
	}
	keepalive, probe := keepaliver(cfg.NAT.KeepaliveConfig), keepaliver(cfg.NAT.StreamProbe())
	conns := edge.NewConns()
	reg, err = registry.New(registry.Deps{Now: clk.Now, Flows: flows, UDP: keepalive, Stream: probe,
		Sources: limiter, StreamOpen: conns.Open, OnEvent: h.OnEvent, RecoverHold: cfg.Registration.MaxExpires,
		Wakes: func(b registry.Binding) bool {
			return h.Pusher != nil && b.Push.Wakes() && h.Pusher.Supports(b.Push.Provider)
		}})
	must(err)
	reg.Restore(h.Restore, time.Second)
	srv, err := edge.New(cfg.edge(), socks,
		edge.Deps{Log: log, Clock: clk, Signer: signer, Pools: pools, Limiter: limiter, Flows: flows,
			Keepalive: keepalive, Probe: probe, Registry: reg, Conns: conns, StateSaved: h.StateSaved, CoreTLS: h.CoreTLS,
			Events: h.Events, Meter: h.Meter, Pusher: h.Pusher})
	must(err)
	return srv, reg, limiter, flows
}

// addrs notes where each access listener is.
func (e *Edge) addrs(socks *edge.Sockets) {
	if len(socks.UDP) > 0 {
		e.UDP = netip.MustParseAddrPort(socks.UDP[0].LocalAddr().String())
	}
	if len(socks.TCP) > 0 {
		e.TCP = netip.MustParseAddrPort(socks.TCP[0].Addr().String())
	}
	if len(socks.TLS) > 0 {
		e.TLS = netip.MustParseAddrPort(socks.TLS[0].Addr().String())
	}
	if len(socks.WS) > 0 {
		e.WS = netip.MustParseAddrPort(socks.WS[0].Addr().String())
	}
	if len(socks.WSS) > 0 {
		e.WSS = netip.MustParseAddrPort(socks.WSS[0].Addr().String())
	}
}

// testWriter sends log lines to the test log until the test ends.
type testWriter struct {
	t       testing.TB
	mu      sync.Mutex
	stopped bool
}

func (w *testWriter) Write(p []byte) (int, error) {
	w.mu.Lock()
	defer w.mu.Unlock()
	if !w.stopped {
		w.t.Log(strings.TrimRight(string(p), "\n"))
	}
	return len(p), nil
}

func (w *testWriter) stop() {
	w.mu.Lock()
	w.stopped = true
	w.mu.Unlock()
}

// Phone is a raw SIP client on one socket.
type Phone struct {
	t      testing.TB
	conn   net.Conn
	stream *bufio.Reader // TCP and TLS
	tp     string        // transport name when not plain UDP/TCP
	Local  netip.AddrPort
}

// Dial connects a phone to the edge over "udp" or "tcp" from 127.0.0.1.
func Dial(t testing.TB, network string, to netip.AddrPort) *Phone {
	t.Helper()
	return DialFrom(t, network, netip.Addr{}, to)
}

// DialFrom is Dial from a chosen local address (any of 127.0.0.0/8 works
// on Linux), so tests can play many sources.
func DialFrom(t testing.TB, network string, from netip.Addr, to netip.AddrPort) *Phone {
	t.Helper()
	d := net.Dialer{}
	if from.IsValid() {
		if network == "tcp" {
			d.LocalAddr = net.TCPAddrFromAddrPort(netip.AddrPortFrom(from, 0))
		} else {
			d.LocalAddr = net.UDPAddrFromAddrPort(netip.AddrPortFrom(from, 0))
		}
	}
	c, err := d.Dial(network, to.String())
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	p := &Phone{t: t, conn: c, Local: netip.MustParseAddrPort(c.LocalAddr().String())}
	if network == "tcp" {
		p.stream = bufio.NewReader(c)
	}
	return p
}

// Transport is the Via transport name of the phone's socket.
func (p *Phone) Transport() string {
	switch {
	case p.tp != "":
		return p.tp
	case p.stream != nil:
		return "TCP"
	}
	return "UDP"
}

// DialTLS connects a phone over TLS, trusting any certificate.
func DialTLS(t testing.TB, to netip.AddrPort) *Phone {
	t.Helper()
	c, err := tls.Dial("tcp", to.String(), &tls.Config{InsecureSkipVerify: true})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	return &Phone{t: t, conn: c, stream: bufio.NewReader(c), tp: "TLS", Local: netip.MustParseAddrPort(c.LocalAddr().String())}
}

// Close closes the phone's socket.
func (p *Phone) Close() { p.conn.Close() }

// Send writes a raw message; "\n" line ends become "\r\n" and
// Content-Length is not touched.
func (p *Phone) Send(msg string) {
	p.t.Helper()
	msg = strings.ReplaceAll(strings.ReplaceAll(msg, "\r\n", "\n"), "\n", "\r\n")
	if _, err := p.conn.Write([]byte(msg)); err != nil {
		p.t.Fatal(err)
	}
}

// Recv reads the next SIP message within d.
func (p *Phone) Recv(d time.Duration) (sip.Message, error) {
	p.conn.SetReadDeadline(time.Now().Add(d))
	var raw []byte
	if p.stream == nil {
		buf := make([]byte, 65535)
		n, err := p.conn.Read(buf)
		if err != nil {
			return nil, err
		}
		raw = buf[:n]
	} else {
		var err error
		if raw, err = readStreamMessage(p.stream); err != nil {
			return nil, err
		}
	}
	return sip.ParseMessage(raw)
}

// MustRecvResponse reads the next message and fails unless it is a response.
func (p *Phone) MustRecvResponse(d time.Duration) *sip.Response {
	p.t.Helper()
	m, err := p.Recv(d)
	if err != nil {
		p.t.Fatalf("no response: %v", err)
	}
	res, ok := m.(*sip.Response)
	if !ok {
		p.t.Fatalf("got a request, want a response:\n%s", m)
	}
	return res
}

// readStreamMessage reads one message framed by Content-Length.
func readStreamMessage(r *bufio.Reader) ([]byte, error) {
	var head bytes.Buffer
	for {
		line, err := r.ReadString('\n')
		if err != nil {
			return nil, err
		}
		if head.Len() == 0 && (line == "\r\n" || line == "\n") {
			continue // keepalive CRLF
		}
		head.WriteString(line)
		if line == "\r\n" {
			break
		}
	}
	n := 0
	for _, l := range strings.Split(head.String(), "\r\n") {
		name, val, ok := strings.Cut(l, ":")
		if ok && (strings.EqualFold(strings.TrimSpace(name), "content-length") || strings.TrimSpace(name) == "l") {
			n, _ = strconv.Atoi(strings.TrimSpace(val))
		}
	}
	body := make([]byte, n)
	if _, err := io.ReadFull(r, body); err != nil {
		return nil, err
	}
	return append(head.Bytes(), body...), nil
}

// Reg describes a REGISTER for Register to build.
type Reg struct {
	User, Domain string
	CallID       string
	CSeq         int
	Contact      string // full Contact header value; default <sip:USER@PHONE;transport=..>
	Expires      string // Expires header value; "" means 3600, "-" none
	Extra        string // more header lines, "\n"-separated
}

// Register builds a REGISTER from the phone, with rport in its Via.
func (p *Phone) Register(r Reg) string {
	if r.Domain == "" {
		r.Domain = "example.com"
	}
	if r.CallID == "" {
		r.CallID = "reg-" + r.User + "-" + p.Local.String()
	}
	if r.CSeq == 0 {
		r.CSeq = 1
	}
	if r.Contact == "" {
		r.Contact = fmt.Sprintf("<sip:%s@%s;transport=%s>", r.User, p.Local, strings.ToLower(p.Transport()))
	}
	var b strings.Builder
	fmt.Fprintf(&b, "REGISTER sip:%s SIP/2.0\n", r.Domain)
	fmt.Fprintf(&b, "Via: SIP/2.0/%s %s;branch=z9hG4bK%s-%d;rport\n", p.Transport(), p.Local, sanitize(r.CallID), r.CSeq)
	fmt.Fprintf(&b, "Max-Forwards: 70\n")
	fmt.Fprintf(&b, "From: <sip:%s@%s>;tag=f%d\n", r.User, r.Domain, r.CSeq)
	fmt.Fprintf(&b, "To: <sip:%s@%s>\n", r.User, r.Domain)
	fmt.Fprintf(&b, "Call-ID: %s\n", r.CallID)
	fmt.Fprintf(&b, "CSeq: %d REGISTER\n", r.CSeq)
	if r.Contact != "-" {
		fmt.Fprintf(&b, "Contact: %s\n", r.Contact)
	}
	switch r.Expires {
	case "":
		b.WriteString("Expires: 3600\n")
	case "-":
	default:
		fmt.Fprintf(&b, "Expires: %s\n", r.Expires)
	}
	if r.Extra != "" {
		b.WriteString(strings.TrimRight(r.Extra, "\n") + "\n")
	}
	b.WriteString("Content-Length: 0\n\n")
	return b.String()
}

func sanitize(s string) string {
	return strings.Map(func(r rune) rune {
		if r >= 'a' && r <= 'z' || r >= 'A' && r <= 'Z' || r >= '0' && r <= '9' {
			return r
		}
		return '-'
	}, s)
}

// MustRecvRequest reads the next message and fails unless it is a request
// of the given method.
func (p *Phone) MustRecvRequest(method string, d time.Duration) *sip.Request {
	p.t.Helper()
	m, err := p.Recv(d)
	if err != nil {
		p.t.Fatalf("no %s: %v", method, err)
	}
	req, ok := m.(*sip.Request)
	if !ok || string(req.Method) != method {
		p.t.Fatalf("got %q, want a %s request", strings.SplitN(m.String(), "\r\n", 2)[0], method)
	}
	return req
}

// Respond sends a response to req built the way a UAS does (RFC 3261
// §8.2.6): Vias, From, To (with toTag), Call-ID and CSeq copied, and for
// INVITE the Record-Route and a Contact at the phone.
func (p *Phone) Respond(req *sip.Request, code int, reason, toTag string) {
	p.t.Helper()
	var b strings.Builder
	fmt.Fprintf(&b, "SIP/2.0 %d %s\n", code, reason)
	for _, h := range req.GetHeaders("Via") {
		b.WriteString("Via: " + h.Value() + "\n")
	}
	if req.IsInvite() && code > 100 && code < 300 {
		for _, h := range req.GetHeaders("Record-Route") {
			b.WriteString("Record-Route: " + h.Value() + "\n")
		}
		fmt.Fprintf(&b, "Contact: <sip:callee@%s;transport=%s>\n", p.Local, strings.ToLower(p.Transport()))
	}
	b.WriteString("From: " + req.From().Value() + "\n")
	to := req.To().Value()
	if toTag != "" && !req.To().Params.Has("tag") {
		to += ";tag=" + toTag
	}
	b.WriteString("To: " + to + "\n")
	b.WriteString("Call-ID: " + req.CallID().Value() + "\n")
	b.WriteString("CSeq: " + req.CSeq().Value() + "\n")
	b.WriteString("Content-Length: 0\n\n")
	p.Send(b.String())
}

// SendRaw writes bytes as they are.
func (p *Phone) SendRaw(b string) {
	p.t.Helper()
	if _, err := p.conn.Write([]byte(b)); err != nil {
		p.t.Fatal(err)
	}
}

// RecvRaw reads the next datagram (UDP) or chunk (TCP) as bytes, with
// the address it came from.
// Silent waits d and returns whatever arrives meanwhile, nil if nothing
// does: for tests that something is not sent.
func (p *Phone) Silent(d time.Duration) []byte {
	b, err := p.read(d)
	if err != nil {
		return nil
	}
	return b
}

// read returns the next bytes that arrive within d.
func (p *Phone) read(d time.Duration) ([]byte, error) {
	p.conn.SetReadDeadline(time.Now().Add(d))
	buf := make([]byte, 65535)
	var n int
	var err error
	if p.stream != nil {
		n, err = p.stream.Read(buf)
	} else {
		n, err = p.conn.Read(buf)
	}
	return buf[:n], err
}

func (p *Phone) RecvRaw(d time.Duration) ([]byte, netip.AddrPort) {
	p.t.Helper()
	b, err := p.read(d)
	if err != nil {
		p.t.Fatalf("nothing received: %v", err)
	}
	return b, netip.MustParseAddrPort(p.conn.RemoteAddr().String())
}

// SelfSignedCert writes a fresh self-signed certificate for 127.0.0.1 and
// its key into dir and returns their paths.
func SelfSignedCert(t testing.TB, dir string) (certFile, keyFile string) {
	t.Helper()
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	tmpl := &x509.Certificate{
		SerialNumber: big.NewInt(1),
		Subject:      pkix.Name{CommonName: "sipedge test"},
		NotBefore:    time.Now().Add(-time.Hour),
		NotAfter:     time.Now().Add(time.Hour),
		IPAddresses:  []net.IP{net.IPv4(127, 0, 0, 1)},
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &key.PublicKey, key)
	if err != nil {
		t.Fatal(err)
	}
	kb, err := x509.MarshalECPrivateKey(key)
	if err != nil {
		t.Fatal(err)
	}
	certFile, keyFile = filepath.Join(dir, "cert.pem"), filepath.Join(dir, "key.pem")
	if err := os.WriteFile(certFile, pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der}), 0o600); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(keyFile, pem.EncodeToMemory(&pem.Block{Type: "EC PRIVATE KEY", Bytes: kb}), 0o600); err != nil {
		t.Fatal(err)
	}
	return certFile, keyFile
}
