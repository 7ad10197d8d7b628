package push_test

import (
	"context"
	"crypto/tls"
	"errors"
	"net/http"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/sipedge/sipedge/edge/clock"
	"github.com/sipedge/sipedge/edge/push"
	"github.com/sipedge/sipedge/edge/push/pushtest"
)

func apnsConfig(a *pushtest.APNs) push.Config {
	cfg := push.DefaultConfig()
	cfg.APNsKeyFile, cfg.APNsKeyID, cfg.APNsTeamID = a.KeyFile, a.KeyID, a.TeamID
	return cfg
}

func apnsSenders(t *testing.T, a *pushtest.APNs, opts ...push.Option) *push.Senders {
	return newSenders(t, apnsConfig(a), append([]push.Option{push.WithTLSConfig(a.TLSConfig()), push.WithAPNsURL(a.URL, a.URL)}, opts...)...)
}

func apnsPush(a *pushtest.APNs, token string) push.Push {
	return push.Push{Provider: "apns", PRID: token, Param: a.Param(), Method: "INVITE",
		CallID: "a84b4c76e66710@pc33.example.com", From: `"Alice" <sip:alice@example.com>;tag=1928301774`}
}

func TestAPNsSendsAVoIPPush(t *testing.T) {
	a := pushtest.NewAPNs(t)
	fake := clock.NewFake(start)
	a.SetNow(fake.Now)
	s := apnsSenders(t, a, push.WithNow(fake.Now))

	p := apnsPush(a, apnsToken)
	p.ID = "0f8e4c2a-1b3d-4e5f-8a9b-0c1d2e3f4a5b"
	if err := send(t, s, p); err != nil {
		t.Fatal(err)
	}
	got := a.Next(t)
	h := got.Header
	if got.Token != apnsToken || got.Topic != "com.example.phone.voip" {
		t.Errorf("token %s topic %q", push.Redact(got.Token), got.Topic)
	}
	for k, want := range map[string]string{
		"Apns-Push-Type":  "voip",
		"Apns-Priority":   "10",
		"Apns-Id":         p.ID,
		"Apns-Expiration": strconv.FormatInt(start.Add(30*time.Second).Unix(), 10),
		"Content-Type":    "application/json",
	} {
		if h.Get(k) != want {
			t.Errorf("%s = %q, want %q", k, h.Get(k), want)
		}
	}
	if !strings.HasPrefix(h.Get("Authorization"), "bearer ") {
		t.Errorf("authorization %q is not a bearer token", push.Redact(h.Get("Authorization")))
	}
	if _, ok := got.Body["aps"].(map[string]any); !ok {
		t.Errorf("body has no aps dictionary: %v", got.Body)
	}
	for k, want := range map[string]string{"id": p.ID, "method": "INVITE", "call-id": p.CallID, "caller": p.From} {
		if got.Body[k] != want {
			t.Errorf("body[%s] = %v, want %q", k, got.Body[k], want)
		}
	}
}

func TestAPNsStandInRefusesHTTP1(t *testing.T) {
	a := pushtest.NewAPNs(t)
	tc := a.TLSConfig()
	tc.NextProtos = []string{"http/1.1"}
	c := &http.Client{Transport: &http.Transport{TLSClientConfig: tc}, Timeout: 5 * time.Second}
	defer c.CloseIdleConnections()
	// Go's TLS server lets a client that offers only http/1.1 through
	// without ALPN; the handler then refuses it.
	resp, err := c.Post(a.URL+"/3/device/"+apnsToken, "application/json", strings.NewReader("{}"))
	if err == nil {
		resp.Body.Close()
		if resp.StatusCode != http.StatusHTTPVersionNotSupported {
			t.Fatalf("an HTTP/1.1 client got %s from the APNs stand-in", resp.Status)
		}
	}
	if n := len(a.Received()); n != 0 {
		t.Errorf("%d pushes accepted over HTTP/1.1", n)
	}
}

func TestAPNsDeadTokensAreGone(t *testing.T) {
	a := pushtest.NewAPNs(t)
	s := apnsSenders(t, a)
	for _, tc := range []struct {
		status int
		reason string
	}{
		{http.StatusGone, "Unregistered"},
		{http.StatusGone, "ExpiredToken"},
		{http.StatusBadRequest, "BadDeviceToken"},
		{http.StatusBadRequest, "DeviceTokenNotForTopic"},
	} {
		a.Fail(apnsToken, tc.status, tc.reason)
		err := send(t, s, apnsPush(a, apnsToken))
		rej := wantRejected(t, err, push.Gone, tc.reason)
		if rej.Status != tc.status || rej.Provider != "apns" || !rej.Gone() || rej.Retryable() || !push.IsGone(err) {
			t.Errorf("%s: %+v", tc.reason, rej)
		}
		noSecret(t, err, apnsToken)
	}
}

