package state

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net/netip"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/sipedge/sipedge/edge/clock"
	"github.com/sipedge/sipedge/edge/registry"
	"github.com/sipedge/sipedge/nat"
	"github.com/sipedge/sipedge/ratelimit"
)

var t0 = time.Date(2026, 12, 3, 12, 0, 0, 123456789, time.UTC)

func binding(i int, tp nat.Transport) registry.Binding {
	return registry.Binding{
		AOR: fmt.Sprintf("sip:%d@example.com", i), Tenant: "acme", Contact: fmt.Sprintf("sip:%d@10.0.0.1:5060", i),
		Flow: nat.FlowKey{Transport: tp, Local: netip.MustParseAddrPort("192.0.2.1:5060"),
			Remote: netip.AddrPortFrom(netip.MustParseAddr("198.51.100.7"), uint16(1024+i))},
		FlowSince: t0.Add(-time.Hour), Expires: t0.Add(time.Hour), CallID: fmt.Sprintf("call-%d", i), CSeq: 7,
		UserAgent: "baresip", Instance: "<urn:uuid:1>", RegID: 1, NAT: nat.ViaPortDiffers, Updated: t0,
	}
}

func openBolt(t testing.TB, dir string) *Bolt {
	t.Helper()
	s, err := OpenBolt(dir)
	if err != nil {
		t.Fatal(err)
	}
	return s
}

func TestBoltRoundTrip(t *testing.T) {
	dir := t.TempDir()
	s := openBolt(t, dir)
	if snap, err := s.Load(); err != nil || !snap.Saved.IsZero() || len(snap.Bindings) != 0 {
		t.Fatalf("new file loads %+v, %v", snap, err)
	}
	ban := ratelimit.Ban{Addr: netip.MustParsePrefix("203.0.113.9/32"), Reason: ratelimit.ReasonFlood, Since: t0,
		Until: t0.Add(time.Hour), Count: 2, Events: 50, Window: 3 * time.Second, Over: ratelimit.ReasonPacketRate}
	b1, b2 := binding(1, nat.UDP), binding(2, nat.UDP)
	if err := s.Write(Batch{Saved: t0, Put: []registry.Binding{b1, b2}, Bans: []ratelimit.Ban{ban}, BansSet: true}); err != nil {
		t.Fatal(err)
	}
	if err := s.Write(Batch{Saved: t0.Add(time.Second), Delete: []registry.Binding{b1}}); err != nil {
		t.Fatal(err)
	}
	s.Close()

	s = openBolt(t, dir)
	defer s.Close()
	snap, err := s.Load()
	if err != nil {
		t.Fatal(err)
	}
	if !snap.Saved.Equal(t0.Add(time.Second)) {
		t.Errorf("saved %v, want %v", snap.Saved, t0.Add(time.Second))
	}
	if len(snap.Bindings) != 1 || fmt.Sprint(snap.Bindings[0]) != fmt.Sprint(b2) {
		t.Errorf("bindings:\n%+v\nwant\n%+v", snap.Bindings, b2)
	}
	if len(snap.Bans) != 1 || fmt.Sprint(snap.Bans[0]) != fmt.Sprint(ban) {
		t.Errorf("bans:\n%+v\nwant\n%+v", snap.Bans, ban)
	}
	// The ban list is replaced as a whole.
	if err := s.Write(Batch{Saved: t0, BansSet: true}); err != nil {
		t.Fatal(err)
	}
	if snap, _ := s.Load(); len(snap.Bans) != 0 {
		t.Errorf("bans after an empty set: %v", snap.Bans)
	}
}

