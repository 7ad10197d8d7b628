package ratelimit

import (
	"net/netip"
	"runtime"
	"testing"
	"time"
	"unsafe"
)

func heapMiB(m *runtime.MemStats) float64 { return float64(m.HeapAlloc) / (1 << 20) }

func readHeap() runtime.MemStats {
	var m runtime.MemStats
	runtime.GC()
	runtime.ReadMemStats(&m)
	return m
}

// TestMemoryBounded feeds a million distinct sources (half IPv4, half
// distinct IPv6 /64s), as a spoofed flood would, to Packet: tracked
// sources stay at max_sources and the heap grows by a bounded amount;
// after the flood, Sweep gives the memory back.
func TestMemoryBounded(t *testing.T) {
	const n = 1_000_000
	l, c := newLimiter(t, nil, Events{})
	max := DefaultConfig().MaxSources
	// Sources already tracked, one of them an office, keep their budgets.
	office, known := addr("203.0.113.1"), addr("198.51.100.1")
	l.SetBindings(office, 100)
	l.Packet(known, 100, true)

	before := readHeap()
	var allowed int
	for i := range n {
		var src netip.Addr
		if i%2 == 0 {
			src = nthAddr(i)
		} else {
			src = netip.AddrFrom16([16]byte{0x20, 0x01, 0x0d, 0xb8, 0, 0, byte(i >> 16), byte(i >> 8), byte(i), 0, 0, 0, 0, 0, 0, 1})
		}
		if l.Packet(src, 400, false) == Allow { // spoofed: unproven
			allowed++
		}
		if i%1000 == 999 {
			c.Advance(time.Millisecond) // a million datagrams a second
		}
		if i%100_000 == 0 {
			if got := l.Stats().Sources; got > max+1 {
				t.Fatalf("after %d sources: %d tracked, max_sources %d", i, got, max)
			}
		}
	}
	during := readHeap()
	s := l.Stats()
	if s.Sources > max+1 { // + the office, tracked beyond the cap
		t.Fatalf("%d sources tracked, max_sources %d", s.Sources, max)
	}
	for range 100 {
		if l.Packet(office, 400, true) != Allow || l.Packet(known, 400, true) != Allow {
			t.Fatal("a tracked source was starved by the flood")
		}
		c.Advance(20 * time.Millisecond)
	}
	growth := heapMiB(&during) - heapMiB(&before)
	t.Logf("%d distinct sources: %d tracked (max_sources %d), %d allowed, %d overflow hits; heap %.1f MiB -> %.1f MiB (+%.1f MiB, %.0f B per tracked source)",
		n, s.Sources, max, allowed, s.OverflowHits, heapMiB(&before), heapMiB(&during), growth, growth*(1<<20)/float64(s.Sources))
	if growth > 64 {
		t.Fatalf("heap grew by %.1f MiB", growth)
	}

	c.Advance(time.Minute)
	l.Sweep()
	after := readHeap()
	t.Logf("after Sweep: %d tracked, heap %.1f MiB", l.Stats().Sources, heapMiB(&after))
	if s := l.Stats(); s.Sources != 1 {
		t.Fatalf("after sweep: %d tracked", s.Sources)
	}
	if heapMiB(&after)-heapMiB(&before) > 4 {
		t.Errorf("Sweep kept %.1f MiB", heapMiB(&after)-heapMiB(&before))
	}
	runtime.KeepAlive(l)
}

