package push

import (
	"context"
	"crypto/tls"
	"fmt"
	"net/url"
	"strings"
	"time"
)

// Production endpoints.
const (
	apnsProduction = "https://api.push.apple.com"
	apnsSandbox    = "https://api.sandbox.push.apple.com"
	fcmEndpoint    = "https://fcm.googleapis.com"
)

// Option changes how New builds its senders: for tests, which talk to
// servers on 127.0.0.1 with their own certificates and clocks.
type Option func(*options)

type options struct {
	tls                   *tls.Config
	now                   func() time.Time
	apnsProd, apnsSandbox string
	fcm                   string
}

// WithTLSConfig makes every sender's client use c (its RootCAs, mostly).
func WithTLSConfig(c *tls.Config) Option { return func(o *options) { o.tls = c } }

// WithNow gives the senders a clock: JWT timestamps, token lifetimes and
// apns-expiration read it.
func WithNow(now func() time.Time) Option { return func(o *options) { o.now = now } }

// WithAPNsURL sends APNs pushes to production and sandbox instead of
// Apple's two servers (scheme and host, as "https://127.0.0.1:4443").
func WithAPNsURL(production, sandbox string) Option {
	return func(o *options) { o.apnsProd, o.apnsSandbox = production, sandbox }
}

// WithFCMURL sends FCM messages to base instead of fcm.googleapis.com.
// (The OAuth token URL is the service account's token_uri.)
func WithFCMURL(base string) Option { return func(o *options) { o.fcm = base } }

// Senders picks a sender by pn-provider: "apns" (and "apns.dev", the
// sandbox) to APNs, "fcm" to FCM, and every other provider, or one whose
// service is not configured here, to the gateway if there is one.
// Safe for concurrent use.
type Senders struct {
	apns, fcm, gateway Sender
	closers            []func()
}

// New builds the senders cfg configures, reading each credential file
// once. Its errors name the config key and the file, never key material.
// With nothing configured it returns Senders that support no provider.
func New(cfg Config, opts ...Option) (*Senders, error) {
	if err := cfg.Validate(); err != nil {
		return nil, err
	}
	o := options{now: time.Now, apnsProd: apnsProduction, apnsSandbox: apnsSandbox, fcm: fcmEndpoint}
	for _, opt := range opts {
		opt(&o)
	}
	s := &Senders{}
	if cfg.APNs() {
		a, err := newAPNs(cfg, o)
		if err != nil {
			return nil, err
		}
		s.apns = a
		s.closers = append(s.closers, a.client.CloseIdleConnections)
	}
	if cfg.FCM() {
		f, err := newFCM(cfg, o)
		if err != nil {
			return nil, err
		}
		s.fcm = f
		s.closers = append(s.closers, f.client.CloseIdleConnections)
	}
	if cfg.Gateway() {
		g, err := newGateway(cfg, o)
		if err != nil {
			return nil, err
		}
		s.gateway = g
		s.closers = append(s.closers, g.client.CloseIdleConnections)
	}
	return s, nil
}

// Route builds Senders from any senders (nil: none for that service):
// for tests and for senders this package does not have.
func Route(apns, fcm, gateway Sender) *Senders {
	return &Senders{apns: apns, fcm: fcm, gateway: gateway}
}

// Enabled reports whether any push can be sent.
func (s *Senders) Enabled() bool { return s.apns != nil || s.fcm != nil || s.gateway != nil }

// Supports reports whether pushes for provider can be sent.
func (s *Senders) Supports(provider string) bool { return s.route(provider) != nil }

func (s *Senders) route(provider string) Sender {
	switch strings.ToLower(provider) {
	case "":
		return nil
	case "apns", "apns.dev":
		if s.apns != nil {
			return s.apns
		}
	case "fcm":
		if s.fcm != nil {
			return s.fcm
		}
	}
	if s.gateway != nil {
		return s.gateway
	}
	return nil
}

// Send sends p through the sender for its pn-provider, giving it an ID
// first if it has none.
func (s *Senders) Send(ctx context.Context, p Push) error {
	snd := s.route(p.Provider)
	if snd == nil {
		return fmt.Errorf("push: pn-provider %q: %w", clipCode(p.Provider), ErrUnknownProvider)
	}
	if p.PRID == "" {
		return badParams(clipCode(strings.ToLower(p.Provider)), "no pn-prid")
	}
	if p.ID == "" {
		p.ID = NewID()
	}
	return snd.Send(ctx, p)
}

// Close closes the senders' idle connections. Sends after it open new
// ones.
func (s *Senders) Close() {
	for _, c := range s.closers {
		c()
	}
}

// clipCode is a pn-provider as an error may quote it: it came from a
// REGISTER, so only a short token of safe characters.
func clipCode(s string) string {
	if c := code(s); c != "" && len(c) <= 32 {
		return c
	}
	return "?"
}

// parseBase parses a base URL from an option or a constant.
func parseBase(sender, s string) (*url.URL, error) {
	u, err := url.Parse(s)
	if err != nil || u.Host == "" || (u.Scheme != "https" && u.Scheme != "http") {
		return nil, fmt.Errorf("push: %s: base URL is not an absolute http(s) URL", sender)
	}
	return u, nil
}
