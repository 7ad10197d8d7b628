package edge

import (
	"iter"
	"strings"

	"github.com/emiago/sipgo/sip"
)

// headered is a parsed SIP message (*sip.Request, *sip.Response).
type headered interface{ Headers() []sip.Header }

// headersNamed is m's headers called name, in any letter case. sipgo's
// GetHeaders lowers every header's name into a new string to compare
// it unless it is one of a dozen it knows: at 3,000 registrations/s that
// was a twentieth of the edge's CPU. Compact forms need nothing more:
// sipgo's parser gives the headers it expands their full names.
func headersNamed(m headered, name string) []sip.Header {
	var out []sip.Header
	for _, h := range m.Headers() {
		if equalName(h.Name(), name) {
			out = append(out, h)
		}
	}
	return out
}

// eachHeader yields m's headers called name, in any letter case, as
// headersNamed does but without collecting them (a slice per call was a
// twentieth of what a registration allocated). Nothing may add or
// remove headers of m while it runs.
func eachHeader(m headered, name string) iter.Seq[sip.Header] {
	return func(yield func(sip.Header) bool) {
		for _, h := range m.Headers() {
			if equalName(h.Name(), name) && !yield(h) {
				return
			}
		}
	}
}

// eachContact yields m's Contact headers but "*".
func eachContact(m headered) iter.Seq[*sip.ContactHeader] {
	return func(yield func(*sip.ContactHeader) bool) {
		for _, h := range m.Headers() {
			if c, ok := h.(*sip.ContactHeader); ok && !c.Address.Wildcard && !yield(c) {
				return
			}
		}
	}
}

// headerNamed is m's first header called name, in any letter case (nil:
// none).
func headerNamed(m headered, name string) sip.Header {
	for _, h := range m.Headers() {
		if equalName(h.Name(), name) {
			return h
		}
	}
	return nil
}

// equalName compares header names in any letter case, the lengths first:
// most names a search passes differ in length.
func equalName(a, b string) bool { return len(a) == len(b) && strings.EqualFold(a, b) }
