package alert

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"net/http"
	"net/url"
	"sync/atomic"
	"time"

	"github.com/sipedge/sipedge/edge/audit"
)

// Webhook POSTs alerts as JSON to a URL, from a bounded queue, so a slow
// or absent receiver never holds up SIP: when the queue is full an alert
// is dropped and counted. Each is tried up to three times.
type Webhook struct {
	url    string
	node   string
	client *http.Client
	queue  chan audit.Event
	log    *slog.Logger
	// Sent, Failed and Dropped count alerts delivered, given up after
	// the retries, and not queued.
	Sent, Failed, Dropped atomic.Uint64
	backoff               time.Duration
}

// Payload is the JSON body of one alert.
type Payload struct {
	Alert    string    `json:"alert"`
	Severity string    `json:"severity"`
	Time     time.Time `json:"time"`
	Node     string    `json:"node,omitempty"`
	AOR      string    `json:"aor,omitempty"`
	Tenant   string    `json:"tenant,omitempty"`
	Source   string    `json:"source,omitempty"`
	Count    int       `json:"count,omitempty"`
	Detail   string    `json:"detail"`
}

// NewWebhook sends to url, holding at most queue alerts.
func NewWebhook(url, node string, queue int, log *slog.Logger) *Webhook {
	return &Webhook{url: url, node: node, client: &http.Client{Timeout: 5 * time.Second},
		queue: make(chan audit.Event, queue), log: log, backoff: time.Second}
}

// Send queues e if it is an alert; it never blocks.
func (h *Webhook) Send(e audit.Event) {
	if e.Kind != audit.Alert {
		return
	}
	select {
	case h.queue <- e:
	default:
		h.Dropped.Add(1)
	}
}

// Run delivers queued alerts until ctx ends.
func (h *Webhook) Run(ctx context.Context) {
	defer h.client.CloseIdleConnections()
	for {
		select {
		case <-ctx.Done():
			return
		case e := <-h.queue:
			h.deliver(ctx, e)
		}
	}
}

func (h *Webhook) deliver(ctx context.Context, e audit.Event) {
	if e.Time.IsZero() {
		e.Time = time.Now()
	}
	p := Payload{Alert: e.Reason, Severity: e.Severity.String(), Time: e.Time, Node: h.node, AOR: e.AOR,
		Tenant: e.Tenant, Count: e.Count, Detail: e.Detail}
	if e.Source.IsValid() {
		p.Source = e.Source.String()
	}
	body, _ := json.Marshal(p)
	var err error
	for try := range 3 {
		if try > 0 {
			select {
			case <-ctx.Done():
				return
			case <-time.After(h.backoff << (try - 1)):
			}
		}
		if err = h.post(ctx, body); err == nil {
			h.Sent.Add(1)
			return
		}
	}
	h.Failed.Add(1)
	h.log.Warn("alert webhook failed after 3 tries", "alert", e.Reason, "err", err, "failed_total", h.Failed.Load())
}

func (h *Webhook) post(ctx context.Context, body []byte) error {
	req, err := http.NewRequestWithContext(ctx, "POST", h.url, bytes.NewReader(body))
	if err != nil {
		return err
	}
	req.Header.Set("Content-Type", "application/json")
	res, err := h.client.Do(req)
	if err != nil {
		var ue *url.Error
		if errors.As(err, &ue) { // its URL may carry a key: name the host only
			return fmt.Errorf("%s: %w", req.URL.Host, ue.Err)
		}
		return err
	}
	res.Body.Close()
	if res.StatusCode/100 != 2 {
		return fmt.Errorf("webhook answered %s", res.Status)
	}
	return nil
}
