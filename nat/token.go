package nat

import (
	"crypto/aes"
	"crypto/cipher"
	"crypto/hmac"
	"crypto/sha256"
	"encoding/base64"
	"encoding/binary"
	"fmt"
	"hash"
	"io"
	"math"
	"net/netip"
	"sync"
	"time"
)

// Flow token layout (all integers big-endian):
//
//	version   1 byte, in clear (tokenVersion); the AEAD's additional data
//	nonce     12 bytes: HMAC-SHA256(ivKey, version ‖ plaintext), truncated
//	sealed    AES-256-GCM(encKey, nonce, plaintext, version), 12-byte tag
//
// and the plaintext is
//
//	header    1 byte: transport (bits 0-3), local family (bits 4-5),
//	          remote family (bits 6-7); family 1 is IPv4, 2 is IPv6
//	minted    4 bytes: Unix seconds
//	local     4- or 16-byte address, 2-byte port
//	remote    likewise
//
// The nonce is synthetic (SIV-style): the same key, flow and minted second
// always give the same token, so a REGISTER refreshed within a second
// yields the Contact the core already stores. Distinct plaintexts get
// distinct nonces unless 96-bit HMAC outputs collide. encKey and ivKey are
// HMAC-SHA256 of fixed labels under the master key.
//
// A token may be bound to a scope, a tenant's name: the scope is part of
// the additional data (after the version) and of the nonce's HMAC input
// (after the plaintext), so a token opens only under the scope it was
// sealed for, and the empty scope is exactly the format without scopes.
//
// The whole is unpadded base64url, which only uses characters allowed
// unescaped in a SIP URI user part: 56 characters for two IPv4 addresses,
// 72 for one of each family, 88 for two IPv6 addresses.
//
// IPv6 zones are not carried: a key with a zoned address decodes without
// the zone. IPv4-mapped IPv6 addresses stay IPv6, so a key round-trips to
// an equal key (zones aside).
const (
	tokenVersion = 2

	// MinKeySize is the smallest key NewSigner accepts.
	MinKeySize = 32
	// MaxScopeSize is the longest scope EncodeFor and DecodeFor take.
	MaxScopeSize = 64

	nonceSize = 12
	tagSize   = 12
	famNone   = 0
	famIPv4   = 1
	famIPv6   = 2
	famMask   = 3

	minPlainSize = 1 + 4 + 2*(4+2)
	maxPlainSize = 1 + 4 + 2*(16+2)
	overhead     = 1 + nonceSize + tagSize
	minRawSize   = overhead + minPlainSize
	maxRawSize   = overhead + maxPlainSize
	// Every valid raw size is a multiple of 3, so these are exact.
	minTokenLen = minRawSize / 3 * 4
	maxTokenLen = maxRawSize / 3 * 4
)

var (
	tokenEncoding = base64.RawURLEncoding.Strict()

	labelEnc = []byte("sipedge token enc")
	labelIV  = []byte("sipedge token iv")

	// Preallocated so that rejecting junk does not allocate.
	errTokenLength    = fmt.Errorf("%w: wrong length", ErrBadToken)
	errTokenBase64    = fmt.Errorf("%w: not base64url", ErrBadToken)
	errTokenVersion   = fmt.Errorf("%w: unknown version", ErrBadToken)
	errTokenMAC       = fmt.Errorf("%w: authentication failed", ErrBadToken)
	errTokenTransport = fmt.Errorf("%w: unknown transport", ErrBadToken)
	errTokenFamily    = fmt.Errorf("%w: unknown address family", ErrBadToken)
	errTokenMinted    = fmt.Errorf("%w: minted time out of range", ErrBadToken)
	errTokenScope     = fmt.Errorf("%w: scope too long", ErrBadToken)
)

// Token is what a flow token carries: the flow it names and when it was
// minted, to the second. Callers compare Minted with the life of the flow
// or binding it should belong to; Decode itself enforces no age.
type Token struct {
	Flow   FlowKey
	Minted time.Time // UTC
}

// Signer issues and checks flow tokens: opaque, encrypted and
// authenticated encodings of a FlowKey (RFC 5626 §5.2) and the time they
// were minted, suitable as the user part of a Path, Record-Route or
// Contact URI. It mints with the current key and, for a grace period
// after a rotation, also accepts the previous one. A Signer is safe for
// concurrent use.
type Signer struct {
	cur, prev *sealer
	prevUntil time.Time // prev is accepted while now() is before this
	now       func() time.Time
}

// sealer is one key's derived cipher and IV key.
type sealer struct {
	aead cipher.AEAD // safe for concurrent use
	pool sync.Pool   // of *tokenScratch, its mac keyed with the IV key
}

