package nat

import (
	"net/netip"
	"strings"
)

// Evidence is what a REGISTER tells about the NAT between the endpoint
// and the edge, as bit flags.
type Evidence uint8

const (
	// ViaAddrDiffers: the Via sent-by address is not the packet's source.
	ViaAddrDiffers Evidence = 1 << iota
	// ViaPortDiffers: the Via port is not the source port (UDP only).
	ViaPortDiffers
	// PrivateContact: a Contact names a private (RFC 1918), shared
	// (RFC 6598 CGNAT), unique-local or link-local address.
	PrivateContact
	// ContactPortDiffers: a Contact on the source address names another
	// port than the source port (UDP only).
	ContactPortDiffers
	// ALGSuspected: Via and Contact already carry the public source
	// address, yet the request shows it came from behind a NAT: the ports
	// disagree (a router's SIP ALG rewrote the addresses it saw but not
	// the NAT's port mapping), or the Call-ID still names the private
	// address the phone put there (an ALG rewrites Via and Contact,
	// Linux's nf_nat_sip among them, but leaves the Call-ID alone).
	ALGSuspected
)

var evidenceNames = []string{"via-addr", "via-port", "private-contact", "contact-port", "alg"}

func (e Evidence) String() string {
	if e == 0 {
		return "none"
	}
	var parts []string
	for i, n := range evidenceNames {
		if e&(1<<i) != 0 {
			parts = append(parts, n)
		}
	}
	return strings.Join(parts, ",")
}

// BehindNAT reports whether the evidence shows a NAT on the path.
func (e Evidence) BehindNAT() bool {
	return e&(ViaAddrDiffers|ViaPortDiffers|PrivateContact|ContactPortDiffers|ALGSuspected) != 0
}

// HostPort is an address as a SIP header gives it: a host string (IP or
// name) and a port, 0 if absent.
type HostPort struct {
	Host string
	Port int
}

// Detect classifies the path of a request that arrived from src over t,
// with the given top Via sent-by, Contact addresses and Call-ID.
func Detect(src netip.AddrPort, t Transport, via HostPort, contacts []HostPort, callID string) Evidence {
	var e Evidence
	srcIP := src.Addr().Unmap()
	viaIP, viaIsIP := parseIP(via.Host)
	if !viaIsIP || viaIP != srcIP {
		e |= ViaAddrDiffers
	}
	udp := t == UDP
	if udp && portOr5060(via.Port) != src.Port() {
		e |= ViaPortDiffers
	}
	publicInHeaders := viaIsIP && viaIP == srcIP
	for _, c := range contacts {
		ip, ok := parseIP(c.Host)
		if !ok {
			continue
		}
		if isPrivate(ip) {
			e |= PrivateContact
		}
		if ip == srcIP && udp && portOr5060(c.Port) != src.Port() {
			e |= ContactPortDiffers
		}
		if ip != srcIP {
			publicInHeaders = false
		}
	}
	if publicInHeaders && len(contacts) > 0 && !isPrivate(srcIP) &&
		(e&(ViaPortDiffers|ContactPortDiffers) != 0 || privateCallID(callID)) {
		e |= ALGSuspected
	}
	return e
}

// privateCallID reports whether a Call-ID ends in "@" and a private
// address, as many phones make theirs (sipp, Yealink, Grandstream).
func privateCallID(callID string) bool {
	i := strings.LastIndexByte(callID, '@')
	if i < 0 {
		return false
	}
	host := callID[i+1:]
	if h, _, ok := strings.Cut(host, ":"); ok && !strings.HasPrefix(host, "[") {
		host = h
	}
	ip, ok := parseIP(host)
	return ok && isPrivate(ip) && !ip.IsLoopback() && !ip.IsUnspecified()
}

func parseIP(host string) (netip.Addr, bool) {
	ip, err := netip.ParseAddr(strings.Trim(host, "[]"))
	if err != nil {
		return netip.Addr{}, false
	}
	return ip.Unmap(), true
}

func portOr5060(p int) uint16 {
	if p <= 0 || p > 65535 {
		return 5060
	}
	return uint16(p)
}

var cgnat = netip.MustParsePrefix("100.64.0.0/10")

// isPrivate reports addresses that cannot be reached from the Internet.
func isPrivate(ip netip.Addr) bool {
	return ip.IsPrivate() || cgnat.Contains(ip) || ip.IsLinkLocalUnicast() || ip.IsLoopback() || ip.IsUnspecified()
}
