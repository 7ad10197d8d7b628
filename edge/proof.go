package edge

import (
	"hash/maphash"
	"net/netip"
	"strings"
	"sync"

	"github.com/emiago/sipgo/sip"
	"github.com/sipedge/sipedge/nat"
)

// proofs remembers the digest nonces the edge relayed to UDP sources, so
// a later request whose credentials echo one proves its source receives
// what is sent to it (return routability): only such a source can spend
// an AOR's budget or earn a ban with failed passwords. A spoofed source
// never sees the challenge sent to the address it forges. Bounded: the
// oldest entries go first, so a flood of challenges can only make a
// proven source look unproven again, never the other way round.
type proofs struct {
	seed maphash.Seed
	mu   sync.Mutex
	set  map[uint64]struct{}
	ring []uint64
	next int
}

func newProofs(max int) *proofs {
	return &proofs{seed: maphash.MakeSeed(), set: make(map[uint64]struct{}, max), ring: make([]uint64, max)}
}

func (p *proofs) key(src netip.Addr, nonce string) uint64 {
	var h maphash.Hash
	h.SetSeed(p.seed)
	b := src.Unmap().As16()
	h.Write(b[:])
	h.WriteString(nonce)
	return h.Sum64()
}

// challenged records the nonces of a 401/407 sent to src.
func (p *proofs) challenged(src netip.Addr, res *sip.Response) {
	for _, name := range []string{"WWW-Authenticate", "Proxy-Authenticate"} {
		for h := range eachHeader(res, name) {
			if n := digestParam(h.Value(), "nonce"); n != "" {
				p.add(p.key(src, n))
			}
		}
	}
}

func (p *proofs) add(k uint64) {
	p.mu.Lock()
	defer p.mu.Unlock()
	if _, ok := p.set[k]; ok {
		return
	}
	if old := p.ring[p.next]; old != 0 {
		delete(p.set, old)
	}
	p.ring[p.next] = k
	p.next = (p.next + 1) % len(p.ring)
	p.set[k] = struct{}{}
}

// answered reports whether req's credentials echo a nonce sent to src.
func (p *proofs) answered(src netip.Addr, req *sip.Request) bool {
	for _, name := range []string{"Authorization", "Proxy-Authorization"} {
		for h := range eachHeader(req, name) {
			if n := digestParam(h.Value(), "nonce"); n != "" {
				p.mu.Lock()
				_, ok := p.set[p.key(src, n)]
				p.mu.Unlock()
				if ok {
					return true
				}
			}
		}
	}
	return false
}

// proven reports whether r's source has shown it receives what is sent
// to it: a stream connection (its handshake did), a flow the core
// accepted a registration on, credentials echoing a challenge sent to
// that address, or a trusted peer (the operator vouches for it). Asked
// by several stages, it is worked out once per request.
func (s *Server) proven(r *Request) bool {
	if r.proof == 0 {
		r.proof = -1
		if r.Flow.Transport != nat.UDP || s.d.Registry.HasFlow(r.Flow) || s.proxy.peer(r.Flow.Remote.Addr()) ||
			s.proofs.answered(r.Flow.Remote.Addr(), r.Request) {
			r.proof = 1
		}
	}
	return r.proof > 0
}

// digestParam returns the value of one parameter of a Digest challenge
// or credentials header, unquoted ("" if absent).
func digestParam(v, name string) string {
	for part := range strings.SplitSeq(v, ",") {
		part = strings.TrimSpace(part)
		if i := strings.IndexByte(part, ' '); i >= 0 && !strings.Contains(part[:i], "=") {
			part = strings.TrimSpace(part[i+1:]) // the scheme before the first parameter
		}
		k, val, ok := strings.Cut(part, "=")
		if ok && strings.EqualFold(strings.TrimSpace(k), name) {
			return strings.Trim(strings.TrimSpace(val), `"`)
		}
	}
	return ""
}