// A file that is not sipedge's state, or is damaged, is an error naming
// the file, never a panic; MoveAside clears the way for a fresh start.
func TestBoltRefusesBadFiles(t *testing.T) {
	for name, content := range map[string][]byte{
		"garbage":   bytes.Repeat([]byte("not a database "), 1000),
		"truncated": nil, // filled below from a real file
		"empty":     {},
	} {
		t.Run(name, func(t *testing.T) {
			dir := t.TempDir()
			path := filepath.Join(dir, FileName)
			if name == "truncated" {
				s := openBolt(t, dir)
				s.Write(Batch{Saved: t0, Put: []registry.Binding{binding(1, nat.UDP)}})
				s.Close()
				b, _ := os.ReadFile(path)
				content = b[:len(b)/3]
			}
			if err := os.WriteFile(path, content, 0o600); err != nil {
				t.Fatal(err)
			}
			s, err := OpenBolt(dir)
			if err == nil {
				// bbolt may open a short file; loading must then fail or be empty.
				snap, lerr := s.Load()
				s.Close()
				if lerr == nil && len(snap.Bindings) > 0 {
					t.Fatalf("damaged file loaded %d bindings", len(snap.Bindings))
				}
				if name != "empty" && lerr == nil {
					t.Logf("%s: opened and loaded nothing", name)
				}
				return
			}
			var ce *CorruptError
			if !errors.As(err, &ce) || !strings.Contains(err.Error(), path) {
				t.Fatalf("error %v does not name %s", err, path)
			}
			bad, err := MoveAside(dir, t0)
			if err != nil {
				t.Fatal(err)
			}
			if _, err := os.Stat(bad); err != nil {
				t.Fatalf("moved-aside file: %v", err)
			}
			openBolt(t, dir).Close()
		})
	}
}

func TestBoltRefusesOtherFormat(t *testing.T) {
	dir := t.TempDir()
	s := openBolt(t, dir)
	s.db.Update(func(tx *boltTx) error { return tx.Bucket(bucketMeta).Put(keyFormat, []byte("sipedge-state/99")) })
	s.Close()
	_, err := OpenBolt(dir)
	if err == nil || !strings.Contains(err.Error(), "unknown format") || !strings.Contains(err.Error(), FileName) {
		t.Fatalf("other format: %v", err)
	}
}

func TestBoltLockedByAnother(t *testing.T) {
	dir := t.TempDir()
	s := openBolt(t, dir)
	defer s.Close()
	_, err := OpenBolt(dir)
	if err == nil || !strings.Contains(err.Error(), "locked") {
		t.Fatalf("second open: %v", err)
	}
}

// memStore records batches; fail makes writes fail.
type memStore struct {
	mu      sync.Mutex
	fail    bool
	batches []Batch
	state   map[string]registry.Binding
	bans    []ratelimit.Ban
}

func (m *memStore) Load() (Snapshot, error) { return Snapshot{}, nil }
func (m *memStore) Close() error            { return nil }
func (m *memStore) String() string          { return "mem" }
func (m *memStore) Write(b Batch) error {
	m.mu.Lock()
	defer m.mu.Unlock()
	if m.fail {
		return errors.New("disk full")
	}
	m.batches = append(m.batches, b)
	for _, d := range b.Delete {
		delete(m.state, string(bindingKey(d)))
	}
	for _, p := range b.Put {
		m.state[string(bindingKey(p))] = p
	}
	if b.BansSet {
		m.bans = b.Bans
	}
	return nil
}

func newWriter(m *memStore, log *bytes.Buffer) *Writer {
	return NewWriter(m, time.Second, clock.NewFake(t0), slog.New(slog.NewTextHandler(log, nil)),
		func() []ratelimit.Ban { return []ratelimit.Ban{{Addr: netip.MustParsePrefix("203.0.113.9/32")}} })
}

// Changes between flushes coalesce: one record per binding, the latest.
func TestWriterCoalesces(t *testing.T) {
	m := &memStore{state: map[string]registry.Binding{}}
	var log bytes.Buffer
	w := newWriter(m, &log)
	b := binding(1, nat.UDP)
	w.Observe(registry.Event{Kind: registry.Registered, Binding: b})
	for i := range 10 {
		b.CSeq = uint32(8 + i)
		w.Observe(registry.Event{Kind: registry.Refreshed, Binding: b})
	}
	gone := binding(2, nat.UDP)
	w.Observe(registry.Event{Kind: registry.Registered, Binding: gone})
	w.Observe(registry.Event{Kind: registry.Expired, Binding: gone})
	w.Observe(registry.Event{Kind: registry.Registered, Binding: binding(3, nat.TCP)})
	w.BansChanged()
	if err := w.Flush(); err != nil {
		t.Fatal(err)
	}
	if len(m.batches) != 1 || len(m.batches[0].Put) != 1 || m.batches[0].Put[0].CSeq != 17 || !m.batches[0].BansSet {
		t.Fatalf("batch %+v, want one put at CSeq 17 and the bans", m.batches)
	}
	if _, ok := m.state[string(bindingKey(binding(3, nat.TCP)))]; ok {
		t.Error("a stream binding was stored")
	}
	// Nothing changed: no write.
	w.Flush()
	if len(m.batches) != 1 {
		t.Errorf("%d batches after an idle flush", len(m.batches))
	}
	// A flow's death removes its bindings.
	w.Observe(registry.Event{Kind: registry.FlowDead, Flow: b.Flow, Removed: []registry.Binding{b}})
	w.Flush()
	if len(m.state) != 0 {
		t.Errorf("state after the flow died: %v", m.state)
	}
}

