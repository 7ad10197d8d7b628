package nat

import (
	"errors"
	"net/netip"
	"testing"
	"time"
)

func FuzzDecode(f *testing.F) {
	// Within the grace period, so that both keys' paths are reached.
	s, err := NewSigner(Keys{Current: testKey, Previous: testPrevKey, Rotated: testMinted}, time.Hour, func() time.Time { return testMinted })
	if err != nil {
		f.Fatal(err)
	}
	old := newTestSigner(f, testPrevKey)
	for i, k := range testKeys()[:30] {
		enc := s.Encode
		if i%3 == 0 {
			enc = old.Encode
		}
		tok := enc(k, testMinted.Add(time.Duration(i)*time.Second))
		f.Add(tok)
		for _, cut := range []int{1, 2, 3, 16, len(tok) - 1} {
			f.Add(tok[:len(tok)-cut])
		}
		f.Add(tok + "A")
		f.Add(tok + "AAAA")
	}
	for _, tok := range v1Tokens {
		f.Add(tok)
	}
	f.Add("")
	f.Add("sip:alice@example.com")
	f.Add("\r\n")
	f.Fuzz(func(t *testing.T, tok string) {
		got, err := s.Decode(tok)
		if err != nil {
			if !errors.Is(err, ErrBadToken) {
				t.Fatalf("Decode error %v does not wrap ErrBadToken", err)
			}
			if got != (Token{}) {
				t.Fatalf("Decode returned %v with an error", got)
			}
			return
		}
		// Anything accepted must be a token we issued, spelled one way.
		if !got.Flow.Valid() || got.Minted.Unix() < 1 {
			t.Fatalf("Decode(%q) accepted invalid %v", tok, got)
		}
		if again := s.Encode(got.Flow, got.Minted); again != tok && old.Encode(got.Flow, got.Minted) != tok {
			t.Fatalf("Decode(%q) = %v, which encodes as %q", tok, got, again)
		}
	})
}

func FuzzRoundTrip(f *testing.F) {
	f.Add(uint8(0), []byte{192, 0, 2, 1}, uint16(5060), []byte{203, 0, 113, 9}, uint16(40000), uint32(1740830400))
	f.Add(uint8(2), make([]byte, 16), uint16(0), []byte{0x20, 1, 0xd, 0xb8, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1}, uint16(65535), uint32(1))
	f.Add(uint8(4), []byte{0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0xff, 0xff, 10, 0, 0, 1}, uint16(1), []byte{1, 2, 3}, uint16(2), uint32(1<<32-1))
	s := newTestSigner(f, testKey)
	other := newTestSigner(f, []byte("another key that is long enough!"))
	f.Fuzz(func(t *testing.T, tr uint8, local []byte, lport uint16, remote []byte, rport uint16, sec uint32) {
		k := FlowKey{
			Transport: UDP + Transport(tr%uint8(WSS)),
			Local:     netip.AddrPortFrom(addrFromBytes(local), lport),
			Remote:    netip.AddrPortFrom(addrFromBytes(remote), rport),
		}
		minted := time.Unix(int64(sec), 0)
		tok := s.Encode(k, minted)
		got, err := s.Decode(tok)
		if sec == 0 {
			if !errors.Is(err, ErrBadToken) {
				t.Fatalf("minted at the epoch, Decode = %v, %v; want ErrBadToken", got, err)
			}
			return
		}
		if err != nil || got.Flow != k || !got.Minted.Equal(minted) {
			t.Fatalf("Decode(Encode(%v, %v)) = %v, %v", k, minted, got, err)
		}
		if _, err := other.Decode(tok); !errors.Is(err, ErrBadToken) {
			t.Fatalf("a foreign signer accepted the token for %v: %v", k, err)
		}
	})
}

// addrFromBytes makes an IPv4 address from up to 4 bytes, else an IPv6
// one (zero-padded or cut to 16).
func addrFromBytes(b []byte) netip.Addr {
	if len(b) <= 4 {
		var a [4]byte
		copy(a[:], b)
		return netip.AddrFrom4(a)
	}
	var a [16]byte
	copy(a[:], b)
	return netip.AddrFrom16(a)
}
