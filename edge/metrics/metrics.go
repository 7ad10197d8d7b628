// Package metrics is sipedge's Prometheus exposition: counters the edge
// bumps as requests pass (it implements edge.Meter), counters of audit
// events, and gauges read from the registry, the flow table, the limiter
// and the pools at scrape time, so the hot path pays for none of those.
package metrics

import (
	"net/http"
	"slices"
	"strconv"
	"sync"
	"sync/atomic"
	"time"

	"github.com/emiago/sipgo/sip"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"
	"github.com/prometheus/client_golang/prometheus/promhttp"
	"github.com/sipedge/sipedge/edge/audit"
	"github.com/sipedge/sipedge/edge/registry"
	"github.com/sipedge/sipedge/nat"
	"github.com/sipedge/sipedge/ratelimit"
)

// Sources are what the gauges are read from at each scrape. Any may be
// nil (its metrics are then left out).
type Sources struct {
	Registry *registry.Registry
	Flows    *nat.FlowTable
	Limiter  *ratelimit.Limiter
	// Cores lists every core with its state, for sipedge_core_up.
	Cores func() []Core
	// StoreOK reports whether the state store took the last write.
	StoreOK func() bool
	// Transactions counts the edge's own UDP transactions open now, on
	// the access side and toward the cores.
	Transactions func() (access, core int)
	// LeanFallbacks counts the requests from phones the edge's own
	// transactions left to sipgo's (edge.Server.LeanFallbacks).
	LeanFallbacks func() uint64
}

// Core is one core's state as the pool sees it.
type Core struct {
	Tenant, Target, State string // State: "up", "overloaded" or "down"
}

// Metrics is one edge's collectors, on a registry of its own.
type Metrics struct {
	reg       *prometheus.Registry
	requests  *prometheus.CounterVec
	responses *prometheus.CounterVec
	coreRTT   *prometheus.HistogramVec
	events    *prometheus.CounterVec
	alerts    *prometheus.CounterVec
	absorbed  *prometheus.CounterVec
	pushes    *prometheus.CounterVec
	pushWake  prometheus.Histogram
	gauges    *gauges

	mu   sync.RWMutex // guards the caches below
	reqs map[reqKey]prometheus.Counter
	ress map[resKey]prometheus.Counter
	rtts map[string]prometheus.Observer
}

type reqKey struct{ side, method string }
type resKey struct {
	side, method string
	code         int
}

// New registers the collectors, the Go runtime's and the process's
// included, and the scrape-time gauges of src.
func New(src Sources) *Metrics {
	m := &Metrics{reg: prometheus.NewRegistry(), gauges: &gauges{},
		reqs: map[reqKey]prometheus.Counter{}, ress: map[resKey]prometheus.Counter{}, rtts: map[string]prometheus.Observer{}}
	m.requests = prometheus.NewCounterVec(prometheus.CounterOpts{Name: "sipedge_requests_total",
		Help: "SIP requests received, by side (access: phones, core: the cores) and method."}, []string{"side", "method"})
	m.responses = prometheus.NewCounterVec(prometheus.CounterOpts{Name: "sipedge_responses_total",
		Help: "Final answers to received requests, the edge's own or relayed, by side, method and code (0: dropped, unanswered)."},
		[]string{"side", "method", "code"})
	m.coreRTT = prometheus.NewHistogramVec(prometheus.HistogramOpts{Name: "sipedge_register_core_duration_seconds",
		Help:    "Time from forwarding a REGISTER to the core's final answer, by tenant.",
		Buckets: []float64{.001, .002, .005, .01, .02, .05, .1, .2, .5, 1, 2, 5, 10}}, []string{"tenant"})
	m.events = prometheus.NewCounterVec(prometheus.CounterOpts{Name: "sipedge_events_total",
		Help: "Audit events, by kind (register, refresh, flow_dead, rejected, ban, core_down, ...)."}, []string{"event"})
	m.alerts = prometheus.NewCounterVec(prometheus.CounterOpts{Name: "sipedge_alerts_total",
		Help: "Alerts raised, by alert (mass_loss, user_agent_change, source_jump, auth_failure_burst, duplicate_identity)."}, []string{"alert"})
	m.absorbed = prometheus.NewCounterVec(prometheus.CounterOpts{Name: "sipedge_register_absorbed_total",
		Help: "Refreshes the edge answered itself (registration offload), by tenant."}, []string{"tenant"})
	m.pushes = prometheus.NewCounterVec(prometheus.CounterOpts{Name: "sipedge_pushes_total",
		Help: "Pushes to sleeping phones by result: sent, answered (the phone registered again), unanswered, failed."}, []string{"result"})
	m.pushWake = prometheus.NewHistogram(prometheus.HistogramOpts{Name: "sipedge_push_wake_seconds",
		Help:    "Time from a push to the phone's registration on a new flow.",
		Buckets: []float64{.1, .25, .5, 1, 2, 3, 5, 8, 13, 20}})
	m.reg.MustRegister(m.pushes, m.pushWake)
	m.reg.MustRegister(m.requests, m.responses, m.coreRTT, m.events, m.alerts, m.absorbed,
		collectors.NewGoCollector(), collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}),
		m.gauges)
	m.gauges.src.Store(&src)
	return m
}

