package registry

import (
	"testing"
)

// isID agrees with ID for every form of binding, and allocates nothing.
func TestIsIDMatchesID(t *testing.T) {
	bs := []Binding{
		{Contact: "sip:a@192.0.2.1:5060"},
		{Contact: "sip:a@192.0.2.1:5060", CoreContact: "sip:tok@198.51.100.1"},
		{Contact: "sip:a@192.0.2.1:5060", Instance: "<urn:uuid:1>", RegID: 1},
		{Contact: "sip:a@192.0.2.1:5060", Instance: "<urn:uuid:1>", RegID: 2},
		{Contact: "sip:a@192.0.2.1:5060", Instance: "<urn:uuid:1|x>", RegID: 1},
		{Contact: "sip:a@192.0.2.1:5061", Instance: "<urn:uuid:1>", RegID: 1},
		{Contact: "sip:a@192.0.2.1:5060|<urn:uuid:1>|1"},
		{Contact: "sip:a@192.0.2.1:5060", Instance: "<urn:uuid:1>", RegID: 123},
	}
	for _, a := range bs {
		for _, b := range bs {
			if got, want := a.isID(b.ID()), a.ID() == b.ID(); got != want {
				t.Errorf("%+v isID(%q) = %v, want %v", a, b.ID(), got, want)
			}
		}
		id := a.ID()
		if n := testing.AllocsPerRun(100, func() { a.isID(id) }); n != 0 && a.RegID < 100 {
			t.Errorf("%+v: isID allocates %v times", a, n)
		}
	}
}
