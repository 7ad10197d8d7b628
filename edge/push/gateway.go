package push

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net/http"
	"net/url"
	"os"
	"strings"
	"time"
)

// The generic push gateway: a service of the operator's that knows how
// to reach the phones (its own APNs or FCM credentials, another push
// service, a relay). Each push is one JSON POST (GatewayPayload), with
// "Authorization: Bearer <token>" when a token file is configured.
// Its answer: 2xx sent; 410 the device token is gone; 408, 429 and 5xx
// try later; any other status refused. An error body may say why as
// {"reason": "<code>"}.

// GatewayPayload is the JSON a gateway receives.
type GatewayPayload struct {
	ID       string `json:"id"`       // unique per push
	Provider string `json:"provider"` // pn-provider
	PRID     string `json:"prid"`     // pn-prid
	Param    string `json:"param,omitempty"`
	Method   string `json:"method,omitempty"`  // of the request that waits
	CallID   string `json:"call_id,omitempty"` // its Call-ID
	From     string `json:"from,omitempty"`    // its From header
}

type gatewaySender struct {
	client  *http.Client
	url     *url.URL
	token   string
	timeout time.Duration
	now     func() time.Time
}

func newGateway(cfg Config, o options) (*gatewaySender, error) {
	u, err := url.Parse(cfg.GatewayURL)
	if err != nil { // Validate checked it
		return nil, fmt.Errorf("push.gateway_url: not a URL")
	}
	g := &gatewaySender{client: newClient(o.tls, cfg.Timeout, false), url: u, timeout: cfg.Timeout, now: o.now}
	if f := cfg.GatewayTokenFile; f != "" {
		data, err := os.ReadFile(f)
		if err != nil {
			return nil, fmt.Errorf("push.gateway_token_file: %w", err)
		}
		g.token = strings.TrimSpace(string(data))
		if g.token == "" {
			return nil, fmt.Errorf("push.gateway_token_file: %s: empty", f)
		}
		if strings.ContainsFunc(g.token, func(r rune) bool { return r < 0x21 || r > 0x7e }) {
			return nil, fmt.Errorf("push.gateway_token_file: %s: not a one-line token of printable ASCII", f)
		}
	}
	return g, nil
}

// gatewayError is the optional body of an error response.
type gatewayError struct {
	Reason string `json:"reason"`
}

func (g *gatewaySender) Send(ctx context.Context, p Push) error {
	ctx, cancel := context.WithTimeout(ctx, g.timeout)
	defer cancel()
	body, err := json.Marshal(GatewayPayload{ID: p.ID, Provider: p.Provider, PRID: p.PRID, Param: p.Param,
		Method: clip(p.Method, 32), CallID: clip(p.CallID, 256), From: clip(p.From, 1024)})
	if err != nil {
		return err
	}
	req, err := http.NewRequestWithContext(ctx, http.MethodPost, g.url.String(), bytes.NewReader(body))
	if err != nil {
		return errors.New("push: gateway: cannot build the request") // err would quote the URL
	}
	req.Header.Set("Content-Type", "application/json")
	if g.token != "" {
		req.Header.Set("Authorization", "Bearer "+g.token)
	}
	resp, err := g.client.Do(req)
	if err != nil {
		return unreachable("gateway", g.url, err)
	}
	raw := readBody(resp)
	if resp.StatusCode >= 200 && resp.StatusCode < 300 {
		return nil
	}
	var e gatewayError
	_ = json.Unmarshal(raw, &e)
	return &Rejected{Provider: "gateway", Status: resp.StatusCode, Reason: orStatus(code(e.Reason), resp.StatusCode),
		Class: classify(resp.StatusCode), RetryAfter: retryAfter(resp.Header, g.now())}
}
