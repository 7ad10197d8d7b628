package nat

import (
	"bytes"
	"errors"
	"fmt"
	"net/netip"
	"strings"
	"sync"
	"testing"
	"time"
)

var (
	testKey     = bytes.Repeat([]byte("0123456789abcdef"), 2)
	testPrevKey = bytes.Repeat([]byte("fedcba9876543210"), 2)
	testMinted  = time.Date(2025, 3, 1, 12, 0, 0, 0, time.UTC)
)

func newTestSigner(t testing.TB, key []byte) *Signer {
	t.Helper()
	s, err := NewSigner(Keys{Current: key}, 0, nil)
	if err != nil {
		t.Fatal(err)
	}
	return s
}

func testKeys() []FlowKey {
	addrs := []netip.AddrPort{
		netip.MustParseAddrPort("192.0.2.1:5060"),
		netip.MustParseAddrPort("203.0.113.200:65535"),
		netip.MustParseAddrPort("[2001:db8::1]:5061"),
		netip.MustParseAddrPort("[::ffff:198.51.100.7]:1"),
		netip.MustParseAddrPort("0.0.0.0:0"),
	}
	var keys []FlowKey
	for tr := UDP; tr <= WSS; tr++ {
		for _, l := range addrs {
			for _, r := range addrs {
				keys = append(keys, FlowKey{Transport: tr, Local: l, Remote: r})
			}
		}
	}
	return keys
}

func TestNewSignerValidates(t *testing.T) {
	short := make([]byte, MinKeySize-1)
	for _, tc := range []struct {
		name  string
		keys  Keys
		grace time.Duration
	}{
		{"short current", Keys{Current: short}, 0},
		{"nil current", Keys{}, 0},
		{"short previous", Keys{Current: testKey, Previous: short, Rotated: testMinted}, time.Hour},
		{"empty previous", Keys{Current: testKey, Previous: []byte{}, Rotated: testMinted}, time.Hour},
		{"previous without rotated", Keys{Current: testKey, Previous: testPrevKey}, time.Hour},
		{"negative grace", Keys{Current: testKey}, -time.Second},
	} {
		if s, err := NewSigner(tc.keys, tc.grace, nil); err == nil {
			t.Errorf("%s: NewSigner accepted it: %v", tc.name, s)
		} else if strings.Contains(err.Error(), "0123") || strings.Contains(err.Error(), "fedc") {
			t.Errorf("%s: error %q quotes a key", tc.name, err)
		}
	}
	if _, err := NewSigner(Keys{Current: make([]byte, 64)}, 0, nil); err != nil {
		t.Errorf("NewSigner(64 bytes) = %v", err)
	}
	if _, err := NewSigner(Keys{Current: testKey, Previous: testPrevKey, Rotated: testMinted}, 0, nil); err != nil {
		t.Errorf("NewSigner(current and previous) = %v", err)
	}
}

func TestSignerCopiesKey(t *testing.T) {
	key := bytes.Clone(testKey)
	s := newTestSigner(t, key)
	k := testKeys()[0]
	tok := s.Encode(k, testMinted)
	key[0] ^= 1
	if _, err := s.Decode(tok); err != nil {
		t.Errorf("token stopped decoding after the caller's key slice changed: %v", err)
	}
}

func TestTokenRoundTrip(t *testing.T) {
	s := newTestSigner(t, testKey)
	for i, k := range testKeys() {
		minted := testMinted.Add(time.Duration(i) * time.Second)
		tok := s.Encode(k, minted)
		got, err := s.Decode(tok)
		if err != nil {
			t.Errorf("Decode(Encode(%v)) error: %v", k, err)
			continue
		}
		if want := (Token{Flow: k, Minted: minted}); got != want {
			t.Errorf("Decode(Encode(%v)) = %v, want %v", k, got, want)
		}
		if strings.Trim(tok, "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_") != "" {
			t.Errorf("token %q has characters outside base64url", tok)
		}
	}
}

func TestTokenMintedTime(t *testing.T) {
	s := newTestSigner(t, testKey)
	k := testKeys()[0]
	local := time.Date(2030, 7, 1, 9, 30, 15, 999_999_999, time.FixedZone("X", 3600))
	for _, minted := range []time.Time{time.Unix(1, 0), local, time.Unix(1<<32-1, 0)} {
		got, err := s.Decode(s.Encode(k, minted))
		if err != nil {
			t.Fatalf("%v: %v", minted, err)
		}
		if want := minted.Truncate(time.Second); !got.Minted.Equal(want) || got.Minted.Location() != time.UTC {
			t.Errorf("minted %v decodes as %v, want %v in UTC", minted, got.Minted, want)
		}
	}
}

