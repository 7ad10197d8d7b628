package registry

import (
	"net/netip"
	"slices"
	"sort"
	"strconv"
	"strings"
	"time"

	"github.com/sipedge/sipedge/nat"
	"github.com/sipedge/sipedge/ratelimit"
)

// Binding is one contact of one AOR as the core accepted it.
type Binding struct {
	AOR         string      // sip:user@domain
	Tenant      string      // whose domain it is ("": the default tenant)
	Contact     string      // the endpoint's own Contact URI
	CoreContact string      // the Contact URI the core stored (differs in rewrite mode)
	Flow        nat.FlowKey // where the REGISTER came from
	FlowSince   time.Time   // when that flow was first seen: what its tokens carry
	Expires     time.Time   // as granted to the phone: by the core, or by the edge when offloading
	CoreExpires time.Time   // when the core's registration ends (the same as Expires without offload)
	CallID      string
	CSeq        uint32
	UserAgent   string
	Instance    string // +sip.instance, if any
	RegID       int    // reg-id, 0 if none
	NAT         nat.Evidence
	Updated     time.Time
	// Push is how to wake the phone (RFC 8599) when its flow is gone:
	// such a binding outlives its flow, until it expires.
	Push Push
}

// Push is a contact's RFC 8599 parameters: pn-provider (apns, fcm, ...),
// pn-prid (the device token: never logged whole) and pn-param.
type Push struct {
	Provider, PRID, Param string
}

// Wakes reports whether the binding can be woken by a push.
func (p Push) Wakes() bool { return p.Provider != "" && p.PRID != "" }

// ID names a binding within its AOR: the contact the core holds, and for
// an RFC 5626 outbound client its instance and reg-id too, since one
// Contact may be registered over several flows (reg-id 1 and 2).
func ID(coreContact, instance string, regID int) string {
	if instance == "" {
		return coreContact
	}
	return coreContact + "|" + instance + "|" + strconv.Itoa(regID)
}

// CoreLost reports whether the core may not hold b: marked by
// ForgetAtCore, and not accepted by a core since.
func (b Binding) CoreLost() bool { return b.CoreExpires.IsZero() }

// ID is the binding's name within its AOR.
func (b Binding) ID() string {
	cc := b.CoreContact
	if cc == "" {
		cc = b.Contact
	}
	return ID(cc, b.Instance, b.RegID)
}

// isID reports whether id is b.ID() without building it: the table's
// lookups compare every binding of an AOR under the registry's lock.
func (b Binding) isID(id string) bool {
	cc := b.CoreContact
	if cc == "" {
		cc = b.Contact
	}
	if b.Instance == "" {
		return id == cc
	}
	for _, part := range [...]string{cc, "|", b.Instance, "|"} {
		var ok bool
		if id, ok = strings.CutPrefix(id, part); !ok {
			return false
		}
	}
	return id == strconv.Itoa(b.RegID) // small numbers: no allocation
}

type key struct{ aor, id string }

// table holds bindings by AOR and ID, with indexes by core-side contact,
// by flow and by source. It has no lock: the Registry's guards it.
type table struct {
	byAOR  map[string][]Binding  // AOR -> its bindings (one or a few: a slice costs less than a map)
	byCore map[string]key        // CoreContact -> binding (rewrite mode)
	byFlow map[nat.FlowKey][]key // a flow holds one binding or a few: a slice costs less than a map
	bySrc  map[netip.Prefix]int  // bindings per source (ratelimit.SourcePrefix)
	count  int
}

func newTable() table {
	return table{byAOR: make(map[string][]Binding), byCore: make(map[string]key),
		byFlow: make(map[nat.FlowKey][]key), bySrc: make(map[netip.Prefix]int)}
}

// put inserts or refreshes b. A binding with an instance and reg-id
// replaces the one of the same AOR, instance and reg-id even if its
// Contact changed (RFC 5626 §6): a phone behind a symmetric NAT
// re-registering from a new port moves its binding instead of leaving a
// dead twin. It returns the binding b replaced, if any.
func (t *table) put(b Binding) (old Binding, replaced bool) {
	id := b.ID()
	if b.Instance != "" {
		// delete shifts the slice: look again from where the twin was.
		for i := 0; i < len(t.byAOR[b.AOR]); {
			if o := t.byAOR[b.AOR][i]; o.Instance == b.Instance && o.RegID == b.RegID && !o.isID(id) {
				old, replaced = o, true
				t.delete(o)
				continue
			}
			i++
		}
	}
	if i := t.index(b.AOR, id); i >= 0 {
		o := t.byAOR[b.AOR][i]
		if o.Flow == b.Flow && o.CoreContact == b.CoreContact {
			t.byAOR[b.AOR][i] = b // a plain refresh: indexes unchanged
			return o, true
		}
		old, replaced = o, true
		t.delete(o)
	}
	t.insert(b)
	return old, replaced
}

