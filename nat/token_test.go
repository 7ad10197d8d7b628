package nat

import (
	"bytes"
	"encoding/hex"
	"errors"
	"fmt"
	"io/fs"
	"net/netip"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
)

var testKey = bytes.Repeat([]byte("0123456789abcdef"), 2)

func newTestSigner(t testing.TB, key []byte) *Signer {
	t.Helper()
	s, err := NewSigner(key)
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

func TestNewSignerKeySize(t *testing.T) {
	if _, err := NewSigner(make([]byte, MinKeySize-1)); err == nil {
		t.Error("NewSigner accepted a 31-byte key")
	}
	if _, err := NewSigner(nil); err == nil {
		t.Error("NewSigner accepted a nil key")
	}
	if _, err := NewSigner(make([]byte, 64)); err != nil {
		t.Errorf("NewSigner(64 bytes) = %v", err)
	}
}

func TestSignerCopiesKey(t *testing.T) {
	key := bytes.Clone(testKey)
	s := newTestSigner(t, key)
	k := testKeys()[0]
	tok := s.Encode(k)
	key[0] ^= 1
	if _, err := s.Decode(tok); err != nil {
		t.Errorf("token stopped decoding after the caller's key slice changed: %v", err)
	}
}

func TestTokenRoundTrip(t *testing.T) {
	s := newTestSigner(t, testKey)
	for _, k := range testKeys() {
		tok := s.Encode(k)
		got, err := s.Decode(tok)
		if err != nil {
			t.Errorf("Decode(Encode(%v)) error: %v", k, err)
			continue
		}
		if got != k {
			t.Errorf("Decode(Encode(%v)) = %v", k, got)
		}
		if strings.Trim(tok, "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_") != "" {
			t.Errorf("token %q has characters outside base64url", tok)
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
		{v4, v4, 38}, // 28 bytes
		{v4, v6, 54}, // 40 bytes
		{v6, v6, maxTokenLen},
	} {
		tok := s.Encode(FlowKey{Transport: UDP, Local: tc.local, Remote: tc.remote})
		if len(tok) != tc.want {
			t.Errorf("len(Encode(%v, %v)) = %d, want %d", tc.local, tc.remote, len(tok), tc.want)
		}
	}
	if want := tokenEncoding.EncodedLen(maxRawSize); maxTokenLen != want {
		t.Errorf("maxTokenLen = %d, want %d", maxTokenLen, want)
	}
}

func TestTokenZoneDropped(t *testing.T) {
	s := newTestSigner(t, testKey)
	zoned := netip.AddrPortFrom(netip.MustParseAddr("fe80::1%eth0"), 5060)
	k := FlowKey{Transport: UDP, Local: netip.MustParseAddrPort("[fe80::2]:5060"), Remote: zoned}
	got, err := s.Decode(s.Encode(k))
	if err != nil {
		t.Fatal(err)
	}
	want := k
	want.Remote = netip.AddrPortFrom(zoned.Addr().WithZone(""), zoned.Port())
	if got != want {
		t.Errorf("got %v, want %v", got, want)
	}
}

func TestTokenInvalidKeyDoesNotDecode(t *testing.T) {
	s := newTestSigner(t, testKey)
	valid := testKeys()[0]
	for _, k := range []FlowKey{
		{},
		{Transport: 0, Local: valid.Local, Remote: valid.Remote},
		{Transport: WSS + 1, Local: valid.Local, Remote: valid.Remote},
		{Transport: UDP, Remote: valid.Remote},
		{Transport: UDP, Local: valid.Local},
	} {
		if got, err := s.Decode(s.Encode(k)); !errors.Is(err, ErrBadToken) {
			t.Errorf("Decode(Encode(%#v)) = %v, %v; want ErrBadToken", k, got, err)
		}
	}
}

func TestTokenTamper(t *testing.T) {
	s := newTestSigner(t, testKey)
	for _, k := range []FlowKey{testKeys()[0], testKeys()[len(testKeys())-13]} {
		tok := s.Encode(k)
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
		if got, err := other.Decode(s.Encode(k)); !errors.Is(err, ErrBadToken) {
			t.Fatalf("foreign Decode(%v) = %v, %v; want ErrBadToken", k, got, err)
		}
	}
}

// signRaw builds a token around arbitrary content, correctly signed, to
// reach the checks behind the MAC.
func signRaw(s *Signer, body []byte) string {
	st := s.pool.Get().(*tokenScratch)
	defer s.pool.Put(st)
	return tokenEncoding.EncodeToString(append(bytes.Clone(body), st.macOf(body)...))
}

func TestTokenRejects(t *testing.T) {
	s := newTestSigner(t, testKey)
	good := s.Encode(testKeys()[0])
	goodRaw, _ := tokenEncoding.DecodeString(good)
	v4 := []byte{famIPv4, 192, 0, 2, 1, 0x13, 0xc4}
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
		{"non-canonical trailing bits", good[:len(good)-1] + "B", errTokenBase64},
		{"too long", strings.Repeat("A", maxTokenLen+1), errTokenLength},
		{"huge", strings.Repeat("A", 1<<20), errTokenLength},
		{"truncated", tokenEncoding.EncodeToString(goodRaw[:len(goodRaw)-3]), errTokenLength},
		{"truncated text", good[:len(good)-1], nil},
		{"short", tokenEncoding.EncodeToString(make([]byte, minRawSize-1)), errTokenLength},
		{"zeros", tokenEncoding.EncodeToString(make([]byte, minRawSize)), errTokenVersion},
		{"version 2", signRaw(s, body([]byte{2, byte(UDP)}, v4, v4)), errTokenVersion},
		{"transport 0", signRaw(s, body([]byte{1, 0}, v4, v4)), errTokenTransport},
		{"transport 6", signRaw(s, body([]byte{1, 6}, v4, v4)), errTokenTransport},
		{"family 5", signRaw(s, body([]byte{1, 1, 5}, v4[1:], v4)), errTokenFamily},
		{"v6 family, v4 address", signRaw(s, body([]byte{1, 1, famIPv6}, v4[1:], v4)), nil},
		{"v6 remote cut short", signRaw(s, body([]byte{1, 1, famIPv6}, make([]byte, 18), []byte{famIPv6, 1, 2, 3, 4})), errTokenLength},
		{"trailing byte", signRaw(s, body([]byte{1, 1}, v4, v4, []byte{0})), errTokenLength},
		{"bad mac", good[:len(good)-3] + "AAA", errTokenMAC},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			k, err := s.Decode(tc.tok)
			if !errors.Is(err, ErrBadToken) {
				t.Fatalf("Decode = %v, %v; want ErrBadToken", k, err)
			}
			if tc.want != nil && err != tc.want {
				t.Errorf("Decode error = %q, want %q", err, tc.want)
			}
			if k != (FlowKey{}) {
				t.Errorf("Decode returned %v with an error", k)
			}
		})
	}
}