func TestTokenSizes(t *testing.T) {
	s := newTestSigner(t, testKey)
	v4 := netip.MustParseAddrPort("192.0.2.1:5060")
	v6 := netip.MustParseAddrPort("[2001:db8::1]:5060")
	for _, tc := range []struct {
		local, remote netip.AddrPort
		want          int
	}{
		{v4, v4, 56}, // 42 bytes
		{v4, v6, 72}, // 54 bytes
		{v6, v4, 72},
		{v6, v6, 88}, // 66 bytes
	} {
		tok := s.Encode(FlowKey{Transport: UDP, Local: tc.local, Remote: tc.remote}, testMinted)
		if len(tok) != tc.want {
			t.Errorf("len(Encode(%v, %v)) = %d, want %d", tc.local, tc.remote, len(tok), tc.want)
		}
	}
	if want := tokenEncoding.EncodedLen(maxRawSize); maxTokenLen != want {
		t.Errorf("maxTokenLen = %d, want %d", maxTokenLen, want)
	}
	if want := tokenEncoding.EncodedLen(minRawSize); minTokenLen != want {
		t.Errorf("minTokenLen = %d, want %d", minTokenLen, want)
	}
}

func TestTokenDeterministic(t *testing.T) {
	s := newTestSigner(t, testKey)
	again := newTestSigner(t, testKey) // another process with the same key
	k := testKeys()[0]
	tok := s.Encode(k, testMinted)
	if got := s.Encode(k, testMinted.Add(999*time.Millisecond)); got != tok {
		t.Errorf("same second, later instant: %q, want %q", got, tok)
	}
	if got := again.Encode(k, testMinted); got != tok {
		t.Errorf("another Signer with the same key: %q, want %q", got, tok)
	}
	seen := map[string]bool{tok: true}
	for _, other := range []string{
		s.Encode(k, testMinted.Add(time.Second)),
		s.Encode(k, testMinted.Add(-time.Second)),
		s.Encode(testKeys()[1], testMinted),
		s.Encode(FlowKey{Transport: TCP, Local: k.Local, Remote: k.Remote}, testMinted),
	} {
		if seen[other] {
			t.Errorf("token %q repeats for a different flow or second", other)
		}
		seen[other] = true
	}
	// Nonces differ too, not only ciphertexts.
	nonces := map[string]bool{}
	for tok := range seen {
		raw, _ := tokenEncoding.DecodeString(tok)
		nonces[string(raw[1:1+nonceSize])] = true
	}
	if len(nonces) != len(seen) {
		t.Errorf("%d nonces for %d distinct tokens", len(nonces), len(seen))
	}
}

func TestTokenHidesAddresses(t *testing.T) {
	s := newTestSigner(t, testKey)
	for _, k := range testKeys() {
		raw, err := tokenEncoding.DecodeString(s.Encode(k, testMinted))
		if err != nil {
			t.Fatal(err)
		}
		for _, ap := range []netip.AddrPort{k.Remote, k.Local} {
			a := ap.Addr().AsSlice() // 4 or 16 bytes
			if bytes.Contains(raw, a) {
				t.Errorf("token for %v carries %v in clear: % x", k, ap.Addr(), raw)
			}
		}
	}
}

func TestTokenZoneDropped(t *testing.T) {
	s := newTestSigner(t, testKey)
	zoned := netip.AddrPortFrom(netip.MustParseAddr("fe80::1%eth0"), 5060)
	k := FlowKey{Transport: UDP, Local: netip.MustParseAddrPort("[fe80::2]:5060"), Remote: zoned}
	got, err := s.Decode(s.Encode(k, testMinted))
	if err != nil {
		t.Fatal(err)
	}
	want := k
	want.Remote = netip.AddrPortFrom(zoned.Addr().WithZone(""), zoned.Port())
	if got.Flow != want {
		t.Errorf("got %v, want %v", got.Flow, want)
	}
}

