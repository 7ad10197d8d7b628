package state

import (
	"encoding/json"
	"fmt"
	"io"
	"net/netip"
	"time"

	"github.com/sipedge/sipedge/edge/audit"
	"github.com/sipedge/sipedge/edge/registry"
	"github.com/sipedge/sipedge/nat"
	"github.com/sipedge/sipedge/ratelimit"
)

// bindingRecord is a Binding as stored: explicit, named fields, so the
// format does not change when the Go type does by accident.
type bindingRecord struct {
	AOR         string         `json:"aor"`
	Tenant      string         `json:"tenant,omitempty"`
	Contact     string         `json:"contact"`
	CoreContact string         `json:"core_contact,omitempty"`
	Transport   string         `json:"transport"`
	Local       netip.AddrPort `json:"local"`
	Remote      netip.AddrPort `json:"remote"`
	FlowSince   time.Time      `json:"flow_since"`
	Expires     time.Time      `json:"expires"`
	CoreExpires time.Time      `json:"core_expires,omitzero"`
	CallID      string         `json:"call_id"`
	CSeq        uint32         `json:"cseq"`
	UserAgent   string         `json:"user_agent,omitempty"`
	Instance    string         `json:"instance,omitempty"`
	RegID       int            `json:"reg_id,omitempty"`
	NAT         uint8          `json:"nat,omitempty"`
	Updated     time.Time      `json:"updated"`
	PNProvider  string         `json:"pn_provider,omitempty"`
	PNPRID      string         `json:"pn_prid,omitempty"`
	PNParam     string         `json:"pn_param,omitempty"`
}

func bindingKey(b registry.Binding) []byte { return []byte(b.AOR + "\x00" + b.ID()) }

func encodeBinding(b registry.Binding) ([]byte, error) {
	return json.Marshal(bindingRecord{
		AOR: b.AOR, Tenant: b.Tenant, Contact: b.Contact, CoreContact: b.CoreContact,
		Transport: b.Flow.Transport.String(), Local: b.Flow.Local, Remote: b.Flow.Remote, FlowSince: b.FlowSince,
		Expires: b.Expires, CoreExpires: b.CoreExpires, CallID: b.CallID, CSeq: b.CSeq, UserAgent: b.UserAgent,
		Instance: b.Instance, RegID: b.RegID, NAT: uint8(b.NAT), Updated: b.Updated,
		PNProvider: b.Push.Provider, PNPRID: b.Push.PRID, PNParam: b.Push.Param,
	})
}

// decodeBinding reads a record in either form: binary (the state file,
// since format 2) or JSON (Redis, and state files before).
func decodeBinding(v []byte) (registry.Binding, error) {
	var b registry.Binding
	var err error
	if len(v) > 0 && v[0] != '{' {
		b, err = decodeBinaryBinding(v)
	} else {
		b, err = decodeJSONBinding(v)
	}
	if err != nil {
		return registry.Binding{}, err
	}
	if b.AOR == "" || b.Contact == "" || !b.Flow.Valid() {
		return registry.Binding{}, fmt.Errorf("incomplete binding %q", b.AOR)
	}
	return b, nil
}

func decodeJSONBinding(v []byte) (registry.Binding, error) {
	var r bindingRecord
	if err := json.Unmarshal(v, &r); err != nil {
		return registry.Binding{}, err
	}
	tp, err := nat.ParseTransport(r.Transport)
	if err != nil {
		return registry.Binding{}, err
	}
	return registry.Binding{
		AOR: r.AOR, Tenant: r.Tenant, Contact: r.Contact, CoreContact: r.CoreContact,
		Flow:      nat.FlowKey{Transport: tp, Local: r.Local, Remote: r.Remote},
		FlowSince: r.FlowSince, Expires: r.Expires, CoreExpires: r.CoreExpires, CallID: r.CallID, CSeq: r.CSeq, UserAgent: r.UserAgent,
		Instance: r.Instance, RegID: r.RegID, NAT: nat.Evidence(r.NAT), Updated: r.Updated,
		Push: registry.Push{Provider: r.PNProvider, PRID: r.PNPRID, Param: r.PNParam},
	}, nil
}

// banRecord is a ratelimit.Ban as stored.
type banRecord struct {
	Prefix netip.Prefix     `json:"prefix"`
	Reason ratelimit.Reason `json:"reason"`
	Since  time.Time        `json:"since"`
	Until  time.Time        `json:"until"`
	Count  int              `json:"count"`
	Manual bool             `json:"manual,omitempty"`
	Events int              `json:"events,omitempty"`
	Window time.Duration    `json:"window,omitempty"`
	Over   ratelimit.Reason `json:"over,omitempty"`
}

func encodeBan(b ratelimit.Ban) ([]byte, error) {
	return json.Marshal(banRecord{Prefix: b.Addr, Reason: b.Reason, Since: b.Since, Until: b.Until, Count: b.Count,
		Manual: b.Manual, Events: b.Events, Window: b.Window, Over: b.Over})
}

func decodeBan(v []byte) (ratelimit.Ban, error) {
	var r banRecord
	if err := json.Unmarshal(v, &r); err != nil {
		return ratelimit.Ban{}, err
	}
	return ratelimit.Ban{Addr: r.Prefix, Reason: r.Reason, Since: r.Since, Until: r.Until, Count: r.Count,
		Manual: r.Manual, Events: r.Events, Window: r.Window, Over: r.Over}, nil
}

// Dump writes snap as JSON lines: each binding (with its flow spelled
// out as "flow"), then each ban (as {"ban": ...}).
func Dump(w io.Writer, snap Snapshot) error {
	enc := json.NewEncoder(w)
	for _, b := range snap.Bindings {
		raw, err := encodeBinding(b)
		if err != nil {
			return err
		}
		var m map[string]any
		if err := json.Unmarshal(raw, &m); err != nil {
			return err
		}
		m["flow"] = b.Flow.String()
		if b.Push.PRID != "" { // a device token is as good as the phone's number to a spammer
			m["pn_prid"] = b.Push.PRID[:min(4, len(b.Push.PRID))] + "…"
			m["contact"], m["core_contact"] = audit.Redact(b.Contact), audit.Redact(b.CoreContact)
		}
		if err := enc.Encode(m); err != nil {
			return err
		}
	}
	for _, b := range snap.Bans {
		raw, err := encodeBan(b)
		if err != nil {
			return err
		}
		if err := enc.Encode(map[string]json.RawMessage{"ban": raw}); err != nil {
			return err
		}
	}
	return nil
}