// tokenScratch is the per-call working state, pooled so that Encode
// allocates only its result and Decode nothing.
type tokenScratch struct {
	mac   hash.Hash
	plain [maxPlainSize]byte
	raw   [maxRawSize]byte
	enc   [maxTokenLen]byte
	sum   [sha256.Size]byte
	ad    [1 + MaxScopeSize]byte
}

// NewSigner returns a Signer for keys (see LoadOrCreateKeys). Tokens are
// minted with keys.Current; those of keys.Previous, if any, decode while
// now() is before keys.Rotated+grace. Each key must hold at least
// MinKeySize bytes; the Signer keeps only keys derived from them. A nil
// now means time.Now.
func NewSigner(keys Keys, grace time.Duration, now func() time.Time) (*Signer, error) {
	if len(keys.Current) < MinKeySize {
		return nil, fmt.Errorf("nat: current flow token key has %d bytes, want at least %d", len(keys.Current), MinKeySize)
	}
	if grace < 0 {
		return nil, fmt.Errorf("nat: flow token key grace %v is negative", grace)
	}
	if now == nil {
		now = time.Now
	}
	s := &Signer{now: now}
	var err error
	if s.cur, err = newSealer(keys.Current); err != nil {
		return nil, err
	}
	if keys.Previous == nil {
		return s, nil
	}
	if len(keys.Previous) < MinKeySize {
		return nil, fmt.Errorf("nat: previous flow token key has %d bytes, want at least %d", len(keys.Previous), MinKeySize)
	}
	if keys.Rotated.IsZero() {
		return nil, fmt.Errorf("nat: previous flow token key without a rotation time")
	}
	if s.prev, err = newSealer(keys.Previous); err != nil {
		return nil, err
	}
	s.prevUntil = keys.Rotated.Add(grace)
	return s, nil
}

func newSealer(key []byte) (*sealer, error) {
	encKey, ivKey := derive(key, labelEnc), derive(key, labelIV)
	defer clear(encKey)
	block, err := aes.NewCipher(encKey)
	if err != nil {
		return nil, fmt.Errorf("nat: flow token cipher: %w", err)
	}
	aead, err := cipher.NewGCMWithTagSize(block, tagSize)
	if err != nil {
		return nil, fmt.Errorf("nat: flow token cipher: %w", err)
	}
	c := &sealer{aead: aead}
	c.pool.New = func() any { return &tokenScratch{mac: hmac.New(sha256.New, ivKey)} }
	return c, nil
}

func derive(key, label []byte) []byte {
	m := hmac.New(sha256.New, key)
	m.Write(label)
	return m.Sum(nil)
}

// String describes the Signer without key material.
func (s *Signer) String() string {
	if s.prev == nil {
		return "nat.Signer{current key}"
	}
	return "nat.Signer{current key, previous key until " + s.prevUntil.UTC().Format(time.RFC3339) + "}"
}

// Format prints String for every verb, so that no verb prints keys.
func (s *Signer) Format(f fmt.State, _ rune) { io.WriteString(f, s.String()) }

// Encode returns the token for k minted at minted (to the second), sealed
// with the current key. Only a key for which k.Valid() holds, minted
// after 1970 and before 2106 (uint32 Unix seconds), yields a token that
// Decode accepts.
func (s *Signer) Encode(k FlowKey, minted time.Time) string { return s.EncodeFor("", k, minted) }

// EncodeFor is Encode for a scope (a tenant): the token opens only with
// DecodeFor and the same scope. A scope longer than MaxScopeSize yields
// a token nothing opens.
func (s *Signer) EncodeFor(scope string, k FlowKey, minted time.Time) string {
	c := s.cur
	st := c.pool.Get().(*tokenScratch)
	pt := appendPlain(st.plain[:0], k, minted)
	ad := st.ad[:1]
	ad[0] = tokenVersion
	if len(scope) > MaxScopeSize {
		scope, pt[0] = scope[:MaxScopeSize], 0 // transport 0: Decode rejects it
	}
	ad = append(ad, scope...)
	b := append(st.raw[:0], tokenVersion)
	st.mac.Reset()
	st.mac.Write(b)
	st.mac.Write(pt)
	st.mac.Write(ad[1:])
	b = append(b, st.mac.Sum(st.sum[:0])[:nonceSize]...)
	b = c.aead.Seal(b, b[1:1+nonceSize], pt, ad)
	n := tokenEncoding.EncodedLen(len(b))
	tokenEncoding.Encode(st.enc[:], b)
	tok := string(st.enc[:n])
	c.pool.Put(st)
	return tok
}

// Decode returns the flow and minted time that tok was issued for. Any
// token this Signer did not issue with its current key, or with its
// previous key within the grace period, yields an error wrapping
// ErrBadToken; so does one issued for a scope (EncodeFor).
func (s *Signer) Decode(tok string) (Token, error) { return s.DecodeFor("", tok) }