func TestAPNsBusyIsRetryable(t *testing.T) {
	a := pushtest.NewAPNs(t)
	s := apnsSenders(t, a)
	a.FailWith(apnsToken, pushtest.Failure{Status: http.StatusTooManyRequests, Reason: "TooManyRequests", RetryAfter: "7"})
	rej := wantRejected(t, send(t, s, apnsPush(a, apnsToken)), push.Retry, "TooManyRequests")
	if rej.RetryAfter != 7*time.Second || !rej.Retryable() {
		t.Errorf("%+v", rej)
	}
	a.Fail(apnsToken2, http.StatusServiceUnavailable, "ServiceUnavailable")
	wantRejected(t, send(t, s, apnsPush(a, apnsToken2)), push.Retry, "ServiceUnavailable")
}

func TestAPNsWrongKeyIsRefused(t *testing.T) {
	a := pushtest.NewAPNs(t)
	other := pushtest.NewAPNs(t) // same key ID and team, another key
	cfg := apnsConfig(a)
	cfg.APNsKeyFile = other.KeyFile
	s := newSenders(t, cfg, push.WithTLSConfig(a.TLSConfig()), push.WithAPNsURL(a.URL, a.URL))
	err := send(t, s, apnsPush(a, apnsToken))
	wantRejected(t, err, push.Refused, "InvalidProviderToken")
	if push.IsGone(err) {
		t.Error("a refused key marks the phone gone")
	}
}

func TestAPNsTimeout(t *testing.T) {
	a := pushtest.NewAPNs(t)
	s := apnsSenders(t, a)
	a.Stall(apnsToken)
	ctx, cancel := context.WithTimeout(context.Background(), 200*time.Millisecond)
	defer cancel()
	began := time.Now()
	err := s.Send(ctx, apnsPush(a, apnsToken))
	if !errors.Is(err, push.ErrUnreachable) || !errors.Is(err, context.DeadlineExceeded) {
		t.Fatalf("err = %v, want unreachable by the deadline", err)
	}
	if got := push.FailureReason(err); got != "timeout" {
		t.Errorf("FailureReason = %q", got)
	}
	if d := time.Since(began); d > 3*time.Second {
		t.Errorf("took %s", d)
	}
	noSecret(t, err, apnsToken)
}

func TestAPNsConfigTimeout(t *testing.T) {
	a := pushtest.NewAPNs(t)
	cfg := apnsConfig(a)
	cfg.Timeout = time.Second
	s := newSenders(t, cfg, push.WithTLSConfig(a.TLSConfig()), push.WithAPNsURL(a.URL, a.URL))
	a.Stall(apnsToken)
	err := s.Send(context.Background(), apnsPush(a, apnsToken))
	if push.FailureReason(err) != "timeout" {
		t.Fatalf("err = %v, want a timeout", err)
	}
}

func TestAPNsProviderTokenReusedThenRenewed(t *testing.T) {
	a := pushtest.NewAPNs(t)
	fake := clock.NewFake(start)
	a.SetNow(fake.Now)
	s := apnsSenders(t, a, push.WithNow(fake.Now))

	for range 3 {
		if err := send(t, s, apnsPush(a, apnsToken)); err != nil {
			t.Fatal(err)
		}
	}
	fake.Advance(39 * time.Minute)
	if err := send(t, s, apnsPush(a, apnsToken)); err != nil {
		t.Fatal(err)
	}
	if toks := a.ProviderTokens(); len(toks) != 1 || !toks[0].Issued.Equal(start) {
		t.Fatalf("provider tokens after 39 min: %+v, want the one of the start", toks)
	}
	fake.Advance(2 * time.Minute) // 41 min: renewed (Apple: every 20 to 60 min)
	if err := send(t, s, apnsPush(a, apnsToken)); err != nil {
		t.Fatal(err)
	}
	toks := a.ProviderTokens()
	if len(toks) != 2 || !toks[1].Issued.Equal(start.Add(41*time.Minute)) {
		t.Fatalf("provider tokens after 41 min: %+v", toks)
	}
}

func TestAPNsConcurrentPushesShareAProviderToken(t *testing.T) {
	a := pushtest.NewAPNs(t)
	s := apnsSenders(t, a)
	var wg sync.WaitGroup
	for i := range 8 {
		wg.Go(func() {
			token := apnsToken
			if i%2 == 1 {
				token = apnsToken2
			}
			if err := send(t, s, apnsPush(a, token)); err != nil {
				t.Error(err)
			}
		})
	}
	wg.Wait()
	if n := len(a.ProviderTokens()); n != 1 {
		t.Errorf("%d provider tokens for 8 pushes at once, want 1", n)
	}
	if n := len(a.Received()); n != 8 {
		t.Errorf("%d pushes received, want 8", n)
	}
}