// A failed write loses nothing: the changes go with the next one, newer
// ones winning; the failure is logged once, the recovery once.
func TestWriterRetriesAfterFailure(t *testing.T) {
	m := &memStore{state: map[string]registry.Binding{}, fail: true}
	var log bytes.Buffer
	w := newWriter(m, &log)
	a, b := binding(1, nat.UDP), binding(2, nat.UDP)
	w.Observe(registry.Event{Kind: registry.Registered, Binding: a})
	w.Observe(registry.Event{Kind: registry.Registered, Binding: b})
	w.BansChanged()
	for range 3 {
		if w.Flush() == nil {
			t.Fatal("flush to a failing store succeeded")
		}
	}
	if n := strings.Count(log.String(), "write failed"); n != 1 {
		t.Errorf("failure logged %d times, want once:\n%s", n, log.String())
	}
	w.Observe(registry.Event{Kind: registry.Unregistered, Binding: b}) // newer than the failed put
	m.fail = false
	if err := w.Flush(); err != nil {
		t.Fatal(err)
	}
	if _, ok := m.state[string(bindingKey(a))]; !ok || len(m.state) != 1 || len(m.bans) != 1 {
		t.Errorf("after recovery: state %v, bans %v; want only binding 1 and the bans", m.state, m.bans)
	}
	if !strings.Contains(log.String(), "writes again") {
		t.Errorf("recovery not logged:\n%s", log.String())
	}
}

// Run flushes on its ticker and once more when stopped.
func TestWriterRunFlushesAtStop(t *testing.T) {
	m := &memStore{state: map[string]registry.Binding{}}
	var log bytes.Buffer
	w := newWriter(m, &log)
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() { w.Run(ctx); close(done) }()
	w.Observe(registry.Event{Kind: registry.Registered, Binding: binding(1, nat.UDP)})
	cancel()
	<-done
	if len(m.state) != 1 {
		t.Fatalf("state after stop: %v", m.state)
	}
}

// Damage anywhere in a real state file gives an error or a load, never a
// crash: truncations at every page boundary and random byte flips.
func TestBoltSurvivesDamage(t *testing.T) {
	src := t.TempDir()
	s := openBolt(t, src)
	for i := range 300 {
		s.Write(Batch{Saved: t0, Put: []registry.Binding{binding(i, nat.UDP)}})
	}
	s.Close()
	good, err := os.ReadFile(filepath.Join(src, FileName))
	if err != nil {
		t.Fatal(err)
	}
	try := func(name string, b []byte) {
		dir := t.TempDir()
		os.WriteFile(filepath.Join(dir, FileName), b, 0o600)
		s, err := OpenBolt(dir)
		if err != nil {
			if !strings.Contains(err.Error(), FileName) {
				t.Errorf("%s: error %v does not name the file", name, err)
			}
			return
		}
		s.Load()
		s.Close()
	}
	for n := 0; n < len(good); n += 4096 {
		try(fmt.Sprintf("truncated to %d", n), good[:n])
	}
	rnd := uint64(1)
	for i := range 200 {
		b := bytes.Clone(good)
		for range 8 {
			rnd = rnd*6364136223846793005 + 1442695040888963407
			b[rnd>>33%uint64(len(b))] ^= byte(rnd >> 13)
		}
		try(fmt.Sprintf("flips %d", i), b)
	}
}
