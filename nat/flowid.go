package nat

import "net/netip"

// flowID is a FlowKey packed into 24 bytes without pointers, for
// structures that hold one per watched flow: a FlowKey is 72 bytes with
// three pointers for the garbage collector to follow. The local address
// (one of the edge's few sockets) and an IPv6 zone are numbered by a
// flowIDs.
type flowID struct {
	ip    [16]byte
	port  uint16
	local uint16 // flowIDs.locals index
	zone  uint16 // 0: IPv4, 1: IPv6 without zone, n+2: flowIDs.zones[n]
	tr    Transport
}

// flowIDs numbers local addresses and zones. Not safe for concurrent
// use: its owner's lock guards it.
type flowIDs struct {
	locals  []netip.AddrPort
	localOf map[netip.AddrPort]uint16
	zones   []string
	zoneOf  map[string]uint16
}

// pack is key's flowID. With add false it reports false for a key whose
// local address or zone was never numbered (no flow of it is held);
// with add true it numbers them, and fails only past 65,535 of either.
func (ids *flowIDs) pack(key FlowKey, add bool) (flowID, bool) {
	local, ok := ids.localOf[key.Local]
	if !ok {
		if !add || len(ids.locals) > 0xffff {
			return flowID{}, false
		}
		if ids.localOf == nil {
			ids.localOf = make(map[netip.AddrPort]uint16)
		}
		local = uint16(len(ids.locals))
		ids.locals = append(ids.locals, key.Local)
		ids.localOf[key.Local] = local
	}
	a := key.Remote.Addr()
	id := flowID{ip: a.As16(), port: key.Remote.Port(), local: local, tr: key.Transport}
	switch z := a.Zone(); {
	case a.Is4():
	case z == "":
		id.zone = 1
	default:
		n, ok := ids.zoneOf[z]
		if !ok {
			if !add || len(ids.zones) > 0xffff-2 {
				return flowID{}, false
			}
			if ids.zoneOf == nil {
				ids.zoneOf = make(map[string]uint16)
			}
			n = uint16(len(ids.zones))
			ids.zones = append(ids.zones, z)
			ids.zoneOf[z] = n
		}
		id.zone = n + 2
	}
	return id, true
}

// remote is id's remote address.
func (ids *flowIDs) remote(id flowID) netip.Addr {
	if id.zone == 0 {
		return netip.AddrFrom16(id.ip).Unmap()
	}
	a := netip.AddrFrom16(id.ip)
	if id.zone > 1 {
		a = a.WithZone(ids.zones[id.zone-2])
	}
	return a
}

// key is the FlowKey id was packed from.
func (ids *flowIDs) key(id flowID) FlowKey {
	return FlowKey{Transport: id.tr, Local: ids.locals[id.local], Remote: netip.AddrPortFrom(ids.remote(id), id.port)}
}
