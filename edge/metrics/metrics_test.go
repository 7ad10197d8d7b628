package metrics_test

import (
	"fmt"
	"net/http"
	"net/http/httptest"
	"net/netip"
	"testing"
	"time"

	"github.com/emiago/sipgo/sip"
	dto "github.com/prometheus/client_model/go"
	"github.com/prometheus/common/expfmt"
	"github.com/prometheus/common/model"
	"github.com/sipedge/sipedge/edge/audit"
	"github.com/sipedge/sipedge/edge/edgetest"
	"github.com/sipedge/sipedge/edge/metrics"
	"github.com/sipedge/sipedge/edge/registry"
	"github.com/sipedge/sipedge/ratelimit"
	"github.com/sipedge/sipedge/upstream/upstreamtest"
)

const wait = 5 * time.Second

// scrape fetches the metrics over HTTP and parses them as Prometheus
// does.
func scrape(t *testing.T, url string) map[string]*dto.MetricFamily {
	t.Helper()
	res, err := http.Get(url)
	if err != nil {
		t.Fatal(err)
	}
	defer res.Body.Close()
	parser := expfmt.NewTextParser(model.UTF8Validation)
	fams, err := parser.TextToMetricFamilies(res.Body)
	if err != nil {
		t.Fatalf("not the Prometheus text format: %v", err)
	}
	return fams
}

// value sums the samples of name whose labels include want.
func value(fams map[string]*dto.MetricFamily, name string, want map[string]string) (float64, bool) {
	f := fams[name]
	if f == nil {
		return 0, false
	}
	sum, found := 0.0, false
next:
	for _, m := range f.Metric {
		labels := map[string]string{}
		for _, l := range m.Label {
			labels[l.GetName()] = l.GetValue()
		}
		for k, v := range want {
			if labels[k] != v {
				continue next
			}
		}
		found = true
		switch {
		case m.Counter != nil:
			sum += m.Counter.GetValue()
		case m.Gauge != nil:
			sum += m.Gauge.GetValue()
		case m.Histogram != nil:
			sum += float64(m.Histogram.GetSampleCount())
		}
	}
	return sum, found
}

