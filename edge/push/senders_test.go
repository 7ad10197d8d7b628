package push_test

import (
	"context"
	"errors"
	"fmt"
	"net"
	"strings"
	"sync"
	"testing"

	"github.com/sipedge/sipedge/edge/push"
)

// recording is a Sender that remembers what it was given.
type recording struct {
	name string
	mu   sync.Mutex
	got  []push.Push
}

func (r *recording) Send(_ context.Context, p push.Push) error {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.got = append(r.got, p)
	return nil
}

func (r *recording) last() push.Push {
	r.mu.Lock()
	defer r.mu.Unlock()
	if len(r.got) == 0 {
		return push.Push{}
	}
	return r.got[len(r.got)-1]
}

func TestRouteByProvider(t *testing.T) {
	apns, fcm, gw := &recording{name: "apns"}, &recording{name: "fcm"}, &recording{name: "gateway"}
	for _, tc := range []struct {
		name               string
		apns, fcm, gateway push.Sender
		provider           string
		want               *recording // nil: unsupported
	}{
		{"apns", apns, fcm, gw, "apns", apns},
		{"apns sandbox", apns, fcm, gw, "apns.dev", apns},
		{"case", apns, fcm, gw, "FCM", fcm},
		{"fcm", apns, fcm, gw, "fcm", fcm},
		{"other to gateway", apns, fcm, gw, "webpush", gw},
		{"apns not configured: gateway", nil, fcm, gw, "apns", gw},
		{"fcm not configured: gateway", apns, nil, gw, "fcm", gw},
		{"no gateway", apns, fcm, nil, "webpush", nil},
		{"nothing", nil, nil, nil, "apns", nil},
		{"no provider", apns, fcm, gw, "", nil},
	} {
		s := push.Route(tc.apns, tc.fcm, tc.gateway)
		if s.Supports(tc.provider) != (tc.want != nil) {
			t.Errorf("%s: Supports(%q) = %v", tc.name, tc.provider, !(tc.want != nil))
		}
		err := s.Send(context.Background(), push.Push{Provider: tc.provider, PRID: "tok-" + tc.name})
		if tc.want == nil {
			if !errors.Is(err, push.ErrUnknownProvider) || push.FailureReason(err) != "unknown_provider" {
				t.Errorf("%s: err = %v, want ErrUnknownProvider", tc.name, err)
			}
			continue
		}
		if err != nil {
			t.Errorf("%s: %v", tc.name, err)
		} else if got := tc.want.last(); got.PRID != "tok-"+tc.name {
			t.Errorf("%s: %s got %+v", tc.name, tc.want.name, got)
		}
	}
}

func TestSendGivesAnIDAndWantsAPRID(t *testing.T) {
	gw := &recording{}
	s := push.Route(nil, nil, gw)
	if err := s.Send(context.Background(), push.Push{Provider: "x", PRID: "t"}); err != nil {
		t.Fatal(err)
	}
	id := gw.last().ID
	if len(id) != 36 || id[14] != '4' || strings.ToLower(id) != id {
		t.Errorf("ID %q is not a lower-case UUIDv4", id)
	}
	if a, b := push.NewID(), push.NewID(); a == b {
		t.Error("NewID repeats")
	}
	if err := s.Send(context.Background(), push.Push{Provider: "x", PRID: "t", ID: "mine"}); err != nil || gw.last().ID != "mine" {
		t.Errorf("a given ID is kept: %v %q", err, gw.last().ID)
	}
	if err := s.Send(context.Background(), push.Push{Provider: "x"}); !errors.Is(err, push.ErrBadParams) {
		t.Errorf("no pn-prid: err = %v", err)
	}
	if err := push.Route(nil, nil, nil).Send(context.Background(), push.Push{Provider: "evil\r\nInjected: 1", PRID: "t"}); err == nil || strings.ContainsAny(err.Error(), "\r\n") {
		t.Errorf("provider quoted raw: %q", err)
	}
}

func TestNothingConfigured(t *testing.T) {
	s := newSenders(t, push.DefaultConfig())
	if s.Enabled() || s.Supports("apns") || s.Supports("fcm") || s.Supports("x") {
		t.Error("senders with no configuration support something")
	}
}

// timeoutErr is a net.Error that timed out.
type timeoutErr struct{}

func (timeoutErr) Error() string   { return "i/o timeout" }
func (timeoutErr) Timeout() bool   { return true }
func (timeoutErr) Temporary() bool { return true }

var _ net.Error = timeoutErr{}

func TestFailureReason(t *testing.T) {
	for _, tc := range []struct {
		err  error
		want string
	}{
		{nil, ""},
		{&push.Rejected{Class: push.Gone}, "gone"},
		{fmt.Errorf("wrapped: %w", &push.Rejected{Class: push.Retry}), "retry"},
		{&push.Rejected{Class: push.Refused}, "refused"},
		{fmt.Errorf("x: %w", push.ErrUnknownProvider), "unknown_provider"},
		{fmt.Errorf("x: %w", push.ErrBadParams), "bad_params"},
		{context.Canceled, "canceled"},
		{context.DeadlineExceeded, "timeout"},
		{fmt.Errorf("dial: %w", timeoutErr{}), "timeout"},
		{fmt.Errorf("x: %w", push.ErrUnreachable), "unreachable"},
		{errors.New("odd"), "other"},
	} {
		if got := push.FailureReason(tc.err); got != tc.want {
			t.Errorf("FailureReason(%v) = %q, want %q", tc.err, got, tc.want)
		}
	}
	if push.Class(9).String() != "class(9)" {
		t.Error(push.Class(9).String())
	}
}

func TestRedact(t *testing.T) {
	for _, tc := range []struct{ in, want string }{
		{"", "(none)"},
		{apnsToken, "4e2f8a…(64)"},
		{"abcdefgh", "ab…(8)"},
		{"abc", "…(3)"},
		{"\x1b[2Jabcdefghijklmnop", "?[2Ja…(20)"},
		{"ÄÖÜäöüßéèêëàâæçñ", "????…(16)"},
	} {
		if got := push.Redact(tc.in); got != tc.want {
			t.Errorf("Redact(%q) = %q, want %q", tc.in, got, tc.want)
		}
	}
}