func TestTokenConcurrent(t *testing.T) {
	s := newTestSigner(t, testKey)
	keys := testKeys()
	var wg sync.WaitGroup
	errs := make(chan error, 8)
	for g := range 8 {
		wg.Go(func() {
			for i := range 200 {
				k := keys[(g*31+i)%len(keys)]
				if got, err := s.Decode(s.Encode(k)); err != nil || got != k {
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
	s := newTestSigner(t, testKey)
	k := testKeys()[len(testKeys())-1]
	tok := s.Encode(k)
	if n := testing.AllocsPerRun(100, func() { _ = s.Encode(k) }); n > 1 {
		t.Errorf("Encode: %v allocs, want <= 1", n)
	}
	if n := testing.AllocsPerRun(100, func() { _, _ = s.Decode(tok) }); n > 0 {
		t.Errorf("Decode: %v allocs, want 0", n)
	}
	if n := testing.AllocsPerRun(100, func() { _, _ = s.Decode("junk!") }); n > 0 {
		t.Errorf("Decode of junk: %v allocs, want 0", n)
	}
}

func BenchmarkEncode(b *testing.B) {
	s := newTestSigner(b, testKey)
	k := FlowKey{Transport: UDP, Local: netip.MustParseAddrPort("192.0.2.1:5060"), Remote: netip.MustParseAddrPort("203.0.113.9:40000")}
	b.ReportAllocs()
	for b.Loop() {
		_ = s.Encode(k)
	}
}

func BenchmarkDecode(b *testing.B) {
	s := newTestSigner(b, testKey)
	k := FlowKey{Transport: UDP, Local: netip.MustParseAddrPort("192.0.2.1:5060"), Remote: netip.MustParseAddrPort("203.0.113.9:40000")}
	tok := s.Encode(k)
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
			if _, err := s.Decode(s.Encode(k)); err != nil {
				b.Error(err)
				return
			}
		}
	})
}

func TestLoadOrCreateKeyCreates(t *testing.T) {
	dir := filepath.Join(t.TempDir(), "state", "sipedge")
	path := filepath.Join(dir, "flow.key")
	key, err := LoadOrCreateKey(path)
	if err != nil {
		t.Fatal(err)
	}
	if len(key) != MinKeySize || bytes.Equal(key, make([]byte, MinKeySize)) {
		t.Fatalf("created key has %d bytes (or is all zero)", len(key))
	}
	assertMode(t, dir, 0o700)
	assertMode(t, path, 0o600)
	data, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	if want := hex.EncodeToString(key) + "\n"; string(data) != want {
		t.Errorf("key file has %d bytes in the wrong form", len(data))
	}
	entries, err := os.ReadDir(dir)
	if err != nil {
		t.Fatal(err)
	}
	if len(entries) != 1 {
		t.Errorf("directory holds %d entries, want only the key (temp file left behind?)", len(entries))
	}
	again, err := LoadOrCreateKey(path)
	if err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(again, key) {
		t.Error("second LoadOrCreateKey returned a different key")
	}
	if _, err := NewSigner(key); err != nil {
		t.Error(err)
	}
}

func TestLoadOrCreateKeyConcurrent(t *testing.T) {
	path := filepath.Join(t.TempDir(), "flow.key")
	keys := make([][]byte, 8)
	errs := make([]error, 8)
	var wg sync.WaitGroup
	for i := range keys {
		wg.Go(func() { keys[i], errs[i] = LoadOrCreateKey(path) })
	}
	wg.Wait()
	onDisk, err := LoadOrCreateKey(path)
	if err != nil {
		t.Fatal(err)
	}
	for i := range keys {
		if errs[i] != nil {
			t.Errorf("caller %d: %v", i, errs[i])
		} else if !bytes.Equal(keys[i], onDisk) {
			t.Errorf("caller %d got a key other than the one on disk", i)
		}
	}
}

func assertMode(t *testing.T, path string, want fs.FileMode) {
	t.Helper()
	fi, err := os.Stat(path)
	if err != nil {
		t.Fatal(err)
	}
	if got := fi.Mode().Perm(); got != want {
		t.Errorf("%s: mode %#o, want %#o", path, got, want)
	}
}

func TestLoadOrCreateKeyReads(t *testing.T) {
	const secret = "00112233445566778899aabbccddeeff00112233445566778899aabbccddeeff"
	want, _ := hex.DecodeString(secret)
	for _, content := range []string{secret, secret + "\n", secret + "\r\n", strings.ToUpper(secret) + "\n"} {
		path := filepath.Join(t.TempDir(), "flow.key")
		if err := os.WriteFile(path, []byte(content), 0o600); err != nil {
			t.Fatal(err)
		}
		got, err := LoadOrCreateKey(path)
		if err != nil {
			t.Errorf("%q: %v", content, err)
		} else if !bytes.Equal(got, want) {
			t.Errorf("%q: wrong key", content)
		}
	}
	// 0400 is stricter than 0600 and fine.
	path := filepath.Join(t.TempDir(), "flow.key")
	if err := os.WriteFile(path, []byte(secret), 0o400); err != nil {
		t.Fatal(err)
	}
	if _, err := LoadOrCreateKey(path); err != nil {
		t.Errorf("mode 0400: %v", err)
	}
}

func TestLoadOrCreateKeyRejects(t *testing.T) {
	const secret = "00112233445566778899aabbccddeeff00112233445566778899aabbccddeeff"
	tests := []struct {
		name    string
		content string
		mode    fs.FileMode
		wantIn  string
	}{
		{"group readable", secret, 0o640, "mode"},
		{"world readable", secret + "\n", 0o604, "mode"},
		{"too short", secret[:62], 0o600, "hex digits"},
		{"too long", secret + "00", 0o600, "hex digits"},
		{"two newlines", secret + "\n\n", 0o600, "hex digits"},
		{"raw bytes", secret[:32], 0o600, "hex digits"},
		{"not hex", "g0112233445566778899aabbccddeeff00112233445566778899aabbccddeezz", 0o600, "not hex"},
		{"empty", "", 0o600, "hex digits"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			path := filepath.Join(t.TempDir(), "flow.key")
			if err := os.WriteFile(path, []byte(tc.content), 0o600); err != nil {
				t.Fatal(err)
			}
			if err := os.Chmod(path, tc.mode); err != nil {
				t.Fatal(err)
			}
			key, err := LoadOrCreateKey(path)
			if err == nil {
				t.Fatalf("accepted, key of %d bytes", len(key))
			}
			msg := err.Error()
			if !strings.Contains(msg, tc.wantIn) || !strings.Contains(msg, path) {
				t.Errorf("error %q should mention %q and the path", msg, tc.wantIn)
			}
			msg = strings.ReplaceAll(msg, path, "")
			for i := 0; i+4 <= len(tc.content); i++ {
				if chunk := tc.content[i : i+4]; strings.TrimSpace(chunk) == chunk && strings.Contains(msg, chunk) {
					t.Fatalf("error %q leaks key material %q", msg, chunk)
				}
			}
			if strings.ContainsAny(msg, "gz") && tc.name == "not hex" {
				t.Errorf("error %q quotes the file's content", msg)
			}
		})
	}
}

func TestLoadOrCreateKeyNotAFile(t *testing.T) {
	path := t.TempDir()
	if _, err := LoadOrCreateKey(path); err == nil {
		t.Error("accepted a directory as key file")
	}
	blocker := filepath.Join(t.TempDir(), "file")
	if err := os.WriteFile(blocker, nil, 0o600); err != nil {
		t.Fatal(err)
	}
	if _, err := LoadOrCreateKey(filepath.Join(blocker, "flow.key")); err == nil {
		t.Error("created a key under a regular file")
	}
}
