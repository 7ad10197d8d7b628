package edge

import (
	"log/slog"
	"sync"

	"github.com/sipedge/sipedge/nat"
	"github.com/sipedge/sipedge/ratelimit"
)

// Conns tracks the access side's open stream connections by flow, with
// the connection slot the limiter granted each, to give back when it
// closes. Should two open connections ever share one key (the kernel
// allows it only across network namespaces or after a TIME_WAIT reuse),
// each close gives back one slot and the flow dies only with the last.
// The registry asks it whether a stream flow can still take a binding.
type Conns struct {
	mu   sync.Mutex
	open map[nat.FlowKey][]func() // release funcs of the open connections, oldest first
}

// NewConns returns an empty tracker.
func NewConns() *Conns { return &Conns{open: make(map[nat.FlowKey][]func())} }

// Open reports whether a connection with key k is open.
func (c *Conns) Open(k nat.FlowKey) bool {
	c.mu.Lock()
	defer c.mu.Unlock()
	return len(c.open[k]) > 0
}

func (c *Conns) add(k nat.FlowKey, release func()) {
	c.mu.Lock()
	c.open[k] = append(c.open[k], release)
	c.mu.Unlock()
}

// done releases one connection's slot and reports whether another
// connection with the same key is still open.
func (c *Conns) done(k nat.FlowKey) (othersOpen bool) {
	c.mu.Lock()
	rs := c.open[k]
	var release func()
	if len(rs) > 0 {
		release, rs = rs[0], rs[1:]
	}
	if len(rs) == 0 {
		delete(c.open, k)
	} else {
		c.open[k] = rs
	}
	c.mu.Unlock()
	if release != nil {
		release()
	}
	return len(rs) > 0
}

// streamHooks observes the access stream listeners: the limiter admits
// each connection, traffic refreshes its flow, and a close kills it. A
// connection that holds no binding is closed once idle (nat's limits:
// it must also deliver each message in time, and not too large).
func streamHooks(log *slog.Logger, limiter *ratelimit.Limiter, flows *nat.FlowTable, conns *Conns, bound func(nat.FlowKey) bool, limits nat.StreamLimits) nat.StreamHooks {
	var cut onceAWhile // connections the limits closed (slowloris, idle piles, oversize, bad WebSocket)
	return nat.StreamHooks{
		Bound:  bound,
		Limits: limits,
		Accept: func(k nat.FlowKey) bool {
			d, release := limiter.Accept(k.Remote.Addr())
			if d != ratelimit.Allow {
				release()
				return false
			}
			conns.add(k, release)
			return true
		},
		// Only a REGISTER the core accepted creates a flow; traffic merely
		// refreshes it, and never revives one found dead.
		OnRead: func(k nat.FlowKey) { flows.Touch(k) },
		OnPong: flows.Pong,
		OnClose: func(k nat.FlowKey, why string) {
			switch why {
			case "header timeout", "idle", "too large", "handshake", "protocol":
				cut.note(log, "stream connections closed by their limits", "nat.header_timeout, idle_timeout, max_header_bytes")
			}
			if conns.done(k) {
				return // a newer connection carries this flow now
			}
			flows.Closed(k, why) // unknown flows are ignored
		},
	}
}
