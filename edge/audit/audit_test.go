package audit

import (
	"bytes"
	"encoding/json"
	"net/netip"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/sipedge/sipedge/edge/registry"
	"github.com/sipedge/sipedge/nat"
)

func flow(port uint16) nat.FlowKey {
	return nat.FlowKey{Transport: nat.UDP, Local: netip.MustParseAddrPort("192.0.2.1:5060"),
		Remote: netip.AddrPortFrom(netip.MustParseAddr("198.51.100.7"), port)}
}

func decode(t *testing.T, e Event) map[string]any {
	t.Helper()
	var buf bytes.Buffer
	New(&buf, "n1", func() time.Time { return time.Unix(1e9, 0) }).Emit(e)
	var m map[string]any
	if err := json.Unmarshal(buf.Bytes(), &m); err != nil {
		t.Fatalf("%q: %v", buf.String(), err)
	}
	return m
}

// The registry's expiry, move and recovery, each with its fields.
func TestFromRegistry(t *testing.T) {
	t0 := time.Unix(1e9, 0)
	b := registry.Binding{AOR: "sip:a@x.test", Tenant: "acme", Contact: "sip:a@10.0.0.1", Flow: flow(4000),
		Expires: t0.Add(time.Hour), Updated: t0, UserAgent: "UA", Instance: "<urn:uuid:1>", NAT: nat.ViaPortDiffers}
	m := decode(t, FromRegistry(registry.Event{Kind: registry.Expired, Binding: b}))
	if m["event"] != "expire" || m["aor"] != "sip:a@x.test" || m["tenant"] != "acme" || m["source"] != "198.51.100.7:4000" ||
		m["instance"] != "<urn:uuid:1>" || m["expires"] != nil || m["node"] != "n1" || m["time"] != "2001-09-09T01:46:40Z" {
		t.Errorf("expire: %v", m)
	}
	old := b
	old.Flow = flow(3000)
	m = decode(t, FromRegistry(registry.Event{Kind: registry.Moved, Binding: b, Old: old, Auth: "accepted"}))
	if m["event"] != "flow_moved" || m["detail"] != "from UDP 198.51.100.7:3000" || m["expires"] != 3600.0 || m["auth"] != "accepted" {
		t.Errorf("flow_moved: %v", m)
	}
	m = decode(t, FromRegistry(registry.Event{Kind: registry.Recovered, Flow: flow(5000)}))
	if m["event"] != "flow_recover" || m["source"] != "198.51.100.7:5000" || m["transport"] != "UDP" {
		t.Errorf("flow_recover: %v", m)
	}
}

// A file output rotates at its size, keeping max_files old ones.
func TestFileRotates(t *testing.T) {
	dir := t.TempDir()
	c := Config{File: filepath.Join(dir, "audit.log"), MaxSizeMB: 1, MaxFiles: 2}
	out := c.Output(os.Stdout)
	defer out.Close()
	l := New(out, "n1", nil)
	for range 12_000 { // about 2.4 MB
		l.Emit(Event{Kind: Register, AOR: "sip:someone@example.com", Detail: strings.Repeat("x", 120)})
	}
	files, _ := filepath.Glob(filepath.Join(dir, "audit*.log"))
	if len(files) != 3 {
		t.Errorf("%d files after 2.4 MB at 1 MB each, keeping 2 old: %v", len(files), files)
	}
	if err := (Config{MaxSizeMB: 0}).Validate(); err == nil {
		t.Error("max_size_mb 0 passed")
	}
}

// blocked is a writer that waits until released: a stalled disk.
type blocked struct {
	release chan struct{}
	buf     bytes.Buffer
}

func (b *blocked) Write(p []byte) (int, error) {
	<-b.release
	return b.buf.Write(p)
}

// An async log never makes Emit wait: with the writer stuck, events past
// the queue are dropped, counted, and said so once it writes again.
func TestAsyncNeverBlocks(t *testing.T) {
	w := &blocked{release: make(chan struct{})}
	l := New(w, "n1", nil).Async(4)
	for range 100 {
		l.Emit(Event{Kind: Register, AOR: "sip:a@x"})
	}
	if l.Dropped() < 90 {
		t.Errorf("dropped %d of 100 with a stuck writer and a queue of 4", l.Dropped())
	}
	close(w.release)
	l.Close()
	out := w.buf.String()
	if !strings.Contains(out, `"event":"summary"`) || !strings.Contains(out, "audit events dropped") {
		t.Errorf("no summary of the drops:\n%s", out)
	}
}

func TestRedact(t *testing.T) {
	for in, want := range map[string]string{
		"sip:ann:s3cret@10.0.0.1:5060;transport=udp": "sip:ann@10.0.0.1:5060;transport=udp",
		"sip:ann@10.0.0.1":                           "sip:ann@10.0.0.1",
		"sip:10.0.0.1:5060":                          "sip:10.0.0.1:5060",
		"sips:bob:pw@example.com":                    "sips:bob@example.com",
	} {
		if got := Redact(in); got != want {
			t.Errorf("Redact(%q) = %q, want %q", in, got, want)
		}
	}
}

// An async log writes a burst bigger than a whole file in pieces a
// rotating file takes: no line is lost to a refused write, none is cut.
func TestAsyncBurstRotates(t *testing.T) {
	dir := t.TempDir()
	c := Config{File: filepath.Join(dir, "audit.log"), MaxSizeMB: 1, MaxFiles: 5}
	out := c.Output(os.Stdout)
	defer out.Close()
	l := New(out, "n1", nil).Async(20_000)
	const n = 12_000 // about 2.4 MB, queued before the writer wakes
	for range n {
		l.Emit(Event{Kind: Register, AOR: "sip:someone@example.com", Detail: strings.Repeat("x", 120)})
	}
	l.Close()
	files, _ := filepath.Glob(filepath.Join(dir, "audit*.log"))
	lines := 0
	for _, f := range files {
		b, err := os.ReadFile(f)
		if err != nil {
			t.Fatal(err)
		}
		for _, line := range strings.Split(strings.TrimSuffix(string(b), "\n"), "\n") {
			if !strings.HasPrefix(line, `{"time":`) || !strings.HasSuffix(line, `"}`) {
				t.Fatalf("%s: a line cut: %.80q", f, line)
			}
			lines++
		}
	}
	if lines != n || l.Dropped() != 0 {
		t.Errorf("%d lines in %d files, %d dropped; want %d lines", lines, len(files), l.Dropped(), n)
	}
}