// N registrations and M bans, and the metrics say so.
func TestMetricsKnownScenario(t *testing.T) {
	const udpPhones, tcpPhones, bans = 5, 2, 3
	core := upstreamtest.Start(t, upstreamtest.Options{})
	m := metrics.New(metrics.Sources{})
	e := edgetest.StartWith(t, core.URI("udp"), nil, edgetest.Hooks{
		Meter:     m,
		OnEvent:   func(ev registry.Event) { m.Event(audit.FromRegistry(ev)) },
		RateLimit: ratelimit.Events{OnBan: func(b ratelimit.Ban) { m.Event(audit.FromBan(b, false)) }},
	})
	m.SetSources(metrics.Sources{Registry: e.Bindings(), Flows: e.Flows(), Limiter: e.Limiter(),
		Cores:   func() []metrics.Core { return []metrics.Core{{Target: core.URI("udp"), State: "up"}} },
		StoreOK: func() bool { return true }, Transactions: e.Transactions, LeanFallbacks: e.LeanFallbacks})
	srv := httptest.NewServer(m.Handler())
	defer srv.Close()

	for i := range udpPhones + tcpPhones {
		network, to := "udp", e.UDP
		if i >= udpPhones {
			network, to = "tcp", e.TCP
		}
		p := edgetest.Dial(t, network, to)
		p.Send(p.Register(edgetest.Reg{User: fmt.Sprintf("u%d", i)}))
		if res := p.MustRecvResponse(wait); res.StatusCode != 200 {
			t.Fatalf("REGISTER %d got %d", i, res.StatusCode)
		}
	}
	stranger := edgetest.Dial(t, "udp", e.UDP)
	stranger.Send("MESSAGE sip:x@example.com SIP/2.0\nVia: SIP/2.0/UDP " + stranger.Local.String() + ";branch=z9hG4bK-m1;rport\n" +
		"Max-Forwards: 70\nFrom: <sip:s@example.com>;tag=1\nTo: <sip:x@example.com>\nCall-ID: m1\nCSeq: 1 MESSAGE\nContent-Length: 0\n\n")
	if res := stranger.MustRecvResponse(wait); res.StatusCode != 403 {
		t.Fatalf("MESSAGE without a binding got %d", res.StatusCode)
	}
	for i := range bans {
		e.Limiter().Ban(netip.PrefixFrom(netip.AddrFrom4([4]byte{203, 0, 113, byte(i + 1)}), 32), ratelimit.ReasonManual, time.Hour)
	}

	fams := scrape(t, srv.URL)
	for _, c := range []struct {
		name   string
		labels map[string]string
		want   float64
	}{
		{"sipedge_bindings", map[string]string{"transport": "UDP", "tenant": "default"}, udpPhones},
		{"sipedge_bindings", map[string]string{"transport": "TCP"}, tcpPhones},
		{"sipedge_flows", map[string]string{"transport": "UDP"}, udpPhones},
		{"sipedge_bans", nil, bans},
		{"sipedge_events_total", map[string]string{"event": "ban"}, bans},
		{"sipedge_events_total", map[string]string{"event": "register"}, udpPhones + tcpPhones},
		{"sipedge_requests_total", map[string]string{"side": "access", "method": "REGISTER"}, udpPhones + tcpPhones},
		{"sipedge_responses_total", map[string]string{"side": "access", "method": "REGISTER", "code": "200"}, udpPhones + tcpPhones},
		{"sipedge_responses_total", map[string]string{"side": "access", "method": "MESSAGE", "code": "403"}, 1},
		{"sipedge_register_core_duration_seconds", map[string]string{"tenant": "default"}, udpPhones + tcpPhones},
		{"sipedge_core_up", map[string]string{"state": "up"}, 1},
		{"sipedge_store_ok", nil, 1},
	} {
		got, ok := value(fams, c.name, c.labels)
		if !ok || got != c.want {
			t.Errorf("%s%v = %v (found %v), want %v", c.name, c.labels, got, ok, c.want)
		}
	}
	for _, name := range []string{"go_goroutines", "process_resident_memory_bytes", "sipedge_limiter_allowed_total", "sipedge_core_requests_in_flight", "sipedge_core_requests_in_flight_limit"} {
		if fams[name] == nil {
			t.Errorf("%s missing", name)
		}
	}
	for _, side := range []string{"access", "core"} {
		if _, ok := value(fams, "sipedge_transactions", map[string]string{"side": side}); !ok {
			t.Errorf("sipedge_transactions{side=%q} missing", side)
		}
	}
	if _, ok := value(fams, "sipedge_lean_fallbacks_total", nil); !ok {
		t.Error("sipedge_lean_fallbacks_total missing")
	}
	if fams["sipedge_register_core_duration_seconds"].GetType() != dto.MetricType_HISTOGRAM {
		t.Error("the core round trip is not a histogram")
	}
}

// Counting a request costs no allocation once its labels were seen.
func TestMeterAllocs(t *testing.T) {
	m := metrics.New(metrics.Sources{})
	m.Received("access", "REGISTER")
	m.Answered("access", "REGISTER", 200)
	m.CoreRTT("", time.Millisecond)
	if n := testing.AllocsPerRun(1000, func() {
		m.Received("access", "REGISTER")
		m.Answered("access", "REGISTER", 200)
		m.CoreRTT("", time.Millisecond)
	}); n != 0 {
		t.Errorf("%v allocations per request counted", n)
	}
}

// Method names a stranger invents all count as "other": the series stay
// bounded.
func TestInventedMethodsStayBounded(t *testing.T) {
	m := metrics.New(metrics.Sources{})
	for i := range 100 {
		m.Received("access", sip.RequestMethod(fmt.Sprintf("X%dJUNK", i)))
		m.Answered("access", sip.RequestMethod(fmt.Sprintf("X%dJUNK", i)), 405)
	}
	m.Received("access", sip.REGISTER)
	srv := httptest.NewServer(m.Handler())
	defer srv.Close()
	fams := scrape(t, srv.URL)
	if n := len(fams["sipedge_requests_total"].GetMetric()); n != 2 {
		t.Errorf("%d request series, want REGISTER and other", n)
	}
	if got, _ := value(fams, "sipedge_requests_total", map[string]string{"method": "other"}); got != 100 {
		t.Errorf("other = %v", got)
	}
}
