package ratelimit

import (
	"fmt"
	"strconv"
)

// Decision is what to do with a datagram, connection or request.
//
// The zero value is not a decision: a Decision left unset never allows by
// accident. Switch on it exhaustively.
type Decision uint8

const (
	// Allow lets it through.
	Allow Decision = iota + 1
	// Reject answers the request with 503 Service Unavailable and a
	// Retry-After of [Limiter.RetryAfter]. Only [Limiter.Request] returns
	// it: before parsing there is nothing to answer.
	Reject
	// Drop discards it silently (for a connection: close it at once).
	Drop

	numDecisions = iota + 1 // size of arrays indexed by Decision
)

func (d Decision) String() string {
	switch d {
	case Allow:
		return "allow"
	case Reject:
		return "reject"
	case Drop:
		return "drop"
	}
	return "Decision(" + strconv.Itoa(int(d)) + ")"
}

// MarshalText is String, so that JSON logs and encoders show the name,
// not the number.
func (d Decision) MarshalText() ([]byte, error) { return []byte(d.String()), nil }

// Reason says which rule produced a decision or a ban.
type Reason uint8

const (
	// ReasonNone goes with Allow.
	ReasonNone Reason = iota
	// ReasonBanned: the source (or a prefix holding it) is banned.
	ReasonBanned
	// ReasonPacketRate: the source's UDP datagram budget is spent.
	ReasonPacketRate
	// ReasonByteRate: the source's UDP byte budget is spent.
	ReasonByteRate
	// ReasonConnRate: the source opens connections too fast.
	ReasonConnRate
	// ReasonConnCount: the source holds too many connections at once.
	ReasonConnCount
	// ReasonSourceRate: the source sends too many requests.
	ReasonSourceRate
	// ReasonAORRate: too many REGISTERs for one address-of-record.
	ReasonAORRate
	// ReasonMethodRate: the source sends too many requests of one
	// non-REGISTER method.
	ReasonMethodRate
	// ReasonInflight: too many requests are waiting on the core.
	ReasonInflight
	// ReasonScanner: the User-Agent is a known scanner.
	ReasonScanner
	// ReasonAuthFailures: too many failed authentications.
	ReasonAuthFailures
	// ReasonMalformed: too many unparsable messages, or an invalid
	// source address.
	ReasonMalformed
	// ReasonFlood: over a limit without pause for flood_window.
	ReasonFlood
	// ReasonOverflow: the source is not tracked (max_sources reached) and
	// the budget all such sources share is spent.
	ReasonOverflow
	// ReasonManual: banned by an operator.
	ReasonManual
	// ReasonAORAuthFailures: too many failed authentications on one
	// address-of-record, from any sources.
	ReasonAORAuthFailures

	// NumReasons is the number of reasons, for arrays indexed by Reason.
	NumReasons = iota
)

var reasonNames = [NumReasons]string{
	ReasonNone:            "none",
	ReasonBanned:          "banned",
	ReasonPacketRate:      "packet_rate",
	ReasonByteRate:        "byte_rate",
	ReasonConnRate:        "conn_rate",
	ReasonConnCount:       "conn_count",
	ReasonSourceRate:      "source_rate",
	ReasonAORRate:         "aor_rate",
	ReasonMethodRate:      "method_rate",
	ReasonInflight:        "inflight",
	ReasonScanner:         "scanner",
	ReasonAuthFailures:    "auth_failures",
	ReasonMalformed:       "malformed",
	ReasonFlood:           "flood",
	ReasonOverflow:        "overflow",
	ReasonManual:          "manual",
	ReasonAORAuthFailures: "aor_auth_failures",
}

// String is a stable snake_case name, usable as a metrics label or a log
// value (the config key of the limit, where there is one).
func (r Reason) String() string {
	if int(r) < len(reasonNames) {
		return reasonNames[r]
	}
	return "Reason(" + strconv.Itoa(int(r)) + ")"
}

// MarshalText is String, so that JSON logs and encoders show the name,
// not the number.
func (r Reason) MarshalText() ([]byte, error) { return []byte(r.String()), nil }

// ParseReason is String's inverse.
func ParseReason(s string) (Reason, error) {
	for i, n := range reasonNames {
		if n == s {
			return Reason(i), nil
		}
	}
	return ReasonNone, fmt.Errorf("ratelimit: unknown reason %q", s)
}

// UnmarshalText is ParseReason, so stored bans read back.
func (r *Reason) UnmarshalText(b []byte) error {
	v, err := ParseReason(string(b))
	if err == nil {
		*r = v
	}
	return err
}
