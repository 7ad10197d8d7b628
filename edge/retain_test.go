package edge_test

import (
	"fmt"
	"runtime"
	"strings"
	"testing"

	"github.com/sipedge/sipedge/edge/edgetest"
	"github.com/sipedge/sipedge/upstream/upstreamtest"
)

// TestRegistrationsKeepNoAnswer: sipwire.Parse cuts a message's strings
// from one copy of its datagram, REGISTERs and their answers alike, so a
// string kept past the message (in a binding, a transaction kept for
// Timer J or K, a stopped timer) keeps the whole datagram alive. Once
// registrations are done and their transactions ended, the heap holds
// next to nothing sipwire.parse allocated, however many phones
// registered.
func TestRegistrationsKeepNoAnswer(t *testing.T) {
	const phones, each = 10, 50
	defer func(rate int) { runtime.MemProfileRate = rate }(runtime.MemProfileRate)
	runtime.MemProfileRate = 1 // every allocation, from here on

	core := upstreamtest.Start(t, upstreamtest.Options{})
	e := edgetest.Start(t, core.URI("udp"), func(c *edgetest.Config) {
		c.RateLimit.Allow = []string{"127.0.0.0/8"}
	})
	for p := range phones {
		phone := edgetest.Dial(t, "udp", e.UDP)
		for i := range each {
			user := fmt.Sprintf("keep%d-%d", p, i)
			phone.Send(phone.Register(edgetest.Reg{User: user, CSeq: 1, CallID: user + "@test"}))
			if res := phone.MustRecvResponse(wait); res.StatusCode != 200 {
				t.Fatalf("%s: got %d", user, res.StatusCode)
			}
		}
	}
	if n := e.Bindings().Len(); n != phones*each {
		t.Fatalf("%d bindings, want %d", n, phones*each)
	}
	// Each 200 is some 400 bytes: kept per binding, that would be 200 KB
	// here. A transaction drops its answer with the callbacks once it is
	// final (Timer K keeps only the request's bytes), so there is nothing
	// to wait for: the count is taken now.
	if kept := inUseBy("github.com/sipedge/sipedge/edge/sipwire.parse"); kept > 16<<10 {
		t.Fatalf("%d bytes allocated by sipwire.parse still in use after %d registrations", kept, phones*each)
	}
}

// inUseBy is the heap in use that fn allocated, as of a fresh collection.
func inUseBy(fn string) int64 {
	runtime.GC()
	runtime.GC() // the profile is as of the last completed cycle
	var recs []runtime.MemProfileRecord
	n, _ := runtime.MemProfile(nil, true)
	for {
		recs = make([]runtime.MemProfileRecord, n+50)
		var ok bool
		if n, ok = runtime.MemProfile(recs, true); ok {
			recs = recs[:n]
			break
		}
	}
	var sum int64
	for _, r := range recs {
		frames := runtime.CallersFrames(r.Stack())
		for {
			f, more := frames.Next()
			if strings.HasPrefix(f.Function, fn) {
				sum += r.InUseBytes()
				break
			}
			if !more {
				break
			}
		}
	}
	return sum
}

// TestStrangersKeepNothing: a host with no account sends REGISTERs (each
// padded to a kilobyte) for names the core does not know. Each is parsed
// from one copy of its datagram and challenged by the core; once the
// challenges are relayed, none of those copies may stay: a stranger must
// not be able to grow the edge's memory with what it sends.
func TestStrangersKeepNothing(t *testing.T) {
	const phones, each = 10, 50
	defer func(rate int) { runtime.MemProfileRate = rate }(runtime.MemProfileRate)
	runtime.MemProfileRate = 1

	core := upstreamtest.Start(t, upstreamtest.Options{Users: map[string]string{"alice": "secret"}})
	e := edgetest.Start(t, core.URI("udp"), func(c *edgetest.Config) {
		c.RateLimit.Allow = []string{"127.0.0.0/8"} // the limits are not what is tested here
	})
	pad := "X-Pad: " + strings.Repeat("p", 1024)
	for p := range phones {
		phone := edgetest.Dial(t, "udp", e.UDP)
		for i := range each {
			user := fmt.Sprintf("nobody%d-%d", p, i)
			phone.Send(phone.Register(edgetest.Reg{User: user, Extra: pad}))
			if res := phone.MustRecvResponse(wait); res.StatusCode != 401 {
				t.Fatalf("%s: got %d, want the core's 401", user, res.StatusCode)
			}
		}
	}
	if n := e.Bindings().Len(); n != 0 {
		t.Fatalf("%d bindings from strangers", n)
	}
	if kept := inUseBy("github.com/sipedge/sipedge/edge/sipwire.parse"); kept > 16<<10 {
		t.Fatalf("%d bytes allocated by sipwire.parse still in use after %d strangers' REGISTERs", kept, phones*each)
	}
}
