package push

import (
	"bytes"
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"encoding/json"
	"errors"
	"fmt"
	"net/http"
	"net/url"
	"os"
	"strconv"
	"strings"
	"sync"
	"time"
)

// APNs, Apple's push service: an HTTP/2 POST to /3/device/<token> with a
// provider token (a JWT signed ES256 with the team's .p8 key) and a VoIP
// push for the topic "<bundle ID>.voip". RFC 8599 §10: pn-provider
// "apns", pn-param "<team ID>.<bundle ID>.voip", pn-prid the device token.

// apnsTokenLife is how long one provider token is used. Apple rejects one
// older than an hour (ExpiredProviderToken) and throttles renewals more
// often than every 20 minutes (TooManyProviderTokenUpdates).
const apnsTokenLife = 40 * time.Minute

// maxAPNsToken bounds a device token (64 hex digits today; Apple warns
// the length may change).
const maxAPNsToken = 200

type apnsSender struct {
	client        *http.Client
	prod, sandbox *url.URL
	sandboxAll    bool
	key           *ecdsa.PrivateKey
	keyID, teamID string
	bundles       map[string]bool // nil: any of the team's apps
	ttl, timeout  time.Duration
	now           func() time.Time

	mu    sync.Mutex
	jwt   string
	jwtAt time.Time
}

func newAPNs(cfg Config, o options) (*apnsSender, error) {
	data, err := os.ReadFile(cfg.APNsKeyFile)
	if err != nil {
		return nil, fmt.Errorf("push.apns_key_file: %w", err)
	}
	k, err := parsePrivateKey(data)
	if err != nil {
		return nil, fmt.Errorf("push.apns_key_file: %s: %v", cfg.APNsKeyFile, err)
	}
	ec, ok := k.(*ecdsa.PrivateKey)
	if !ok || ec.Curve != elliptic.P256() {
		return nil, fmt.Errorf("push.apns_key_file: %s: not a P-256 EC key (an APNs .p8 key)", cfg.APNsKeyFile)
	}
	prod, err := parseBase("apns", o.apnsProd)
	if err != nil {
		return nil, err
	}
	sandbox, err := parseBase("apns", o.apnsSandbox)
	if err != nil {
		return nil, err
	}
	a := &apnsSender{
		client: newClient(o.tls, cfg.Timeout, true),
		prod:   prod, sandbox: sandbox, sandboxAll: cfg.APNsSandbox,
		key: ec, keyID: cfg.APNsKeyID, teamID: cfg.APNsTeamID,
		ttl: cfg.TTL, timeout: cfg.Timeout, now: o.now,
	}
	if len(cfg.APNsBundleIDs) > 0 {
		a.bundles = make(map[string]bool, len(cfg.APNsBundleIDs))
		for _, b := range cfg.APNsBundleIDs {
			a.bundles[b] = true
		}
	}
	return a, nil
}

// apnsPayload is a VoIP push's body. "aps" is Apple's; the rest is the
// app's: which request waits for it.
type apnsPayload struct {
	APS    struct{} `json:"aps"`
	ID     string   `json:"id,omitempty"`
	Method string   `json:"method,omitempty"`
	CallID string   `json:"call-id,omitempty"`
	Caller string   `json:"caller,omitempty"`
}

// apnsError is the body of an error response.
type apnsError struct {
	Reason string `json:"reason"`
}

func (a *apnsSender) Send(ctx context.Context, p Push) error {
	token, topic, err := a.target(p)
	if err != nil {
		return err
	}
	ctx, cancel := context.WithTimeout(ctx, a.timeout)
	defer cancel()
	body, err := json.Marshal(apnsPayload{ID: p.ID, Method: clip(p.Method, 32), CallID: clip(p.CallID, 256), Caller: clip(p.From, 1024)})
	if err != nil {
		return err
	}
	base := a.prod
	if a.sandboxAll || strings.EqualFold(p.Provider, "apns.dev") {
		base = a.sandbox
	}
	u := base.JoinPath("3", "device", token)
	for attempt := 0; ; attempt++ {
		jwt, err := a.token()
		if err != nil {
			return err
		}
		req, err := http.NewRequestWithContext(ctx, http.MethodPost, u.String(), bytes.NewReader(body))
		if err != nil {
			return errors.New("push: apns: cannot build the request") // err would quote the URL, and its token
		}
		h := req.Header
		h.Set("Authorization", "bearer "+jwt)
		h.Set("Apns-Topic", topic)
		h.Set("Apns-Push-Type", "voip")
		h.Set("Apns-Priority", "10") // at once; VoIP pushes must be 10
		h.Set("Apns-Expiration", a.expiration())
		if isUUID(p.ID) {
			h.Set("Apns-Id", strings.ToLower(p.ID))
		}
		h.Set("Content-Type", "application/json")
		resp, err := a.client.Do(req)
		if err != nil {
			return unreachable("apns", u, err)
		}
		raw := readBody(resp)
		if resp.StatusCode == http.StatusOK {
			return nil
		}
		var e apnsError
		_ = json.Unmarshal(raw, &e)
		reason := code(e.Reason)
		if resp.StatusCode == http.StatusForbidden && reason == "ExpiredProviderToken" && attempt == 0 {
			a.renew(jwt) // our clock is off: sign a new one, once
			continue
		}
		return &Rejected{Provider: "apns", Status: resp.StatusCode, Reason: orStatus(reason, resp.StatusCode),
			Class: apnsClass(resp.StatusCode, reason), RetryAfter: retryAfter(resp.Header, a.now())}
	}
}

