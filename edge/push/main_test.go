package push_test

import (
	"context"
	"errors"
	"strings"
	"testing"
	"time"

	"github.com/sipedge/sipedge/edge/push"
	"go.uber.org/goleak"
)

func TestMain(m *testing.M) { goleak.VerifyTestMain(m) }

// Device tokens as the services issue them: APNs 64 hex digits, FCM a
// long opaque string.
const (
	apnsToken  = "4e2f8a9b1c3d5e7f90a1b2c3d4e5f60718293a4b5c6d7e8f9012a3b4c5d6e7f8"
	apnsToken2 = "0011223344556677889900aabbccddeeff00112233445566778899aabbccddee"
	fcmToken   = "cPlGUX1mSnuYI3f0pi9sNp:APA91bEV5wh8ikxgWdHL30EAZJ58I_h1dtcSSxqme7Uxnz9JZk0mwO3ZeQIGEt-HDxHWcQSF69UaQBFvIba7YbiJjI"
)

// start is a fixed instant for fake clocks.
var start = time.Date(2026, 3, 1, 12, 0, 0, 0, time.UTC)

// newSenders builds Senders for cfg, closed when t ends.
func newSenders(t *testing.T, cfg push.Config, opts ...push.Option) *push.Senders {
	t.Helper()
	s, err := push.New(cfg, opts...)
	if err != nil {
		t.Fatalf("push.New: %v", err)
	}
	t.Cleanup(s.Close)
	return s
}

// send sends p with a deadline.
func send(t *testing.T, s *push.Senders, p push.Push) error {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	return s.Send(ctx, p)
}

// wantRejected wants err to be a *push.Rejected of class and reason.
func wantRejected(t *testing.T, err error, class push.Class, reason string) *push.Rejected {
	t.Helper()
	var rej *push.Rejected
	if !errors.As(err, &rej) {
		t.Fatalf("err = %v, want *push.Rejected", err)
	}
	if rej.Class != class || rej.Reason != reason {
		t.Fatalf("rejected %s/%s (%v), want %s/%s", rej.Class, rej.Reason, err, class, reason)
	}
	if got := push.FailureReason(err); got != class.String() {
		t.Errorf("FailureReason = %q, want %q", got, class)
	}
	return rej
}

// noSecret fails if err's text holds any of secrets.
func noSecret(t *testing.T, err error, secrets ...string) {
	t.Helper()
	if err == nil {
		return
	}
	for _, s := range secrets {
		if s != "" && strings.Contains(err.Error(), s) {
			t.Errorf("error %q reveals a secret (%s)", err, push.Redact(s))
		}
	}
}
