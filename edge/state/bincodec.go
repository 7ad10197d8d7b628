package state

import (
	"encoding/binary"
	"errors"
	"net/netip"
	"time"

	"github.com/sipedge/sipedge/edge/registry"
	"github.com/sipedge/sipedge/nat"
)

// A binding in the state file is a version byte, then its fields in the
// order below: strings and addresses as a uvarint length and the bytes,
// numbers as varints, times as nanoseconds since 1970 (0: no time). JSON
// cost a third of each write and made records 2.5 times longer, and
// every flush rewrites the file pages its records sit on. A JSON record
// starts with '{', so files written before still load.
const bindingV1 = 1

// appendBinding appends b's record to dst.
func appendBinding(dst []byte, b registry.Binding) []byte {
	dst = append(dst, bindingV1)
	dst = appendString(dst, b.AOR)
	dst = appendString(dst, b.Tenant)
	dst = appendString(dst, b.Contact)
	dst = appendString(dst, b.CoreContact)
	dst = appendString(dst, b.Flow.Transport.String())
	dst = appendAddrPort(dst, b.Flow.Local)
	dst = appendAddrPort(dst, b.Flow.Remote)
	dst = appendTime(dst, b.FlowSince)
	dst = appendTime(dst, b.Expires)
	dst = appendTime(dst, b.CoreExpires)
	dst = appendString(dst, b.CallID)
	dst = binary.AppendUvarint(dst, uint64(b.CSeq))
	dst = appendString(dst, b.UserAgent)
	dst = appendString(dst, b.Instance)
	dst = binary.AppendVarint(dst, int64(b.RegID))
	dst = binary.AppendUvarint(dst, uint64(b.NAT))
	dst = appendTime(dst, b.Updated)
	dst = appendString(dst, b.Push.Provider)
	dst = appendString(dst, b.Push.PRID)
	return appendString(dst, b.Push.Param)
}

func appendString(dst []byte, s string) []byte {
	return append(binary.AppendUvarint(dst, uint64(len(s))), s...)
}

// appendAddrPort writes netip's binary form of ap (the address's 0, 4 or
// 16 bytes, an IPv6 zone, the port's 2) after its length.
func appendAddrPort(dst []byte, ap netip.AddrPort) []byte {
	a := ap.Addr()
	n := 2 + len(a.Zone())
	if a.Is4() {
		n += 4
	} else if a.Is6() {
		n += 16
	}
	dst = binary.AppendUvarint(dst, uint64(n))
	dst, _ = ap.AppendBinary(dst) // never fails
	return dst
}

func appendTime(dst []byte, t time.Time) []byte {
	if t.IsZero() {
		return append(dst, 0)
	}
	return binary.AppendVarint(dst, t.UnixNano())
}

var errShort = errors.New("record cut short")

// binReader reads a record; the first failure sticks and later reads
// return zero values.
type binReader struct {
	b   []byte
	err error
}

func (r *binReader) uvarint() uint64 { v, n := binary.Uvarint(r.b); return advance(r, v, n) }
func (r *binReader) varint() int64   { v, n := binary.Varint(r.b); return advance(r, v, n) }

// advance consumes the n bytes v was read from (n <= 0: none could be).
func advance[T uint64 | int64](r *binReader, v T, n int) T {
	if n <= 0 {
		r.fail()
		return 0
	}
	r.b = r.b[n:]
	return v
}

func (r *binReader) bytes() []byte {
	n := r.uvarint()
	if r.err != nil || n > uint64(len(r.b)) {
		r.fail()
		return nil
	}
	v := r.b[:n]
	r.b = r.b[n:]
	return v
}

func (r *binReader) string() string { return string(r.bytes()) }

func (r *binReader) addrPort() netip.AddrPort {
	var ap netip.AddrPort
	if err := ap.UnmarshalBinary(r.bytes()); err != nil && r.err == nil {
		r.err = err
	}
	return ap
}

func (r *binReader) time() time.Time {
	ns := r.varint()
	if ns == 0 {
		return time.Time{}
	}
	return time.Unix(0, ns).UTC()
}

func (r *binReader) fail() {
	if r.err == nil {
		r.err = errShort
	}
	r.b = nil
}

// decodeBinaryBinding reads a record appendBinding wrote.
func decodeBinaryBinding(v []byte) (registry.Binding, error) {
	if len(v) == 0 || v[0] != bindingV1 {
		return registry.Binding{}, errors.New("unknown record version")
	}
	r := &binReader{b: v[1:]}
	var b registry.Binding
	b.AOR, b.Tenant, b.Contact, b.CoreContact = r.string(), r.string(), r.string(), r.string()
	tp, err := nat.ParseTransport(r.string())
	if r.err == nil && err != nil {
		r.err = err
	}
	b.Flow = nat.FlowKey{Transport: tp, Local: r.addrPort(), Remote: r.addrPort()}
	b.FlowSince, b.Expires, b.CoreExpires = r.time(), r.time(), r.time()
	b.CallID = r.string()
	cseq := r.uvarint()
	b.UserAgent, b.Instance = r.string(), r.string()
	regID, ev := r.varint(), r.uvarint()
	b.Updated = r.time()
	b.Push = registry.Push{Provider: r.string(), PRID: r.string(), Param: r.string()}
	switch {
	case r.err != nil:
		return registry.Binding{}, r.err
	case len(r.b) != 0:
		return registry.Binding{}, errors.New("trailing bytes")
	case cseq > 1<<32-1 || regID != int64(int(regID)) || ev > 255:
		return registry.Binding{}, errors.New("number out of range")
	}
	b.CSeq, b.RegID, b.NAT = uint32(cseq), int(regID), nat.Evidence(ev)
	return b, nil
}