// DecodeFor is Decode for tokens sealed for scope: a token sealed for
// any other scope yields an error wrapping ErrBadToken.
func (s *Signer) DecodeFor(scope, tok string) (Token, error) {
	// Check the length before decoding, so hostile input costs nothing.
	if len(tok) < minTokenLen || len(tok) > maxTokenLen {
		return Token{}, errTokenLength
	}
	if len(scope) > MaxScopeSize {
		return Token{}, errTokenScope
	}
	st := s.cur.pool.Get().(*tokenScratch)
	defer s.cur.pool.Put(st)
	in := st.enc[:copy(st.enc[:], tok)]
	n, err := tokenEncoding.Decode(st.raw[:], in)
	// base64 skips CR and LF; insisting on the canonical length keeps
	// exactly one spelling per token.
	if err != nil || tokenEncoding.EncodedLen(n) != len(tok) {
		return Token{}, errTokenBase64
	}
	b := st.raw[:n]
	if b[0] != tokenVersion {
		return Token{}, errTokenVersion
	}
	ad := append(st.ad[:1], scope...)
	ad[0] = tokenVersion
	pt, err := s.cur.open(st.plain[:0], b, ad)
	if err != nil && s.prev != nil && s.now().Before(s.prevUntil) {
		pst := s.prev.pool.Get().(*tokenScratch)
		defer s.prev.pool.Put(pst)
		pt, err = s.prev.open(pst.plain[:0], b, ad)
	}
	if err != nil {
		return Token{}, err
	}
	return parsePlain(pt)
}

// open authenticates and decrypts the raw token b into dst.
func (c *sealer) open(dst, b, ad []byte) ([]byte, error) {
	pt, err := c.aead.Open(dst, b[1:1+nonceSize], b[1+nonceSize:], ad)
	if err != nil {
		return nil, errTokenMAC
	}
	return pt, nil
}

func appendPlain(b []byte, k FlowKey, minted time.Time) []byte {
	tr := byte(k.Transport)
	if k.Transport < UDP || k.Transport > WSS {
		tr = 0 // Decode rejects it; masking could alias a valid one
	}
	lf, rf := family(k.Local.Addr()), family(k.Remote.Addr())
	b = append(b, tr|lf<<4|rf<<6)
	sec := minted.Unix()
	if sec < 1 || sec > math.MaxUint32 {
		sec = 0 // Decode rejects it
	}
	b = binary.BigEndian.AppendUint32(b, uint32(sec))
	b = appendAddrPort(b, lf, k.Local)
	return appendAddrPort(b, rf, k.Remote)
}

func family(a netip.Addr) byte {
	switch {
	case a.Is4():
		return famIPv4
	case a.Is6():
		return famIPv6
	}
	return famNone
}

func appendAddrPort(b []byte, fam byte, ap netip.AddrPort) []byte {
	switch fam {
	case famIPv4:
		v := ap.Addr().As4()
		b = append(b, v[:]...)
	case famIPv6:
		v := ap.Addr().As16()
		b = append(b, v[:]...)
	}
	return binary.BigEndian.AppendUint16(b, ap.Port())
}

func parsePlain(p []byte) (Token, error) {
	if len(p) < minPlainSize {
		return Token{}, errTokenLength
	}
	var t Token
	t.Flow.Transport = Transport(p[0] & 0x0f)
	if t.Flow.Transport < UDP || t.Flow.Transport > WSS {
		return Token{}, errTokenTransport
	}
	sec := binary.BigEndian.Uint32(p[1:5])
	if sec == 0 {
		return Token{}, errTokenMinted
	}
	t.Minted = time.Unix(int64(sec), 0).UTC()
	rest := p[5:]
	var err error
	if t.Flow.Local, rest, err = readAddrPort(p[0]>>4&famMask, rest); err != nil {
		return Token{}, err
	}
	if t.Flow.Remote, rest, err = readAddrPort(p[0]>>6, rest); err != nil {
		return Token{}, err
	}
	if len(rest) != 0 {
		return Token{}, errTokenLength
	}
	return t, nil
}

func readAddrPort(fam byte, b []byte) (netip.AddrPort, []byte, error) {
	var a netip.Addr
	switch fam {
	case famIPv4:
		if len(b) < 4+2 {
			return netip.AddrPort{}, nil, errTokenLength
		}
		a = netip.AddrFrom4([4]byte(b[:4]))
		b = b[4:]
	case famIPv6:
		if len(b) < 16+2 {
			return netip.AddrPort{}, nil, errTokenLength
		}
		a = netip.AddrFrom16([16]byte(b[:16]))
		b = b[16:]
	default:
		return netip.AddrPort{}, nil, errTokenFamily
	}
	return netip.AddrPortFrom(a, binary.BigEndian.Uint16(b)), b[2:], nil
}