// TestMemoryUnprovenOffenders: spoofed offences from many sources (a
// scanner User-Agent, junk) cost no memory at all: unproven sources are
// neither banned nor scored.
func TestMemoryUnprovenOffenders(t *testing.T) {
	const n = 200_000
	l, _ := newLimiter(t, nil, Events{})
	before := readHeap()
	for i := range n {
		src := nthAddr(i)
		if d, r := l.Request(src, "OPTIONS", "", "friendly-scanner", false); d != Drop || r != ReasonScanner {
			t.Fatalf("scanner: %v %v", d, r)
		}
		l.Malformed(src, false)
	}
	after := readHeap()
	s := l.Stats()
	t.Logf("%d unproven scanners: heap %+.2f MiB, %+v", n, heapMiB(&after)-heapMiB(&before), s)
	if s.Sources != 0 || s.BanRecords != 0 || s.Dropped[ReasonScanner] != n {
		t.Fatalf("stats %+v", s)
	}
	if heapMiB(&after)-heapMiB(&before) > 1 {
		t.Fatalf("heap grew by %.1f MiB", heapMiB(&after)-heapMiB(&before))
	}
	runtime.KeepAlive(l)
}

// TestStateSizes: the per-source entry stays 80 bytes (the flood streak's
// event count took its padding) and a ban record 32.
func TestStateSizes(t *testing.T) {
	if n := unsafe.Sizeof(entry{}); n != 80 {
		t.Errorf("entry is %d bytes", n)
	}
	if n := unsafe.Sizeof(banRec{}); n != 32 {
		t.Errorf("banRec is %d bytes", n)
	}
}

// TestHotPathAllocs: Packet, and Request for a known source and AOR, do
// not allocate.
func TestHotPathAllocs(t *testing.T) {
	l, _ := newLimiter(t, func(c *Config) {
		c.MaxSources = 10
		c.PacketRate, c.PacketBurst = 1e9, 1e9
		c.RequestRate, c.RequestBurst = 1e9, 1e9
		c.RegisterRate, c.RegisterBurst = 1e9, 1e9
		c.Methods = map[string]Budget{"OPTIONS": {1e9, 1e9}}
	}, Events{OnDecision: func(Decision, Reason, netip.Addr) {}})
	known, banned, drained := addr("192.0.2.1"), addr("192.0.2.2"), addr("192.0.2.3")
	l.Ban(SourcePrefix(banned), ReasonManual, time.Hour)
	for i := range 10 {
		l.Packet(nthAddr(i), 1, true)
	}
	l.Request(known, "REGISTER", "sip:1000@example.com", "", true)
	l.SetBindings(drained, 1) // tracked beyond max_sources
	if l.Packet(drained, 1<<30, false) != Drop || l.Packet(drained, 1<<30, true) != Drop {
		t.Fatal("a datagram over byte_burst passed")
	}
	i := 0
	cases := []struct {
		name string
		f    func()
	}{
		{"Packet known", func() { l.Packet(known, 500, true) }},
		{"Packet unknown", func() { i++; l.Packet(nthAddr(1000+i), 500, true) }},
		{"Packet banned", func() { l.Packet(banned, 500, true) }},
		{"Packet unproven", func() { l.Packet(known, 500, false) }},
		{"Packet unproven unknown", func() { i++; l.Packet(nthAddr(1000+i), 500, false) }},
		{"Packet unproven over limit", func() { l.Packet(drained, 1<<30, false) }}, // over byte_burst
		{"Packet proven over limit", func() { l.Packet(drained, 1<<30, true) }},
		{"Request unproven scanner", func() { l.Request(known, "OPTIONS", "", "friendly-scanner", false) }},
		{"Request REGISTER", func() { l.Request(known, "REGISTER", "sip:1000@example.com", "Yealink SIP-T46S 66.86.0.15", true) }},
		{"Request OPTIONS", func() { l.Request(known, "OPTIONS", "", "Yealink SIP-T46S 66.86.0.15", true) }},
		{"Request banned", func() { l.Request(banned, "OPTIONS", "", "", true) }},
		{"Accept banned", func() { l.Accept(banned) }},
	}
	for _, tc := range cases {
		if a := testing.AllocsPerRun(1000, tc.f); a != 0 {
			t.Errorf("%s: %.1f allocs", tc.name, a)
		}
	}
}