func TestTokenInvalidKeyDoesNotDecode(t *testing.T) {
	s := newTestSigner(t, testKey)
	valid := testKeys()[0]
	for _, tc := range []struct {
		k      FlowKey
		minted time.Time
	}{
		{FlowKey{}, testMinted},
		{FlowKey{Transport: 0, Local: valid.Local, Remote: valid.Remote}, testMinted},
		{FlowKey{Transport: WSS + 1, Local: valid.Local, Remote: valid.Remote}, testMinted},
		{FlowKey{Transport: UDP + 16, Local: valid.Local, Remote: valid.Remote}, testMinted},
		{FlowKey{Transport: UDP, Remote: valid.Remote}, testMinted},
		{FlowKey{Transport: UDP, Local: valid.Local}, testMinted},
		{valid, time.Time{}},
		{valid, time.Unix(0, 0)},
		{valid, time.Unix(-1, 0)},
		{valid, time.Unix(1<<32, 0)},
	} {
		if got, err := s.Decode(s.Encode(tc.k, tc.minted)); !errors.Is(err, ErrBadToken) {
			t.Errorf("Decode(Encode(%#v, %v)) = %v, %v; want ErrBadToken", tc.k, tc.minted, got, err)
		}
	}
}

func TestTokenTamper(t *testing.T) {
	s := newTestSigner(t, testKey)
	for _, k := range []FlowKey{testKeys()[0], testKeys()[len(testKeys())-13]} {
		tok := s.Encode(k, testMinted)
		raw, err := tokenEncoding.DecodeString(tok)
		if err != nil {
			t.Fatal(err)
		}
		for i := range raw {
			for _, mask := range []byte{0x01, 0x80, 0xff} {
				bad := bytes.Clone(raw)
				bad[i] ^= mask
				if got, err := s.Decode(tokenEncoding.EncodeToString(bad)); !errors.Is(err, ErrBadToken) {
					t.Errorf("byte %d ^ %#x: Decode = %v, %v; want ErrBadToken", i, mask, got, err)
				}
			}
		}
		for i := range len(tok) {
			for _, c := range []byte{'A', '_', '.', '=', '\n'} {
				if tok[i] == c {
					continue
				}
				bad := tok[:i] + string(c) + tok[i+1:]
				if got, err := s.Decode(bad); !errors.Is(err, ErrBadToken) {
					t.Errorf("char %d -> %q: Decode = %v, %v; want ErrBadToken", i, c, got, err)
				}
			}
		}
	}
}

func TestTokenForeignKey(t *testing.T) {
	s := newTestSigner(t, testKey)
	other := newTestSigner(t, bytes.Repeat([]byte{0x5a}, 32))
	for _, k := range testKeys() {
		if got, err := other.Decode(s.Encode(k, testMinted)); !errors.Is(err, ErrBadToken) {
			t.Fatalf("foreign Decode(%v) = %v, %v; want ErrBadToken", k, got, err)
		}
	}
}

// Version 1 tokens (HMAC-signed, cleartext) of the previous release, made
// with testKey.
var v1Tokens = []string{
	"AQEEwAACARPEBMsAcQmcQL1J6qAEk1MfdpQe8w",                                 // UDP 192.0.2.1:5060 <- 203.0.113.9:40000
	"AQMGIAENuAAAAAAAAAAAAAAAARPFBiABDbgAAAAAAAAAAAAAAAKcQEhTjMW2bR4qKkTa7Q", // TLS, IPv6
}

func TestTokenOldVersionRefused(t *testing.T) {
	s := newTestSigner(t, testKey)
	for _, tok := range v1Tokens {
		if got, err := s.Decode(tok); !errors.Is(err, ErrBadToken) {
			t.Errorf("v1 token %q: Decode = %v, %v; want ErrBadToken", tok, got, err)
		}
	}
	good := s.Encode(testKeys()[0], testMinted)
	pt, _ := s.cur.open(nil, mustRaw(t, good), []byte{tokenVersion})
	if _, err := s.Decode(sealRaw(s, 1, pt)); err != errTokenVersion {
		t.Errorf("version 1 sealed like version 2: %v, want %v", err, errTokenVersion)
	}
}

func mustRaw(t *testing.T, tok string) []byte {
	t.Helper()
	raw, err := tokenEncoding.DecodeString(tok)
	if err != nil {
		t.Fatal(err)
	}
	return raw
}

