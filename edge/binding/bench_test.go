package binding

import (
	"fmt"
	"net/netip"
	"runtime"
	"testing"
	"time"

	"github.com/sipedge/sipedge/nat"
)

// BenchmarkMemory100k reports the heap one binding costs in a table of
// 100,000 (a realistic AOR, contact, Call-ID and User-Agent each).
func BenchmarkMemory100k(b *testing.B) {
	const n = 100_000
	for range b.N {
		runtime.GC()
		var before, after runtime.MemStats
		runtime.ReadMemStats(&before)
		tab := New(time.Now, Events{})
		exp := time.Now().Add(time.Hour)
		for i := range n {
			ip := netip.AddrFrom4([4]byte{198, 51, byte(i >> 8), byte(i)})
			f := nat.FlowKey{Transport: nat.UDP, Local: netip.MustParseAddrPort("192.0.2.1:5060"), Remote: netip.AddrPortFrom(ip, uint16(1024+i%60000))}
			tab.Put(Binding{
				AOR:       fmt.Sprintf("sip:%d@voip.example.com", 100000+i),
				Contact:   fmt.Sprintf("sip:%d@192.168.%d.%d:5060;transport=udp", 100000+i, byte(i>>8), byte(i)),
				Flow:      f,
				Expires:   exp,
				CallID:    fmt.Sprintf("%016x@192.168.1.2", i),
				CSeq:      uint32(i),
				UserAgent: "Yealink SIP-T46U 108.86.0.20",
			})
		}
		runtime.GC()
		runtime.ReadMemStats(&after)
		b.ReportMetric(float64(after.HeapAlloc-before.HeapAlloc)/n, "B/binding")
		runtime.KeepAlive(tab)
	}
}

func BenchmarkPutRefresh(b *testing.B) {
	tab := New(time.Now, Events{})
	f := nat.FlowKey{Transport: nat.UDP, Local: netip.MustParseAddrPort("192.0.2.1:5060"), Remote: netip.MustParseAddrPort("198.51.100.1:40000")}
	bd := Binding{AOR: "sip:alice@example.com", Contact: "sip:alice@192.168.1.2", Flow: f, Expires: time.Now().Add(time.Hour)}
	b.ReportAllocs()
	for range b.N {
		tab.Put(bd)
	}
}
