package registry

import (
	"fmt"
	"net/netip"
	"runtime"
	"testing"
	"time"

	"github.com/sipedge/sipedge/nat"
)

// BenchmarkMemory100k reports the heap one binding costs in a registry of
// 100,000 (a realistic AOR, contact, Call-ID and User-Agent each),
// flow-table entry included.
func BenchmarkMemory100k(b *testing.B) {
	const n = 100_000
	for range b.N {
		runtime.GC()
		var before, after runtime.MemStats
		runtime.ReadMemStats(&before)
		g := newRig(b)
		exp := time.Now().Add(time.Hour)
		for i := range n {
			ip := netip.AddrFrom4([4]byte{198, 51, byte(i >> 8), byte(i)})
			f := nat.FlowKey{Transport: nat.UDP, Local: netip.MustParseAddrPort("192.0.2.1:5060"), Remote: netip.AddrPortFrom(ip, uint16(1024+i%60000))}
			g.put(Binding{
				AOR:       fmt.Sprintf("sip:%d@voip.example.com", 100000+i),
				Contact:   fmt.Sprintf("sip:%d@192.168.%d.%d:5060;transport=udp", 100000+i, byte(i>>8), byte(i)),
				Flow:      f,
				Expires:   exp,
				CallID:    fmt.Sprintf("%016x@192.168.1.2", i),
				CSeq:      uint32(i),
				UserAgent: "Yealink SIP-T46U 108.86.0.20",
			})
		}
		g.r.d.OnEvent = nil
		g.events = nil
		g.udp.on = nil
		g.src.n = nil
		runtime.GC()
		runtime.ReadMemStats(&after)
		b.ReportMetric(float64(after.HeapAlloc-before.HeapAlloc)/n, "B/binding")
		runtime.KeepAlive(g.r)
	}
}

func BenchmarkApplyRefresh(b *testing.B) {
	g := newRig(b)
	g.r.d.OnEvent = nil
	f := nat.FlowKey{Transport: nat.UDP, Local: netip.MustParseAddrPort("192.0.2.1:5060"), Remote: netip.MustParseAddrPort("198.51.100.1:40000")}
	bd := Binding{AOR: "sip:alice@example.com", Contact: "sip:alice@192.168.1.2", Flow: f, Expires: time.Now().Add(time.Hour)}
	b.ReportAllocs()
	for range b.N {
		g.put(bd)
	}
}
