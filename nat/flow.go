// Package nat owns what sipedge knows about the network path to an
// endpoint: flow keys, signed flow tokens, keepalive demultiplexing and
// NAT detection. It makes no SIP routing decisions.
package nat

import (
	"fmt"
	"net/netip"
	"strings"
)

// Transport is the transport protocol of a flow.
type Transport uint8

const (
	UDP Transport = iota + 1
	TCP
	TLS
	WS
	WSS
)

var transportNames = [...]string{UDP: "UDP", TCP: "TCP", TLS: "TLS", WS: "WS", WSS: "WSS"}

func (t Transport) String() string {
	if t >= UDP && t <= WSS {
		return transportNames[t]
	}
	return fmt.Sprintf("Transport(%d)", uint8(t))
}

// Reliable reports whether the transport is a stream (connection-oriented).
func (t Transport) Reliable() bool { return t != UDP }

// ParseTransport maps a SIP transport name (any case) to a Transport.
func ParseTransport(s string) (Transport, error) {
	for t := UDP; t <= WSS; t++ {
		if strings.EqualFold(s, transportNames[t]) {
			return t, nil
		}
	}
	return 0, fmt.Errorf("unknown transport %q", s)
}

// FlowKey identifies one flow (RFC 5626 §3.3): the transport, the local
// socket it arrived on and the remote address it came from. For streams the
// pair of addresses names exactly one connection. It is comparable and
// allocation-free, so it serves as a map key.
type FlowKey struct {
	Transport Transport
	Local     netip.AddrPort
	Remote    netip.AddrPort
}

func (k FlowKey) String() string {
	return k.Transport.String() + ":" + k.Local.String() + "<-" + k.Remote.String()
}

// Valid reports whether every part of the key is set.
func (k FlowKey) Valid() bool {
	return k.Transport >= UDP && k.Transport <= WSS && k.Local.IsValid() && k.Remote.IsValid()
}