// index is where binding id of aor is in byAOR[aor], or -1.
func (t *table) index(aor, id string) int {
	for i, b := range t.byAOR[aor] {
		if b.isID(id) {
			return i
		}
	}
	return -1
}

// own gives b strings of its own: the edge cuts a message's strings
// from one copy of it (sipwire.Parse), and one string kept from it would
// keep the whole datagram for the binding's life. Where b's AOR already
// has a binding with the same string, as on a refresh, that one is
// shared; anything else is copied.
func (t *table) own(b *Binding) {
	olds := t.byAOR[b.AOR]
	if len(olds) > 0 {
		b.AOR = olds[0].AOR
	} else {
		b.AOR = strings.Clone(b.AOR)
	}
	for _, f := range ownedStrings {
		s := f(b)
		if *s == "" {
			continue
		}
		shared := false
		for i := range olds {
			if v := *f(&olds[i]); v == *s {
				*s, shared = v, true
				break
			}
		}
		if !shared {
			*s = strings.Clone(*s)
		}
	}
	if b.CoreContact == b.Contact { // as in Path mode
		b.CoreContact = b.Contact
	}
}

// ownedStrings are the strings of a binding that may come from a
// message (own).
var ownedStrings = [...]func(*Binding) *string{
	func(b *Binding) *string { return &b.Contact },
	func(b *Binding) *string { return &b.CoreContact },
	func(b *Binding) *string { return &b.CallID },
	func(b *Binding) *string { return &b.UserAgent },
	func(b *Binding) *string { return &b.Instance },
	func(b *Binding) *string { return &b.Push.Provider },
	func(b *Binding) *string { return &b.Push.PRID },
	func(b *Binding) *string { return &b.Push.Param },
}

func (t *table) insert(b Binding) {
	t.byAOR[b.AOR] = append(t.byAOR[b.AOR], b)
	t.count++
	k := key{b.AOR, b.ID()}
	if b.CoreContact != "" {
		t.byCore[b.CoreContact] = k
	}
	if fk := t.byFlow[b.Flow]; !slices.Contains(fk, k) {
		t.byFlow[b.Flow] = append(fk, k)
	}
	t.bySrc[ratelimit.SourcePrefix(b.Flow.Remote.Addr())]++
}

// delete removes b and reports whether it was there.
func (t *table) delete(b Binding) bool {
	k := key{b.AOR, b.ID()}
	i := t.index(b.AOR, k.id)
	if i < 0 {
		return false
	}
	if bs := slices.Delete(t.byAOR[b.AOR], i, i+1); len(bs) > 0 {
		t.byAOR[b.AOR] = bs
	} else {
		delete(t.byAOR, b.AOR)
	}
	t.count--
	if b.CoreContact != "" && t.byCore[b.CoreContact] == k {
		delete(t.byCore, b.CoreContact)
	}
	if fk := slices.DeleteFunc(t.byFlow[b.Flow], func(x key) bool { return x == k }); len(fk) > 0 {
		t.byFlow[b.Flow] = fk
	} else {
		delete(t.byFlow, b.Flow)
	}
	src := ratelimit.SourcePrefix(b.Flow.Remote.Addr())
	if t.bySrc[src]--; t.bySrc[src] <= 0 {
		delete(t.bySrc, src)
	}
	return true
}

func (t *table) get(aor, id string) (Binding, bool) {
	if i := t.index(aor, id); i >= 0 {
		return t.byAOR[aor][i], true
	}
	return Binding{}, false
}

// ofAOR returns every binding of aor.
func (t *table) ofAOR(aor string) []Binding { return slices.Clone(t.byAOR[aor]) }

// ofFlow returns every binding registered on f.
func (t *table) ofFlow(f nat.FlowKey) []Binding {
	out := make([]Binding, 0, len(t.byFlow[f]))
	for _, k := range t.byFlow[f] {
		if b, ok := t.get(k.aor, k.id); ok {
			out = append(out, b)
		}
	}
	return out
}

// expired returns every binding expired at now.
func (t *table) expired(now time.Time) []Binding {
	var out []Binding
	for _, bs := range t.byAOR {
		for _, b := range bs {
			if !b.Expires.After(now) {
				out = append(out, b)
			}
		}
	}
	return out
}

func (t *table) all() []Binding {
	out := make([]Binding, 0, t.count)
	for _, bs := range t.byAOR {
		out = append(out, bs...)
	}
	return out
}

func sortByContact(bs []Binding) {
	sort.Slice(bs, func(i, j int) bool {
		if bs[i].AOR != bs[j].AOR {
			return bs[i].AOR < bs[j].AOR
		}
		return bs[i].Contact < bs[j].Contact
	})
}