func TestAPNsExpiredProviderTokenRenewedOnce(t *testing.T) {
	a := pushtest.NewAPNs(t)
	fake := clock.NewFake(start)
	a.SetNow(func() time.Time { return fake.Now().Add(2 * time.Hour) }) // our clock is 2 h slow
	s := apnsSenders(t, a, push.WithNow(fake.Now))
	wantRejected(t, send(t, s, apnsPush(a, apnsToken)), push.Retry, "ExpiredProviderToken")
}

func TestAPNsPushParameters(t *testing.T) {
	a := pushtest.NewAPNs(t)
	s := apnsSenders(t, a)
	for _, tc := range []struct {
		name        string
		prid, param string
		ok          bool
		token       string
	}{
		{"rfc 8599", apnsToken, a.Param(), true, apnsToken},
		{"linphone voip only", apnsToken + ":voip", a.Param(), true, apnsToken},
		{"linphone remote and voip", apnsToken2 + ":remote&" + apnsToken + ":voip", a.TeamID + "." + a.Bundle + ".remote&voip", true, apnsToken},
		{"another team", apnsToken, "OTHERTEAM1." + a.Bundle + ".voip", false, ""},
		{"not voip", apnsToken, a.TeamID + "." + a.Bundle, false, ""},
		{"no team", apnsToken, "voip", false, ""},
		{"remote token only", apnsToken + ":remote", a.Param(), false, ""},
		{"not hex", "zz" + apnsToken[2:], a.Param(), false, ""},
		{"path in token", "../../x", a.Param(), false, ""},
		{"bad bundle", apnsToken, a.TeamID + ".com/../x.voip", false, ""},
	} {
		err := send(t, s, push.Push{Provider: "apns", PRID: tc.prid, Param: tc.param})
		if tc.ok != (err == nil) {
			t.Errorf("%s: err = %v", tc.name, err)
			continue
		}
		if !tc.ok {
			if !errors.Is(err, push.ErrBadParams) || push.FailureReason(err) != "bad_params" || !push.IsGone(err) {
				t.Errorf("%s: err = %v, want ErrBadParams", tc.name, err)
			}
			noSecret(t, err, tc.prid)
			continue
		}
		if got := a.Next(t); got.Token != tc.token {
			t.Errorf("%s: pushed to %s", tc.name, push.Redact(got.Token))
		}
	}
}

func TestAPNsBundleAllowList(t *testing.T) {
	a := pushtest.NewAPNs(t)
	cfg := apnsConfig(a)
	cfg.APNsBundleIDs = []string{"com.example.other"}
	s := newSenders(t, cfg, push.WithTLSConfig(a.TLSConfig()), push.WithAPNsURL(a.URL, a.URL))
	if err := send(t, s, apnsPush(a, apnsToken)); !errors.Is(err, push.ErrBadParams) {
		t.Errorf("bundle not allowed: err = %v", err)
	}
	cfg.APNsBundleIDs = append(cfg.APNsBundleIDs, a.Bundle)
	s = newSenders(t, cfg, push.WithTLSConfig(a.TLSConfig()), push.WithAPNsURL(a.URL, a.URL))
	if err := send(t, s, apnsPush(a, apnsToken)); err != nil {
		t.Errorf("bundle allowed: %v", err)
	}
}

// sandboxPair is two APNs stand-ins sharing a key: production and sandbox.
func sandboxPair(t *testing.T) (prod, sandbox *pushtest.APNs, tc *tls.Config) {
	prod, sandbox = pushtest.NewAPNs(t), pushtest.NewAPNs(t)
	sandbox.Key, sandbox.KeyFile = prod.Key, prod.KeyFile // before any request
	return prod, sandbox, pushtest.ClientTLS(prod.Server, sandbox.Server)
}

func TestAPNsSandbox(t *testing.T) {
	prod, sandbox, tc := sandboxPair(t)
	s := newSenders(t, apnsConfig(prod), push.WithTLSConfig(tc), push.WithAPNsURL(prod.URL, sandbox.URL))

	if err := send(t, s, apnsPush(prod, apnsToken)); err != nil {
		t.Fatal(err)
	}
	prod.Next(t)
	dev := apnsPush(prod, apnsToken2)
	dev.Provider = "apns.dev" // Flexisip's name for a development build
	if err := send(t, s, dev); err != nil {
		t.Fatal(err)
	}
	if got := sandbox.Next(t); got.Token != apnsToken2 {
		t.Errorf("sandbox got %s", push.Redact(got.Token))
	}

	cfg := apnsConfig(prod)
	cfg.APNsSandbox = true
	s = newSenders(t, cfg, push.WithTLSConfig(tc), push.WithAPNsURL(prod.URL, sandbox.URL))
	if err := send(t, s, apnsPush(prod, apnsToken)); err != nil {
		t.Fatal(err)
	}
	sandbox.Next(t)
	if n := len(prod.Received()); n != 1 {
		t.Errorf("production got %d pushes, want 1", n)
	}
}
