package push_test

import (
	"context"
	"errors"
	"net/http"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/sipedge/sipedge/edge/clock"
	"github.com/sipedge/sipedge/edge/push"
	"github.com/sipedge/sipedge/edge/push/pushtest"
)

func fcmConfig(f *pushtest.FCM) push.Config {
	cfg := push.DefaultConfig()
	cfg.FCMServiceAccountFile = f.File
	return cfg
}

func fcmSenders(t *testing.T, f *pushtest.FCM, opts ...push.Option) *push.Senders {
	return newSenders(t, fcmConfig(f), append([]push.Option{push.WithTLSConfig(f.TLSConfig()), push.WithFCMURL(f.URL)}, opts...)...)
}

func fcmPush(f *pushtest.FCM, token string) push.Push {
	return push.Push{Provider: "fcm", PRID: token, Param: f.Project, Method: "MESSAGE",
		CallID: "3848276298220188511@atlanta.example.com", From: "<sip:bob@example.com>;tag=a73kszlfl"}
}

func TestFCMSendsAHighPriorityDataMessage(t *testing.T) {
	f := pushtest.NewFCM(t)
	s := fcmSenders(t, f)
	p := fcmPush(f, fcmToken)
	p.ID = "7d2c1b0a-9e8f-4d6c-8b5a-4f3e2d1c0b9a"
	if err := send(t, s, p); err != nil {
		t.Fatal(err)
	}
	got := f.Next(t)
	if got.Token != fcmToken || got.Topic != f.Project {
		t.Errorf("token %s project %q", push.Redact(got.Token), got.Topic)
	}
	if _, ok := got.Body["notification"]; ok {
		t.Error("a wake-up must be a data message, not a notification")
	}
	android, _ := got.Body["android"].(map[string]any)
	if android["priority"] != "HIGH" || android["ttl"] != "30s" {
		t.Errorf("android = %v, want priority HIGH, ttl 30s", android)
	}
	data, _ := got.Body["data"].(map[string]any)
	for k, want := range map[string]string{"id": p.ID, "method": "MESSAGE", "call-id": p.CallID, "caller": p.From} {
		if data[k] != want {
			t.Errorf("data[%s] = %v, want %q", k, data[k], want)
		}
	}
	if !strings.HasPrefix(got.Header.Get("Authorization"), "Bearer ya29.") {
		t.Error("no access token from the token endpoint")
	}
}

func TestFCMAccessTokenFetchedOnce(t *testing.T) {
	f := pushtest.NewFCM(t)
	s := fcmSenders(t, f)
	var wg sync.WaitGroup
	errs := make(chan error, 8)
	for range 8 { // at once: one of them fetches, the others wait for it
		wg.Go(func() { errs <- send(t, s, fcmPush(f, fcmToken)) })
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		if err != nil {
			t.Fatal(err)
		}
	}
	if err := send(t, s, fcmPush(f, fcmToken)); err != nil {
		t.Fatal(err)
	}
	if n := f.TokenRequests(); n != 1 {
		t.Errorf("%d access tokens fetched for 9 pushes, want 1", n)
	}
}

func TestFCMAccessTokenRenewedBeforeExpiry(t *testing.T) {
	f := pushtest.NewFCM(t)
	fake := clock.NewFake(start)
	f.SetNow(fake.Now)
	f.SetExpiresIn(600)
	s := fcmSenders(t, f, push.WithNow(fake.Now))
	for _, step := range []struct {
		advance time.Duration
		fetched int
	}{{0, 1}, {4 * time.Minute, 1}, {4*time.Minute + 30*time.Second, 1}, {time.Minute, 2}, {time.Minute, 2}} {
		fake.Advance(step.advance)
		if err := send(t, s, fcmPush(f, fcmToken)); err != nil {
			t.Fatal(err)
		}
		if n := f.TokenRequests(); n != step.fetched {
			t.Fatalf("at %s: %d tokens fetched, want %d", fake.Now().Sub(start), n, step.fetched)
		}
	}
}

func TestFCMRevokedAccessTokenFetchedAgain(t *testing.T) {
	f := pushtest.NewFCM(t)
	s := fcmSenders(t, f)
	if err := send(t, s, fcmPush(f, fcmToken)); err != nil {
		t.Fatal(err)
	}
	f.Revoke()
	if err := send(t, s, fcmPush(f, fcmToken)); err != nil {
		t.Fatalf("after revocation: %v", err)
	}
	if n := f.TokenRequests(); n != 2 {
		t.Errorf("%d tokens fetched, want 2", n)
	}
}

