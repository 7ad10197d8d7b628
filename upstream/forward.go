package upstream

import (
	"errors"
	"fmt"
	"net/netip"
	"sync/atomic"
	"time"

	"github.com/emiago/sipgo"
	"github.com/sipedge/sipedge/upstream/hop"
)

// ErrBusy means the cores already carry all the edge lets them: the
// in-flight cap is reached.
var ErrBusy = errors.New("upstream: in-flight cap reached")

// Unreachable is the error when no core could take a request. Phones are
// told to come back after RetryAfter.
type Unreachable struct {
	Dest       netip.AddrPort // the core tried, if any
	RetryAfter time.Duration
	Err        error
}

func (u *Unreachable) Error() string {
	if !u.Dest.IsValid() {
		return fmt.Sprintf("no core reachable: %v", u.Err)
	}
	return fmt.Sprintf("core %s unreachable: %v", u.Dest, u.Err)
}

func (u *Unreachable) Unwrap() error { return u.Err }

// Forwarder sends requests to the cores from the edge's core-side socket,
// under the in-flight cap.
type Forwarder struct {
	pool       *Pool
	client     *sipgo.Client
	lean       hop.Starter
	local      netip.AddrPort
	localHost  string // local's address, as the edge's Via writes it
	admit      func() (release func(), ok bool)
	retryAfter time.Duration
	lastDest   atomic.Pointer[destName] // the core last named, written once
}

// destName is a core's address and its string.
type destName struct {
	addr netip.AddrPort
	name string
}

// ForwarderDeps are what a Forwarder sends with.
type ForwarderDeps struct {
	Client *sipgo.Client  // required: the core-side user agent's client
	Local  netip.AddrPort // required: the core-side socket
	// Lean runs non-INVITE transactions over UDP from that socket in
	// place of Client's; nil leaves them to Client.
	Lean hop.Starter
	// Admit takes an in-flight slot, or says the cores are busy; nil
	// admits everything.
	Admit func() (release func(), ok bool)
}

// NewForwarder sends to pool's targets as cfg says.
func NewForwarder(cfg Config, pool *Pool, d ForwarderDeps) (*Forwarder, error) {
	if pool == nil || d.Client == nil || !d.Local.IsValid() {
		return nil, errors.New("upstream: NewForwarder needs a pool, a client and the local address")
	}
	if d.Admit == nil {
		d.Admit = func() (func(), bool) { return func() {}, true }
	}
	return &Forwarder{pool: pool, client: d.Client, lean: d.Lean, local: d.Local, localHost: d.Local.Addr().String(),
		admit: d.Admit, retryAfter: cfg.RetryAfter}, nil
}

// Hop is the way to the core that takes the next request: Pool.Pick's.
func (f *Forwarder) Hop() hop.Hop { return f.HopTo(f.pool.Pick()) }

// HopTo is the way to t, for a caller walking Pool.Order's targets.
func (f *Forwarder) HopTo(t Target) hop.Hop {
	h := hop.Hop{Client: f.client, Transport: t.Transport, Dest: t.Addr, SentBy: f.local,
		DestName: f.nameOf(t.Addr), SentByHost: f.localHost}
	if t.Transport == "UDP" {
		h.Local, h.Lean = f.local, f.lean
	}
	return h
}

// nameOf is a.String(), kept for the core named last: nearly every
// request goes to the same one.
func (f *Forwarder) nameOf(a netip.AddrPort) string {
	if d := f.lastDest.Load(); d != nil && d.addr == a {
		return d.name
	}
	d := &destName{addr: a, name: a.String()}
	f.lastDest.Store(d)
	return d.name
}

// Admit takes an in-flight slot for one request to a core: ErrBusy when
// none is free. release gives it back.
func (f *Forwarder) Admit() (release func(), err error) {
	release, ok := f.admit()
	if !ok {
		return release, ErrBusy
	}
	return release, nil
}

// Unreachable is the error for a request that could not reach the core
// at dest (zero when none was tried, as while draining).
func (f *Forwarder) Unreachable(dest netip.AddrPort, err error) error {
	return &Unreachable{Dest: dest, RetryAfter: f.retryAfter, Err: err}
}