// sealRaw builds a token around an arbitrary plaintext and version,
// correctly sealed with the current key, to reach the checks behind the
// AEAD.
func sealRaw(s *Signer, version byte, plain []byte) string {
	nonce := make([]byte, nonceSize)
	nonce[0] = 0x42
	b := append([]byte{version}, nonce...)
	return tokenEncoding.EncodeToString(s.cur.aead.Seal(b, nonce, plain, b[:1]))
}

func TestTokenRejects(t *testing.T) {
	s := newTestSigner(t, testKey)
	good := s.Encode(testKeys()[0], testMinted)
	goodRaw, _ := tokenEncoding.DecodeString(good)
	good6Raw, _ := tokenEncoding.DecodeString(s.Encode(testKeys()[len(testKeys())-13], testMinted))
	v4 := []byte{192, 0, 2, 1, 0x13, 0xc4}
	v6 := append(make([]byte, 16), 0x13, 0xc4)
	minted := []byte{0x67, 0xc2, 0xf6, 0x40}
	hdr := func(tr, lf, rf byte) []byte { return append([]byte{tr | lf<<4 | rf<<6}, minted...) }
	body := func(parts ...[]byte) []byte { return bytes.Join(parts, nil) }
	tests := []struct {
		name, tok string
		want      error
	}{
		{"empty", "", errTokenLength},
		{"not base64", "!!!!" + good[4:], errTokenBase64},
		{"padded", good[:len(good)-2] + "==", errTokenBase64},
		{"embedded newline", good[:10] + "\n" + good[10:len(good)-1], errTokenBase64},
		{"embedded CRLF", good[:10] + "\r\n" + good[10:len(good)-2], errTokenBase64},
		{"non-canonical trailing bits", tokenEncoding.EncodeToString(append(bytes.Clone(goodRaw), 0))[:57] + "B", errTokenBase64},
		{"too long", strings.Repeat("A", maxTokenLen+1), errTokenLength},
		{"huge", strings.Repeat("A", 1<<20), errTokenLength},
		{"too short", good[:minTokenLen-1], errTokenLength},
		{"truncated", tokenEncoding.EncodeToString(goodRaw[:len(goodRaw)-1]), errTokenLength},
		{"truncated v6", tokenEncoding.EncodeToString(good6Raw[:len(good6Raw)-3]), errTokenMAC},
		{"extended", tokenEncoding.EncodeToString(append(bytes.Clone(goodRaw), 0)), errTokenMAC},
		{"zeros", tokenEncoding.EncodeToString(make([]byte, minRawSize)), errTokenVersion},
		{"version 3", sealRaw(s, 3, body(hdr(1, 1, 1), v4, v4)), errTokenVersion},
		{"bad tag", good[:len(good)-4] + "AAAA", errTokenMAC},
		{"sealed valid", sealRaw(s, tokenVersion, body(hdr(1, 1, 1), v4, v4)), nil},
		{"transport 0", sealRaw(s, tokenVersion, body(hdr(0, 1, 1), v4, v4)), errTokenTransport},
		{"transport 6", sealRaw(s, tokenVersion, body(hdr(6, 1, 1), v4, v4)), errTokenTransport},
		{"local family 0", sealRaw(s, tokenVersion, body(hdr(1, 0, 1), v4, v4)), errTokenFamily},
		{"remote family 3", sealRaw(s, tokenVersion, body(hdr(1, 1, 3), v4, v4)), errTokenFamily},
		{"minted 0", sealRaw(s, tokenVersion, body(hdr(1, 1, 1)[:1], []byte{0, 0, 0, 0}, v4, v4)), errTokenMinted},
		{"v6 family, v4 address", sealRaw(s, tokenVersion, body(hdr(1, 2, 1), v4, v4, v4)), nil},
		{"v6 remote cut short", sealRaw(s, tokenVersion, body(hdr(1, 2, 2), v6, v6[:17])), errTokenLength},
		{"plaintext too short", sealRaw(s, tokenVersion, body(hdr(1, 1, 1), v4, v4[:5])), errTokenLength},
		{"trailing byte", sealRaw(s, tokenVersion, body(hdr(1, 1, 1), v4, v4, []byte{0})), errTokenLength},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			got, err := s.Decode(tc.tok)
			if tc.name == "sealed valid" {
				if err != nil || got.Flow.Local != netip.MustParseAddrPort("192.0.2.1:5060") {
					t.Fatalf("the helper's own valid token: %v, %v", got, err)
				}
				return
			}
			if !errors.Is(err, ErrBadToken) {
				t.Fatalf("Decode = %v, %v; want ErrBadToken", got, err)
			}
			if tc.want != nil && err != tc.want {
				t.Errorf("Decode error = %q, want %q", err, tc.want)
			}
			if got != (Token{}) {
				t.Errorf("Decode returned %v with an error", got)
			}
		})
	}
}

