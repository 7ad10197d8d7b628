package edge

import (
	"context"
	"errors"
	"net"
	"syscall"

	"github.com/emiago/sipgo/sip"
	"github.com/gobwas/ws"
)

// errNoDial is what the access side says when sipgo tries to open a
// connection toward a phone.
var errNoDial = errors.New("the access side never dials: phones' flows are theirs to open")

// neverDial gives the access UA stream transports that cannot connect
// out. sipgo dials the Via host when a response's connection is gone, and
// the NAT address when a stream flow's connection is; both would let
// anyone on the Internet make the edge open connections wherever they
// like. Flows are only ever used, never made, on the access side.
func neverDial() sip.TransportsConfig {
	tcp := func(net.Addr) net.Dialer {
		return net.Dialer{Control: func(string, string, syscall.RawConn) error { return errNoDial }}
	}
	wsd := func(net.Addr) ws.Dialer {
		return ws.Dialer{NetDial: func(context.Context, string, string) (net.Conn, error) { return nil, errNoDial }}
	}
	return sip.TransportsConfig{
		TCP: &sip.TransportTCP{DialerCreate: tcp},
		TLS: &sip.TransportTLS{TransportTCP: &sip.TransportTCP{DialerCreate: tcp}},
		WS:  &sip.TransportWS{DialerCreate: wsd},
		WSS: &sip.TransportWSS{TransportWS: &sip.TransportWS{DialerCreate: wsd}},
	}
}