// SetSources replaces what the gauges read (for parts made after the
// metrics, as the edge the meter is handed to).
func (m *Metrics) SetSources(src Sources) { m.gauges.src.Store(&src) }

// Handler serves the metrics in the Prometheus text format.
func (m *Metrics) Handler() http.Handler {
	return promhttp.HandlerFor(m.reg, promhttp.HandlerOpts{ErrorHandling: promhttp.ContinueOnError})
}

// Registry is where the collectors are, for tests and other handlers.
func (m *Metrics) Registry() *prometheus.Registry { return m.reg }

// methods are the method labels: anything else is "other", so that a
// stranger inventing method names cannot grow the metrics.
var methods = map[sip.RequestMethod]bool{sip.INVITE: true, sip.ACK: true, sip.CANCEL: true, sip.BYE: true,
	sip.REGISTER: true, sip.OPTIONS: true, sip.SUBSCRIBE: true, sip.NOTIFY: true, sip.REFER: true, sip.INFO: true,
	sip.MESSAGE: true, sip.PRACK: true, sip.UPDATE: true, sip.PUBLISH: true}

func methodLabel(m sip.RequestMethod) string {
	if methods[m] {
		return string(m)
	}
	return "other"
}

// Received counts a request (edge.Meter).
func (m *Metrics) Received(side string, method sip.RequestMethod) {
	k := reqKey{side, methodLabel(method)}
	m.mu.RLock()
	c := m.reqs[k]
	m.mu.RUnlock()
	if c == nil {
		c = m.requests.WithLabelValues(side, k.method)
		m.mu.Lock()
		m.reqs[k] = c
		m.mu.Unlock()
	}
	c.Inc()
}

// Answered counts a request's final status (edge.Meter).
func (m *Metrics) Answered(side string, method sip.RequestMethod, status int) {
	k := resKey{side, methodLabel(method), status}
	m.mu.RLock()
	c := m.ress[k]
	m.mu.RUnlock()
	if c == nil {
		c = m.responses.WithLabelValues(side, k.method, strconv.Itoa(status))
		m.mu.Lock()
		m.ress[k] = c
		m.mu.Unlock()
	}
	c.Inc()
}

// CoreRTT observes a REGISTER's time through the core (edge.Meter).
func (m *Metrics) CoreRTT(tenant string, d time.Duration) {
	m.mu.RLock()
	o := m.rtts[tenant]
	m.mu.RUnlock()
	if o == nil {
		o = m.coreRTT.WithLabelValues(tenantLabel(tenant))
		m.mu.Lock()
		m.rtts[tenant] = o
		m.mu.Unlock()
	}
	o.Observe(d.Seconds())
}

// Absorbed counts a refresh answered by the edge (edge.Meter).
func (m *Metrics) Absorbed(tenant string) { m.absorbed.WithLabelValues(tenantLabel(tenant)).Inc() }

// Pushed counts a push's fate; an answered one's wake time is observed.
func (m *Metrics) Pushed(result string, took time.Duration) {
	switch result {
	case "sent", "answered", "unanswered", "failed":
	default:
		result = "other"
	}
	m.pushes.WithLabelValues(result).Inc()
	if result == "answered" {
		m.pushWake.Observe(took.Seconds())
	}
}