func TestTokenKeyRotation(t *testing.T) {
	old := newTestSigner(t, testPrevKey)
	k := testKeys()[0]
	oldTok := old.Encode(k, testMinted)
	rotated := testMinted.Add(time.Hour)
	const grace = 2 * time.Hour
	now := rotated
	s, err := NewSigner(Keys{Current: testKey, Previous: testPrevKey, Rotated: rotated}, grace, func() time.Time { return now })
	if err != nil {
		t.Fatal(err)
	}
	newTok := s.Encode(k, rotated)
	if _, err := old.Decode(newTok); !errors.Is(err, ErrBadToken) {
		t.Errorf("new tokens are minted with the previous key (%v)", err)
	}
	foreign := newTestSigner(t, bytes.Repeat([]byte{0x5a}, 32)).Encode(k, testMinted)
	for _, tc := range []struct {
		now     time.Time
		oldOK   bool
		comment string
	}{
		{rotated, true, "at rotation"},
		{rotated.Add(grace - time.Nanosecond), true, "just within grace"},
		{rotated.Add(grace), false, "grace over"},
		{rotated.Add(30 * 24 * time.Hour), false, "long after"},
		{rotated.Add(-time.Minute), true, "clock behind the rotation"},
	} {
		now = tc.now
		got, err := s.Decode(oldTok)
		if tc.oldOK && (err != nil || got != Token{Flow: k, Minted: testMinted}) {
			t.Errorf("%s: previous key's token = %v, %v; want accepted", tc.comment, got, err)
		}
		if !tc.oldOK && !errors.Is(err, ErrBadToken) {
			t.Errorf("%s: previous key's token = %v, %v; want ErrBadToken", tc.comment, got, err)
		}
		if got, err := s.Decode(newTok); err != nil || got.Flow != k {
			t.Errorf("%s: current key's token = %v, %v", tc.comment, got, err)
		}
		if _, err := s.Decode(foreign); !errors.Is(err, ErrBadToken) {
			t.Errorf("%s: foreign token accepted (%v)", tc.comment, err)
		}
	}
}

func TestTokenConcurrent(t *testing.T) {
	s, err := NewSigner(Keys{Current: testKey, Previous: testPrevKey, Rotated: testMinted}, time.Hour, func() time.Time { return testMinted })
	if err != nil {
		t.Fatal(err)
	}
	old := newTestSigner(t, testPrevKey)
	keys := testKeys()
	var wg sync.WaitGroup
	errs := make(chan error, 8)
	for g := range 8 {
		wg.Go(func() {
			for i := range 200 {
				k := keys[(g*31+i)%len(keys)]
				minted := testMinted.Add(time.Duration(i) * time.Second)
				enc := s.Encode
				if i%2 == 1 {
					enc = old.Encode
				}
				if got, err := s.Decode(enc(k, minted)); err != nil || got != (Token{k, minted}) {
					errs <- fmt.Errorf("round trip of %v: %v, %v", k, got, err)
					return
				}
			}
		})
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Error(err)
	}
}

func TestTokenAllocs(t *testing.T) {
	if raceEnabled {
		t.Skip("allocation counts are not meaningful under -race")
	}
	s, err := NewSigner(Keys{Current: testKey, Previous: testPrevKey, Rotated: testMinted}, time.Hour, func() time.Time { return testMinted })
	if err != nil {
		t.Fatal(err)
	}
	k := testKeys()[len(testKeys())-1]
	tok := s.Encode(k, testMinted)
	oldTok := newTestSigner(t, testPrevKey).Encode(k, testMinted)
	if n := testing.AllocsPerRun(100, func() { _ = s.Encode(k, testMinted) }); n > 1 {
		t.Errorf("Encode: %v allocs, want <= 1", n)
	}
	for name, tok := range map[string]string{"current": tok, "previous": oldTok, "junk": "junk!", "forged": tok[:len(tok)-4] + "AAAA"} {
		if n := testing.AllocsPerRun(100, func() { _, _ = s.Decode(tok) }); n > 0 {
			t.Errorf("Decode of %s token: %v allocs, want 0", name, n)
		}
	}
}

