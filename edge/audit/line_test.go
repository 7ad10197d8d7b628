package audit

import (
	"bytes"
	"context"
	"encoding/json"
	"log/slog"
	"net/netip"
	"reflect"
	"strings"
	"testing"
	"time"
)

// slogLine is how the log wrote e before its lines were appended by
// hand: slog's JSON handler, the message under "event".
func slogLine(e Event, node string) []byte {
	var buf bytes.Buffer
	h := slog.NewJSONHandler(&buf, &slog.HandlerOptions{Level: slog.LevelDebug, ReplaceAttr: func(_ []string, a slog.Attr) slog.Attr {
		if a.Key == slog.MessageKey {
			a.Key = "event"
		}
		return a
	}})
	r := slog.NewRecord(e.Time, e.Severity, string(e.Kind), 0)
	add := func(k, v string) {
		if v != "" {
			r.AddAttrs(slog.String(k, v))
		}
	}
	num := func(k string, v int) {
		if v != 0 {
			r.AddAttrs(slog.Int(k, v))
		}
	}
	add("node", node)
	add("aor", e.AOR)
	add("tenant", e.Tenant)
	if e.Source.IsValid() {
		add("source", e.Source.String())
	}
	add("transport", e.Transport)
	if len(e.Contacts) > 0 {
		r.AddAttrs(slog.Any("contacts", e.Contacts))
	}
	num("expires", e.Expires)
	add("user_agent", e.UserAgent)
	add("instance", e.Instance)
	num("code", e.Code)
	add("reason", e.Reason)
	add("auth", e.Auth)
	add("nat", e.NAT)
	add("core", e.Core)
	if e.Prefix.IsValid() {
		add("prefix", e.Prefix.String())
	}
	num("count", e.Count)
	add("detail", e.Detail)
	_ = h.Handle(context.Background(), r)
	return buf.Bytes()
}

func lineOf(e Event, node string) []byte {
	var buf bytes.Buffer
	New(&buf, node, nil).Emit(e)
	return buf.Bytes()
}

func TestLineAsSlogWroteIt(t *testing.T) {
	t0 := time.Date(2026, 12, 4, 11, 28, 15, 43_000_000, time.UTC)
	for _, e := range []Event{
		{Time: t0, Kind: Register, AOR: "sip:alice@example.com", Tenant: "t1", Source: netip.MustParseAddrPort("192.0.2.1:5060"),
			Transport: "UDP", Contacts: []string{"sip:alice@10.0.0.2:5060;ob", "sip:a&b<c>@x"}, Expires: 600, UserAgent: "Phone \"1\"",
			Instance: "<urn:uuid:1>", Auth: "accepted", NAT: "via port differs"},
		{Time: t0.In(time.FixedZone("x", 3600)), Kind: Ban, Severity: slog.LevelWarn, Prefix: netip.MustParsePrefix("2001:db8::/64"), Reason: "flood\r\nX: y", Count: 3},
		{Time: t0, Kind: Rejected, Severity: slog.LevelError, Code: 403, Reason: "bad\x00\x1f\x7f\xff\xfe", Detail: "line\u2028sep\u2029 é ☃", Core: "sip:10.0.0.1:5060"},
		{Time: t0, Kind: Summary, Severity: slog.LevelDebug + 2, Count: 1},
	} {
		got, want := lineOf(e, "edge-1"), slogLine(e, "edge-1")
		if !bytes.HasSuffix(got, []byte("\n")) || bytes.Count(got, []byte("\n")) != 1 {
			t.Fatalf("not one line: %q", got)
		}
		var g, w map[string]any
		if err := json.Unmarshal(got, &g); err != nil {
			t.Fatalf("%q: %v", got, err)
		}
		if err := json.Unmarshal(want, &w); err != nil {
			t.Fatal(err)
		}
		if !reflect.DeepEqual(g, w) {
			t.Errorf("got  %s\nwant %s", got, want)
		}
		// Same keys in the same order, as operators' tools may expect.
		if keys(got) != keys(want) {
			t.Errorf("key order: got %s, want %s", keys(got), keys(want))
		}
	}
}

// keys lists a JSON object's top-level keys in order.
func keys(line []byte) string {
	d := json.NewDecoder(bytes.NewReader(line))
	var out []string
	_, _ = d.Token()
	for d.More() {
		k, err := d.Token()
		if err != nil {
			break
		}
		out = append(out, k.(string))
		var v json.RawMessage
		_ = d.Decode(&v)
	}
	return strings.Join(out, ",")
}

func FuzzLine(f *testing.F) {
	f.Add("sip:a@b", "UA \"x\"", "reason\r\n", "\xff\u2028")
	f.Fuzz(func(t *testing.T, aor, ua, reason, detail string) {
		e := Event{Time: time.Unix(1e9, 0).UTC(), Kind: Rejected, AOR: aor, UserAgent: ua, Reason: reason, Detail: detail, Contacts: []string{aor, detail}}
		got, want := lineOf(e, "n"), slogLine(e, "n")
		if bytes.Count(got, []byte("\n")) != 1 {
			t.Fatalf("not one line: %q", got)
		}
		var g, w map[string]any
		if err := json.Unmarshal(got, &g); err != nil {
			t.Fatalf("%q: %v", got, err)
		}
		if err := json.Unmarshal(want, &w); err != nil {
			t.Fatal(err)
		}
		if !reflect.DeepEqual(g, w) {
			t.Fatalf("got  %s\nwant %s", got, want)
		}
	})
}