// Event counts an audit event.
func (m *Metrics) Event(e audit.Event) {
	m.events.WithLabelValues(string(e.Kind)).Inc()
	if e.Kind == audit.Alert {
		m.alerts.WithLabelValues(e.Reason).Inc()
	}
}

func tenantLabel(t string) string {
	if t == "" {
		return "default"
	}
	return t
}

// gauges reads the state of the parts at scrape time.
type gauges struct{ src atomic.Pointer[Sources] }

var (
	descBindings = prometheus.NewDesc("sipedge_bindings", "Registered bindings, by transport, tenant and NAT evidence.",
		[]string{"transport", "tenant", "nat"}, nil)
	descFlows       = prometheus.NewDesc("sipedge_flows", "Flows tracked, by transport.", []string{"transport"}, nil)
	descFlowRefused = prometheus.NewDesc("sipedge_flows_refused_total", "New flows not tracked because the flow table was full.", nil, nil)
	descDecisions   = prometheus.NewDesc("sipedge_limiter_decisions_total",
		"Requests and packets the limiter refused, by decision (reject: answered, drop: silent) and reason.", []string{"decision", "reason"}, nil)
	descAllowed       = prometheus.NewDesc("sipedge_limiter_allowed_total", "Requests the limiter let through.", nil, nil)
	descBans          = prometheus.NewDesc("sipedge_bans", "Bans in force (sources and networks).", nil, nil)
	descSources       = prometheus.NewDesc("sipedge_limiter_sources", "Sources the limiter tracks, and of them those holding bindings.", []string{"kind"}, nil)
	descInflight      = prometheus.NewDesc("sipedge_core_requests_in_flight", "Requests toward the cores awaiting their answer.", nil, nil)
	descInflightLimit = prometheus.NewDesc("sipedge_core_requests_in_flight_limit", "How many requests may await the cores at once: max_inflight, or more at the cores' recent pace (inflight_time).", nil, nil)
	descCoreUp        = prometheus.NewDesc("sipedge_core_up", "1 if the core takes requests (up or overloaded), 0 if down.", []string{"tenant", "core", "state"}, nil)
	descStoreOK       = prometheus.NewDesc("sipedge_store_ok", "1 if the state store took the last write, 0 if it is failing.", nil, nil)
	descRTT           = prometheus.NewDesc("sipedge_keepalive_rtt_seconds", "Round-trip time of the last answered keepalive (OPTIONS) of each flow: quantiles over the flows.", []string{"quantile"}, nil)
	descKeepKind      = prometheus.NewDesc("sipedge_flows_keepalive", "Flows by what keeps them open in auto mode: options (the phone answers), crlf (it does not), unknown (not found out yet, or another mode).", []string{"keepalive"}, nil)
	descKeepMiss      = prometheus.NewDesc("sipedge_flows_missing_keepalives", "Flows whose last keepalive went unanswered.", nil, nil)
	descPingsSeen     = prometheus.NewDesc("sipedge_flows_answering_keepalives", "Flows that answered a keepalive.", nil, nil)
	descLeanFallbacks = prometheus.NewDesc("sipedge_lean_fallbacks_total", "Non-INVITE requests from phones over UDP left to sipgo's transactions instead of the edge's own: no RFC 3261 branch, or unparsable.", nil, nil)
	descTx            = prometheus.NewDesc("sipedge_transactions", "The edge's own UDP transactions open (non-INVITE requests from phones and to the cores), answered ones kept a few seconds for copies, by side.", []string{"side"}, nil)
)

func (g *gauges) Describe(ch chan<- *prometheus.Desc) {
	for _, d := range []*prometheus.Desc{descBindings, descFlows, descFlowRefused, descDecisions, descAllowed, descBans,
		descSources, descInflight, descInflightLimit, descCoreUp, descStoreOK, descRTT, descKeepKind, descKeepMiss, descPingsSeen, descTx, descLeanFallbacks} {
		ch <- d
	}
}

