package push

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/url"
	"time"
)

// Errors a push fails with, besides *Rejected. Each is wrapped with the
// sender's name; match with errors.Is.
var (
	// ErrUnknownProvider: no sender for the binding's pn-provider (its
	// service is not configured, and there is no gateway).
	ErrUnknownProvider = errors.New("no sender for this pn-provider")
	// ErrBadParams: the binding's pn-prid or pn-param cannot be pushed
	// to by this edge (malformed, another Apple team, a project or app
	// not configured). The phone registered them: the binding is unusable.
	ErrBadParams = errors.New("pn-prid or pn-param unusable")
	// ErrUnreachable: the push service did not answer (connection,
	// TLS, timeout); errors.Is(err, context.DeadlineExceeded) tells a
	// timeout.
	ErrUnreachable = errors.New("push service unreachable")
)

// Class is what a rejected push means for the next one.
type Class int

const (
	// Retry: the service is busy or failing; the same push may succeed
	// later (HTTP 429, 5xx, an expired access token).
	Retry Class = iota
	// Gone: the device token is dead (the app was removed, the token
	// rotated, it belongs to another app or environment). Stop pushing
	// to this binding.
	Gone
	// Refused: this edge's request or credentials are wrong (a revoked
	// key, a bad topic, no permission): fix the configuration.
	Refused
)

// String is the class's metric label.
func (c Class) String() string {
	switch c {
	case Retry:
		return "retry"
	case Gone:
		return "gone"
	case Refused:
		return "refused"
	}
	return fmt.Sprintf("class(%d)", int(c))
}

// Rejected is a push the service answered with an error.
type Rejected struct {
	Provider string // the sender: "apns", "fcm", "gateway"
	Status   int    // HTTP status
	// Reason is the service's error code: APNs "reason"
	// ("Unregistered", "BadDeviceToken"), FCM errorCode or status
	// ("UNREGISTERED", "QUOTA_EXCEEDED"), OAuth "error" ("invalid_grant").
	// Only a short code is kept, never free text from the response.
	Reason     string
	Class      Class
	RetryAfter time.Duration // from Retry-After, if the service sent it
}

func (e *Rejected) Error() string {
	return fmt.Sprintf("push: %s rejected the push: %d %s (%s)", e.Provider, e.Status, e.Reason, e.Class)
}

// Retryable reports whether the same push may succeed later.
func (e *Rejected) Retryable() bool { return e.Class == Retry }

// Gone reports whether the device token is dead.
func (e *Rejected) Gone() bool { return e.Class == Gone }

// FailureReason is err's label for a metric: "unknown_provider",
// "bad_params", "gone", "refused", "retry", "timeout", "unreachable",
// "canceled", or "other"; "" for nil.
func FailureReason(err error) string {
	var rej *Rejected
	switch {
	case err == nil:
		return ""
	case errors.As(err, &rej):
		return rej.Class.String()
	case errors.Is(err, ErrUnknownProvider):
		return "unknown_provider"
	case errors.Is(err, ErrBadParams):
		return "bad_params"
	case errors.Is(err, context.Canceled):
		return "canceled"
	case errors.Is(err, context.DeadlineExceeded) || isTimeout(err):
		return "timeout"
	case errors.Is(err, ErrUnreachable):
		return "unreachable"
	}
	return "other"
}

// IsGone reports whether err says the binding's device token is dead, or
// its push parameters unusable: the caller may stop pushing to it.
func IsGone(err error) bool {
	var rej *Rejected
	return errors.As(err, &rej) && rej.Class == Gone || errors.Is(err, ErrBadParams)
}

func isTimeout(err error) bool {
	var ne net.Error
	return errors.As(err, &ne) && ne.Timeout()
}

// badParams is ErrBadParams with what is wrong; never the values.
func badParams(sender, what string) error {
	return fmt.Errorf("push: %s: %s: %w", sender, what, ErrBadParams)
}

// transportError is a request that got no answer. It names the service's
// host only: the URL itself may carry a device token (APNs puts it in the
// path) or a gateway's key (in its query).
type transportError struct {
	sender, host string
	err          error
}

func (e *transportError) Error() string {
	return fmt.Sprintf("push: %s: %s: %v", e.sender, e.host, e.err)
}

func (e *transportError) Unwrap() []error { return []error{ErrUnreachable, e.err} }

// unreachable wraps an error of http.Client.Do without its URL.
func unreachable(sender string, u *url.URL, err error) error {
	var ue *url.Error
	if errors.As(err, &ue) {
		err = ue.Err
	}
	return &transportError{sender: sender, host: u.Host, err: err}
}