func TestFCMUnregisteredIsGone(t *testing.T) {
	f := pushtest.NewFCM(t)
	s := fcmSenders(t, f)
	f.Fail(fcmToken, http.StatusNotFound, "UNREGISTERED")
	err := send(t, s, fcmPush(f, fcmToken))
	rej := wantRejected(t, err, push.Gone, "UNREGISTERED")
	if rej.Status != http.StatusNotFound || rej.Provider != "fcm" || !push.IsGone(err) {
		t.Errorf("%+v", rej)
	}
	noSecret(t, err, fcmToken)

	f.Fail(fcmToken, http.StatusForbidden, "SENDER_ID_MISMATCH")
	wantRejected(t, send(t, s, fcmPush(f, fcmToken)), push.Gone, "SENDER_ID_MISMATCH")
	f.Fail(fcmToken, http.StatusBadRequest, "INVALID_ARGUMENT")
	wantRejected(t, send(t, s, fcmPush(f, fcmToken)), push.Refused, "INVALID_ARGUMENT")
}

func TestFCMBusyIsRetryable(t *testing.T) {
	f := pushtest.NewFCM(t)
	s := fcmSenders(t, f)
	f.FailWith(fcmToken, pushtest.Failure{Status: http.StatusTooManyRequests, Reason: "QUOTA_EXCEEDED", RetryAfter: "30"})
	rej := wantRejected(t, send(t, s, fcmPush(f, fcmToken)), push.Retry, "QUOTA_EXCEEDED")
	if rej.RetryAfter != 30*time.Second {
		t.Errorf("RetryAfter = %s", rej.RetryAfter)
	}
	f.Fail(fcmToken, http.StatusServiceUnavailable, "UNAVAILABLE")
	wantRejected(t, send(t, s, fcmPush(f, fcmToken)), push.Retry, "UNAVAILABLE")
}

func TestFCMWrongServiceAccountKeyIsRefused(t *testing.T) {
	f := pushtest.NewFCM(t)
	other := pushtest.NewFCM(t)
	other.Key = f.Key // other's token endpoint checks another key than its file's
	cfg := fcmConfig(other)
	cfg.FCMProjects = []string{f.Project}
	s := newSenders(t, cfg, push.WithTLSConfig(pushtest.ClientTLS(f.Server, other.Server)), push.WithFCMURL(f.URL))
	err := send(t, s, fcmPush(f, fcmToken))
	wantRejected(t, err, push.Refused, "oauth:invalid_grant")
	noSecret(t, err, fcmToken)
}

func TestFCMTimeout(t *testing.T) {
	f := pushtest.NewFCM(t)
	s := fcmSenders(t, f)
	f.Stall(fcmToken)
	ctx, cancel := context.WithTimeout(context.Background(), 300*time.Millisecond)
	defer cancel()
	err := s.Send(ctx, fcmPush(f, fcmToken))
	if push.FailureReason(err) != "timeout" || !errors.Is(err, push.ErrUnreachable) {
		t.Fatalf("err = %v, want a timeout", err)
	}
	noSecret(t, err, fcmToken)
}

func TestFCMProjects(t *testing.T) {
	f := pushtest.NewFCM(t)
	s := fcmSenders(t, f)
	p := fcmPush(f, fcmToken)
	p.Param = "" // no pn-param: the service account's project
	if err := send(t, s, p); err != nil {
		t.Fatal(err)
	}
	for _, param := range []string{"another-project", "../../x", "p/messages:send?"} {
		p.Param = param
		if err := send(t, s, p); !errors.Is(err, push.ErrBadParams) {
			t.Errorf("pn-param %q: err = %v, want ErrBadParams", param, err)
		}
	}
	p.Param = f.Project
	for _, prid := range []string{"has space", strings.Repeat("x", 5000)} {
		p.PRID = prid
		if err := send(t, s, p); !errors.Is(err, push.ErrBadParams) {
			t.Errorf("pn-prid %s: err = %v, want ErrBadParams", push.Redact(prid), err)
		}
	}

	cfg := fcmConfig(f)
	cfg.FCMProjects = []string{"another-project", f.Project}
	s = newSenders(t, cfg, push.WithTLSConfig(f.TLSConfig()), push.WithFCMURL(f.URL))
	p = fcmPush(f, fcmToken)
	p.Param = "another-project" // allowed here; the stand-in refuses it as FCM would
	wantRejected(t, send(t, s, p), push.Refused, "PERMISSION_DENIED")
}