func (g *gauges) Collect(ch chan<- prometheus.Metric) {
	s := *g.src.Load()
	if s.Registry != nil {
		type key struct{ tp, tenant, nat string }
		n := map[key]int{}
		for _, b := range s.Registry.All() {
			n[key{b.Flow.Transport.String(), tenantLabel(b.Tenant), b.NAT.String()}]++
		}
		for k, v := range n {
			ch <- prometheus.MustNewConstMetric(descBindings, prometheus.GaugeValue, float64(v), k.tp, k.tenant, k.nat)
		}
	}
	if s.Flows != nil {
		by, kinds := map[string]int{}, map[string]int{}
		var rtts []time.Duration
		missing, answering := 0, 0
		for _, f := range s.Flows.Snapshot() {
			by[f.Key.Transport.String()]++
			kind := string(f.Keepalive)
			if kind == "" {
				kind = "unknown"
			}
			kinds[kind]++
			if f.Misses > 0 {
				missing++
			}
			if !f.LastPong.IsZero() {
				answering++
				rtts = append(rtts, f.RTT)
			}
		}
		for tp, v := range by {
			ch <- prometheus.MustNewConstMetric(descFlows, prometheus.GaugeValue, float64(v), tp)
		}
		for k, v := range kinds {
			ch <- prometheus.MustNewConstMetric(descKeepKind, prometheus.GaugeValue, float64(v), k)
		}
		ch <- prometheus.MustNewConstMetric(descFlowRefused, prometheus.CounterValue, float64(s.Flows.Stats().Refused))
		ch <- prometheus.MustNewConstMetric(descKeepMiss, prometheus.GaugeValue, float64(missing))
		ch <- prometheus.MustNewConstMetric(descPingsSeen, prometheus.GaugeValue, float64(answering))
		if len(rtts) > 0 {
			slices.Sort(rtts)
			for _, q := range []float64{0.5, 0.9, 0.99} {
				v := rtts[min(len(rtts)-1, int(q*float64(len(rtts))))]
				ch <- prometheus.MustNewConstMetric(descRTT, prometheus.GaugeValue, v.Seconds(), strconv.FormatFloat(q, 'g', -1, 64))
			}
		}
	}
	if s.Limiter != nil {
		st := s.Limiter.Stats()
		for r := ratelimit.Reason(0); r < ratelimit.NumReasons; r++ {
			if st.Rejected[r] > 0 {
				ch <- prometheus.MustNewConstMetric(descDecisions, prometheus.CounterValue, float64(st.Rejected[r]), "reject", r.String())
			}
			if st.Dropped[r] > 0 {
				ch <- prometheus.MustNewConstMetric(descDecisions, prometheus.CounterValue, float64(st.Dropped[r]), "drop", r.String())
			}
		}
		ch <- prometheus.MustNewConstMetric(descAllowed, prometheus.CounterValue, float64(st.Allowed))
		ch <- prometheus.MustNewConstMetric(descBans, prometheus.GaugeValue, float64(st.Bans))
		ch <- prometheus.MustNewConstMetric(descSources, prometheus.GaugeValue, float64(st.Sources), "tracked")
		ch <- prometheus.MustNewConstMetric(descSources, prometheus.GaugeValue, float64(st.BoundSources), "bound")
		ch <- prometheus.MustNewConstMetric(descInflight, prometheus.GaugeValue, float64(st.Inflight))
		ch <- prometheus.MustNewConstMetric(descInflightLimit, prometheus.GaugeValue, float64(st.InflightLimit))
	}
	if s.Cores != nil {
		for _, c := range s.Cores() {
			up := 0.0
			if c.State != "down" {
				up = 1
			}
			ch <- prometheus.MustNewConstMetric(descCoreUp, prometheus.GaugeValue, up, tenantLabel(c.Tenant), c.Target, c.State)
		}
	}
	if s.StoreOK != nil {
		ok := 0.0
		if s.StoreOK() {
			ok = 1
		}
		ch <- prometheus.MustNewConstMetric(descStoreOK, prometheus.GaugeValue, ok)
	}
	if s.Transactions != nil {
		access, core := s.Transactions()
		ch <- prometheus.MustNewConstMetric(descTx, prometheus.GaugeValue, float64(access), "access")
		ch <- prometheus.MustNewConstMetric(descTx, prometheus.GaugeValue, float64(core), "core")
	}
	if s.LeanFallbacks != nil {
		ch <- prometheus.MustNewConstMetric(descLeanFallbacks, prometheus.CounterValue, float64(s.LeanFallbacks()))
	}
}