// apnsClass classifies an APNs error ("Handling notification responses
// from APNs"): a token that is dead, or not this app's, or not this
// environment's, is gone; Apple says not to retry it.
func apnsClass(status int, reason string) Class {
	switch reason {
	case "BadDeviceToken", "DeviceTokenNotForTopic", "Unregistered", "ExpiredToken":
		return Gone
	case "TooManyRequests", "TooManyProviderTokenUpdates", "IdleTimeout", "InternalServerError", "ServiceUnavailable", "Shutdown", "ExpiredProviderToken":
		return Retry
	}
	return classify(status)
}

// expiration is the apns-expiration header: when APNs may stop trying.
func (a *apnsSender) expiration() string {
	if a.ttl <= 0 {
		return "0" // once, now or never
	}
	return strconv.FormatInt(a.now().Add(a.ttl).Unix(), 10)
}

// target is p's device token and APNs topic. pn-param must name this
// edge's team and a VoIP service. Linphone's form, with a "remote" and a
// "voip" token in one pn-prid ("<t1>:remote&<t2>:voip", pn-param
// "<team>.<bundle>.remote&voip"), gives its VoIP token.
func (a *apnsSender) target(p Push) (token, topic string, err error) {
	team, rest, ok := strings.Cut(p.Param, ".")
	dot := strings.LastIndexByte(rest, '.')
	if !ok || dot < 0 {
		return "", "", badParams("apns", "pn-param is not <team>.<bundle>.voip")
	}
	if team != a.teamID {
		return "", "", badParams("apns", "pn-param names another Apple team")
	}
	bundle, service := rest[:dot], rest[dot+1:]
	if !validBundle(bundle) {
		return "", "", badParams("apns", "pn-param's bundle ID is malformed")
	}
	if a.bundles != nil && !a.bundles[bundle] {
		return "", "", badParams("apns", "pn-param's bundle ID is not in push.apns_bundle_ids")
	}
	switch service {
	case "voip", "remote&voip", "voip&remote":
	default:
		return "", "", badParams("apns", "pn-param is not for VoIP pushes (.voip)")
	}
	token = p.PRID
	if strings.Contains(token, "&") || strings.Contains(token, ":") {
		token = ""
		for part := range strings.SplitSeq(p.PRID, "&") {
			if t, ok := strings.CutSuffix(part, ":voip"); ok {
				token = t
			}
		}
	}
	if token == "" || len(token) > maxAPNsToken || strings.IndexFunc(token, func(r rune) bool { return r > 0x7f || !isHex(byte(r)) }) >= 0 {
		return "", "", badParams("apns", "pn-prid is not a device token (hex)")
	}
	return token, bundle + ".voip", nil
}

// token is the provider token, signed anew once it is apnsTokenLife old.
func (a *apnsSender) token() (string, error) {
	a.mu.Lock()
	defer a.mu.Unlock()
	now := a.now()
	if a.jwt != "" && now.Sub(a.jwtAt) < apnsTokenLife && !now.Before(a.jwtAt) {
		return a.jwt, nil
	}
	jwt, err := signJWT(a.key, map[string]string{"kid": a.keyID}, struct {
		Iss string `json:"iss"`
		Iat int64  `json:"iat"`
	}{a.teamID, now.Unix()})
	if err != nil {
		return "", fmt.Errorf("push: apns: signing the provider token: %v", err)
	}
	a.jwt, a.jwtAt = jwt, now
	return jwt, nil
}

// renew drops the provider token APNs refused, unless another push has
// replaced it already: concurrent refusals renew it once.
func (a *apnsSender) renew(refused string) {
	a.mu.Lock()
	defer a.mu.Unlock()
	if a.jwt == refused {
		a.jwt = ""
	}
}
