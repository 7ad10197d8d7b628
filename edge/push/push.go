// Package push wakes sleeping phones (RFC 8599): it sends one push
// notification through Apple's APNs (VoIP pushes, token auth over
// HTTP/2), Google's FCM (HTTP v1, OAuth2 service account) or a generic
// HTTP push gateway, chosen by the binding's pn-provider.
//
// Senders built by New read their credentials once; each Send is one
// HTTP request (two when an access token must be fetched first), bounded
// by the configured timeout. Failures are typed so the caller can count
// them by reason (FailureReason) and drop a binding whose device token is
// gone. No error of this package carries a device token, a key or an
// access token; Redact shortens a pn-prid for the caller's logs.
package push

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"fmt"
	"unicode/utf8"
)

// Push is one wake-up for a phone: its RFC 8599 parameters (pn-provider,
// pn-prid, pn-param) and what is calling.
type Push struct {
	Provider string // pn-provider: "apns", "fcm", or a gateway's own name
	PRID     string // pn-prid: the device or registration token; secret
	Param    string // pn-param: "<team>.<bundle>.voip" for apns, the project for fcm

	Method string // the held request's method: INVITE, MESSAGE, ...
	CallID string // its Call-ID, for the app to match the request it will get
	From   string // its From header, for the app to show who calls

	// ID is unique per push (NewID fills it when empty): the gateway
	// and APNs (apns-id) receive it, so a push can be traced end to end.
	ID string
}

// Sender sends pushes through one push service.
type Sender interface {
	// Send returns nil once the service accepted the push; else an
	// error FailureReason classifies. It returns by ctx's deadline.
	Send(ctx context.Context, p Push) error
}

// SenderFunc adapts a function to Sender (tests, metrics wrappers).
type SenderFunc func(ctx context.Context, p Push) error

// Send calls f.
func (f SenderFunc) Send(ctx context.Context, p Push) error { return f(ctx, p) }

// NewID returns a random UUID (version 4, lower case): the form APNs
// accepts as apns-id.
func NewID() string {
	var b [16]byte
	_, _ = rand.Read(b[:]) // never fails (crypto/rand)
	b[6] = b[6]&0x0f | 0x40
	b[8] = b[8]&0x3f | 0x80
	h := hex.EncodeToString(b[:])
	return h[0:8] + "-" + h[8:12] + "-" + h[12:16] + "-" + h[16:20] + "-" + h[20:32]
}

// isUUID reports whether s is a UUID in its 8-4-4-4-12 hex form.
func isUUID(s string) bool {
	if len(s) != 36 {
		return false
	}
	for i := 0; i < len(s); i++ {
		c := s[i]
		switch i {
		case 8, 13, 18, 23:
			if c != '-' {
				return false
			}
		default:
			if !isHex(c) {
				return false
			}
		}
	}
	return true
}

func isHex(c byte) bool {
	return '0' <= c && c <= '9' || 'a' <= c && c <= 'f' || 'A' <= c && c <= 'F'
}

// Redact shortens a pn-prid for logs: a few leading characters, enough
// to tell two phones apart in an incident, and the length. A device
// token is a credential to push to the phone, so never log it whole.
func Redact(prid string) string {
	if prid == "" {
		return "(none)"
	}
	n := utf8.RuneCountInString(prid)
	keep := min(6, n/4) // never more than a quarter of it
	r := []rune(prid)[:keep]
	for i, c := range r {
		if c < 0x20 || c == 0x7f || c > 0x7e {
			r[i] = '?' // nothing a log line could be forged with
		}
	}
	return fmt.Sprintf("%s…(%d)", string(r), n)
}
