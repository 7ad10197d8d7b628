package state

import (
	"bytes"
	"net/netip"
	"reflect"
	"strings"
	"testing"
	"time"

	"github.com/sipedge/sipedge/edge/registry"
	"github.com/sipedge/sipedge/nat"
)

// Every field survives the binary record, empty ones and IPv6 too.
func TestBindingRecordRoundTrip(t *testing.T) {
	full := binding(1, nat.UDP)
	full.CoreContact, full.CoreExpires = "sip:tok@192.0.2.1;ob", t0.Add(2*time.Hour)
	full.Push = registry.Push{Provider: "apns", PRID: "secret-device-token", Param: "team.app"}
	full.CSeq, full.RegID = 1<<32-1, -1
	v6 := binding(2, nat.TLS)
	v6.Flow.Local = netip.MustParseAddrPort("[2001:db8::1]:5061")
	v6.Flow.Remote = netip.MustParseAddrPort("[fe80::1%eth0]:40000")
	bare := registry.Binding{AOR: "sip:a@b", Contact: "sip:a@c", Flow: v6.Flow}
	zoned := bare // a zone netip takes makes the address longer than a byte can count
	zoned.Flow.Remote = netip.AddrPortFrom(netip.MustParseAddr("fe80::1").WithZone(strings.Repeat("z", 200)), 5060)
	for name, b := range map[string]registry.Binding{"full": full, "ipv6": v6, "bare": bare, "long zone": zoned} {
		rec := appendBinding(nil, b)
		got, err := decodeBinding(rec)
		if err != nil {
			t.Fatalf("%s: %v", name, err)
		}
		if !reflect.DeepEqual(got, b) {
			t.Errorf("%s:\n got %+v\nwant %+v", name, got, b)
		}
		if json, _ := encodeBinding(b); name != "long zone" && len(rec) >= len(json)/2 {
			t.Errorf("%s: record %d bytes, JSON %d", name, len(rec), len(json))
		}
		for i := range rec { // every cut is an error, never a panic or half a binding
			if _, err := decodeBinding(rec[:i]); err == nil {
				t.Fatalf("%s: cut at %d of %d decoded", name, i, len(rec))
			}
		}
	}
}

// A state file written before format 2 (JSON records) still loads, is
// left format 1 until something is written (an older sipedge can still
// take it back), then is marked 2 and takes binary records beside its
// JSON ones.
func TestBoltReadsFormat1(t *testing.T) {
	dir := t.TempDir()
	s := openBolt(t, dir)
	old := binding(1, nat.UDP)
	err := s.db.Update(func(tx *boltTx) error {
		v, err := encodeBinding(old)
		if err != nil {
			return err
		}
		if err := tx.Bucket(bucketBindings).Put(bindingKey(old), v); err != nil {
			return err
		}
		return tx.Bucket(bucketMeta).Put(keyFormat, []byte(formatV1))
	})
	if err != nil {
		t.Fatal(err)
	}
	s.Close()

	mark := func() (f string) {
		s.db.View(func(tx *boltTx) error { f = string(tx.Bucket(bucketMeta).Get(keyFormat)); return nil })
		return f
	}
	s = openBolt(t, dir)
	defer s.Close()
	if snap, err := s.Load(); err != nil || len(snap.Bindings) != 1 || !reflect.DeepEqual(snap.Bindings[0], old) {
		t.Fatalf("format 1 file loaded %+v, %v", snap.Bindings, err)
	}
	if s.Format() != formatV1 || mark() != formatV1 {
		t.Fatalf("opened and read only: Format %q, mark %q; want both %q", s.Format(), mark(), formatV1)
	}
	if err := s.Write(Batch{Saved: t0, Put: []registry.Binding{binding(2, nat.UDP)}}); err != nil {
		t.Fatal(err)
	}
	snap, err := s.Load()
	if err != nil {
		t.Fatal(err)
	}
	if len(snap.Bindings) != 2 || !reflect.DeepEqual(snap.Bindings[0], old) || !reflect.DeepEqual(snap.Bindings[1], binding(2, nat.UDP)) {
		t.Fatalf("loaded %+v", snap.Bindings)
	}
	if f := mark(); f != Format || s.Format() != Format {
		t.Errorf("format mark after a write %q (Format %q), want %q", f, s.Format(), Format)
	}
	s.db.View(func(tx *boltTx) error {
		if v := tx.Bucket(bucketBindings).Get(bindingKey(binding(2, nat.UDP))); len(v) == 0 || v[0] != bindingV1 {
			t.Errorf("new record %q is not binary", v)
		}
		return nil
	})
}

// FuzzBindingRecord: any bytes decode to an error or to a binding that
// encodes back to the same record.
func FuzzBindingRecord(f *testing.F) {
	f.Add(appendBinding(nil, binding(1, nat.UDP)))
	f.Add(appendBinding(nil, registry.Binding{AOR: "sip:a@b", Contact: "sip:c", Flow: binding(1, nat.TCP).Flow}))
	f.Fuzz(func(t *testing.T, rec []byte) {
		b, err := decodeBinding(rec)
		if err != nil || rec[0] != bindingV1 {
			return
		}
		if again := appendBinding(nil, b); !bytes.Equal(again, rec) {
			// Equal bindings may have more than one record (a varint
			// written long, a time of 0 ns); they must decode alike.
			b2, err := decodeBinding(again)
			if err != nil || !reflect.DeepEqual(b, b2) {
				t.Fatalf("%x -> %+v -> %x -> %+v, %v", rec, b, again, b2, err)
			}
		}
	})
}