func TestSignerHidesKeys(t *testing.T) {
	s, err := NewSigner(Keys{Current: testKey, Previous: testPrevKey, Rotated: testMinted}, time.Hour, nil)
	if err != nil {
		t.Fatal(err)
	}
	for _, verb := range []string{"%v", "%+v", "%#v", "%s", "%x", "%q", "%d"} {
		out := fmt.Sprintf(verb, s)
		if !strings.Contains(out, "previous key until 2025-03-01T13:00:00Z") {
			t.Errorf("%s: %q does not describe the Signer", verb, out)
		}
	}
	if out := newTestSigner(t, testKey).String(); out != "nat.Signer{current key}" {
		t.Errorf("String() = %q", out)
	}
}

func benchFlow() FlowKey {
	return FlowKey{Transport: UDP, Local: netip.MustParseAddrPort("192.0.2.1:5060"), Remote: netip.MustParseAddrPort("203.0.113.9:40000")}
}

func BenchmarkEncode(b *testing.B) {
	s := newTestSigner(b, testKey)
	k := benchFlow()
	b.ReportAllocs()
	for b.Loop() {
		_ = s.Encode(k, testMinted)
	}
}

func BenchmarkDecode(b *testing.B) {
	s := newTestSigner(b, testKey)
	tok := s.Encode(benchFlow(), testMinted)
	b.ReportAllocs()
	for b.Loop() {
		if _, err := s.Decode(tok); err != nil {
			b.Fatal(err)
		}
	}
}

// BenchmarkDecodePrevious is the worst case within a grace period: the
// current key fails first.
func BenchmarkDecodePrevious(b *testing.B) {
	s, err := NewSigner(Keys{Current: testKey, Previous: testPrevKey, Rotated: testMinted}, time.Hour, func() time.Time { return testMinted })
	if err != nil {
		b.Fatal(err)
	}
	tok := newTestSigner(b, testPrevKey).Encode(benchFlow(), testMinted)
	b.ReportAllocs()
	for b.Loop() {
		if _, err := s.Decode(tok); err != nil {
			b.Fatal(err)
		}
	}
}

func BenchmarkEncodeDecodeParallel(b *testing.B) {
	s := newTestSigner(b, testKey)
	k := FlowKey{Transport: TLS, Local: netip.MustParseAddrPort("[2001:db8::1]:5061"), Remote: netip.MustParseAddrPort("[2001:db8::2]:40000")}
	b.ReportAllocs()
	b.RunParallel(func(pb *testing.PB) {
		for pb.Next() {
			if _, err := s.Decode(s.Encode(k, testMinted)); err != nil {
				b.Error(err)
				return
			}
		}
	})
}

// A token sealed for a scope (a tenant) opens under that scope only, and
// the empty scope is the unscoped format.
func TestTokenScopes(t *testing.T) {
	s := newTestSigner(t, testKey)
	k := testKeys()[0]
	a, b := s.EncodeFor("acme", k, testMinted), s.EncodeFor("bolt", k, testMinted)
	if a == b || a == s.Encode(k, testMinted) {
		t.Fatal("scoped tokens equal each other or the unscoped one")
	}
	if s.EncodeFor("", k, testMinted) != s.Encode(k, testMinted) {
		t.Error("the empty scope changes the token")
	}
	if got, err := s.DecodeFor("acme", a); err != nil || got.Flow != k {
		t.Fatalf("DecodeFor(acme) = %v, %v", got, err)
	}
	for _, tc := range []struct{ scope, tok string }{{"bolt", a}, {"", a}, {"acme", b}, {"acme", s.Encode(k, testMinted)}, {"acm", a}, {"acmee", a}} {
		if _, err := s.DecodeFor(tc.scope, tc.tok); !errors.Is(err, ErrBadToken) {
			t.Errorf("DecodeFor(%q) of another scope's token: %v, want ErrBadToken", tc.scope, err)
		}
	}
	long := strings.Repeat("x", MaxScopeSize+1)
	if _, err := s.DecodeFor(long, s.EncodeFor(long, k, testMinted)); !errors.Is(err, ErrBadToken) {
		t.Errorf("an over-long scope opened: %v", err)
	}
	if n := testing.AllocsPerRun(100, func() { _, _ = s.DecodeFor("acme", a) }); n != 0 && !raceEnabled {
		t.Errorf("DecodeFor allocates %v times", n)
	}
}
