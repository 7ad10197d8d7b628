package nat

import (
	"bytes"
	"crypto/hmac"
	"crypto/rand"
	"crypto/sha256"
	"encoding/base64"
	"encoding/binary"
	"encoding/hex"
	"errors"
	"fmt"
	"hash"
	"io"
	"io/fs"
	"net/netip"
	"os"
	"path/filepath"
	"runtime"
	"sync"
)

// Flow token layout (all integers big-endian):
//
//	version   1 byte  (tokenVersion)
//	transport 1 byte  (Transport)
//	local     addrport
//	remote    addrport
//	mac       12 bytes: HMAC-SHA256 over every byte before it, truncated
//
// where an addrport is a family byte (4 or 6) followed by the 4- or 16-byte
// address and a 2-byte port. The whole is encoded as unpadded base64url,
// which only uses characters allowed unescaped in a SIP URI user part.
//
// IPv6 zones are not carried: a key with a zoned address decodes without
// the zone. IPv4-mapped IPv6 addresses stay IPv6, so a key round-trips to
// an equal key (zones aside).
const (
	tokenVersion = 1

	// MinKeySize is the smallest key NewSigner accepts.
	MinKeySize = 32

	macSize    = 12
	famIPv4    = 4
	famIPv6    = 6
	minRawSize = 2 + 2*(1+4+2) + macSize  // two IPv4 addrports
	maxRawSize = 2 + 2*(1+16+2) + macSize // two IPv6 addrports
	// maxTokenLen is tokenEncoding.EncodedLen(maxRawSize), as a constant.
	maxTokenLen = (maxRawSize*8 + 5) / 6
)

var (
	tokenEncoding = base64.RawURLEncoding.Strict()

	// Preallocated so that rejecting junk does not allocate.
	errTokenLength    = fmt.Errorf("%w: wrong length", ErrBadToken)
	errTokenBase64    = fmt.Errorf("%w: not base64url", ErrBadToken)
	errTokenVersion   = fmt.Errorf("%w: unknown version", ErrBadToken)
	errTokenTransport = fmt.Errorf("%w: unknown transport", ErrBadToken)
	errTokenFamily    = fmt.Errorf("%w: unknown address family", ErrBadToken)
	errTokenMAC       = fmt.Errorf("%w: signature mismatch", ErrBadToken)
)

// Signer issues and checks flow tokens: opaque, tamper-proof encodings of
// a FlowKey (RFC 5626 §5.2) suitable as the user part of a Path or
// Record-Route URI. A Signer is safe for concurrent use.
type Signer struct {
	pool sync.Pool // of *tokenScratch
}

// tokenScratch is the per-call working state, pooled so that Encode
// allocates only its result and Decode nothing.
type tokenScratch struct {
	mac hash.Hash
	raw [maxRawSize]byte
	enc [maxTokenLen]byte
	sum [sha256.Size]byte
}

// NewSigner returns a Signer keyed with a copy of key, which must hold at
// least MinKeySize bytes (see LoadOrCreateKey).
func NewSigner(key []byte) (*Signer, error) {
	if len(key) < MinKeySize {
		return nil, fmt.Errorf("nat: flow token key has %d bytes, want at least %d", len(key), MinKeySize)
	}
	k := bytes.Clone(key)
	s := &Signer{}
	s.pool.New = func() any { return &tokenScratch{mac: hmac.New(sha256.New, k)} }
	return s, nil
}

// Encode returns the token for k. Only a key for which k.Valid() holds
// yields a token that Decode accepts.
func (s *Signer) Encode(k FlowKey) string {
	st := s.pool.Get().(*tokenScratch)
	b := st.raw[:0]
	b = append(b, tokenVersion, byte(k.Transport))
	b = appendAddrPort(b, k.Local)
	b = appendAddrPort(b, k.Remote)
	b = append(b, st.macOf(b)...)
	n := len(b)
	tokenEncoding.Encode(st.enc[:], b)
	tok := string(st.enc[:tokenEncoding.EncodedLen(n)])
	s.pool.Put(st)
	return tok
}

// Decode returns the FlowKey that tok was issued for. Any token this
// Signer did not issue yields an error wrapping ErrBadToken.
func (s *Signer) Decode(tok string) (FlowKey, error) {
	// Check the length before decoding, so hostile input costs nothing.
	if len(tok) > maxTokenLen {
		return FlowKey{}, errTokenLength
	}
	st := s.pool.Get().(*tokenScratch)
	defer s.pool.Put(st)
	in := st.enc[:copy(st.enc[:], tok)]
	n, err := tokenEncoding.Decode(st.raw[:], in)
	// base64 skips CR and LF; insisting on the canonical length keeps
	// exactly one spelling per token.
	if err != nil || tokenEncoding.EncodedLen(n) != len(tok) {
		return FlowKey{}, errTokenBase64
	}
	b := st.raw[:n]
	if len(b) < minRawSize {
		return FlowKey{}, errTokenLength
	}
	if b[0] != tokenVersion {
		return FlowKey{}, errTokenVersion
	}
	k := FlowKey{Transport: Transport(b[1])}
	if k.Transport < UDP || k.Transport > WSS {
		return FlowKey{}, errTokenTransport
	}
	rest := b[2:]
	if k.Local, rest, err = readAddrPort(rest); err != nil {
		return FlowKey{}, err
	}
	if k.Remote, rest, err = readAddrPort(rest); err != nil {
		return FlowKey{}, err
	}
	if len(rest) != macSize {
		return FlowKey{}, errTokenLength
	}
	signed := b[:len(b)-macSize]
	if !hmac.Equal(st.macOf(signed), rest) {
		return FlowKey{}, errTokenMAC
	}
	return k, nil
}

// macOf returns the truncated MAC of b, valid until the next call.
func (st *tokenScratch) macOf(b []byte) []byte {
	st.mac.Reset()
	st.mac.Write(b)
	return st.mac.Sum(st.sum[:0])[:macSize]
}

func appendAddrPort(b []byte, ap netip.AddrPort) []byte {
	a := ap.Addr()
	switch {
	case a.Is4():
		v := a.As4()
		b = append(b, famIPv4)
		b = append(b, v[:]...)
	case a.Is6():
		v := a.As16()
		b = append(b, famIPv6)
		b = append(b, v[:]...)
	default:
		b = append(b, 0) // invalid address: Decode rejects the family
	}
	return binary.BigEndian.AppendUint16(b, ap.Port())
}

func readAddrPort(b []byte) (netip.AddrPort, []byte, error) {
	if len(b) < 1 {
		return netip.AddrPort{}, nil, errTokenLength
	}
	var a netip.Addr
	switch b[0] {
	case famIPv4:
		if len(b) < 1+4+2 {
			return netip.AddrPort{}, nil, errTokenLength
		}
		a = netip.AddrFrom4([4]byte(b[1:5]))
		b = b[5:]
	case famIPv6:
		if len(b) < 1+16+2 {
			return netip.AddrPort{}, nil, errTokenLength
		}
		a = netip.AddrFrom16([16]byte(b[1:17]))
		b = b[17:]
	default:
		return netip.AddrPort{}, nil, errTokenFamily
	}
	return netip.AddrPortFrom(a, binary.BigEndian.Uint16(b)), b[2:], nil
}

// LoadOrCreateKey returns the flow token key stored at path as 64 hex
// digits (a trailing newline is allowed). If the file does not exist, it
// creates the parent directory (mode 0700) and writes a fresh random key
// with mode 0600, atomically. A key file readable or writable by group or
// others is rejected. Errors never include key material.
func LoadOrCreateKey(path string) ([]byte, error) {
	key, err := readKey(path)
	if !errors.Is(err, fs.ErrNotExist) {
		return key, err
	}
	return createKey(path)
}

func readKey(path string) ([]byte, error) {
	f, err := os.Open(path)
	if err != nil {
		return nil, fmt.Errorf("nat: flow token key: %w", err)
	}
	defer f.Close()
	fi, err := f.Stat()
	if err != nil {
		return nil, fmt.Errorf("nat: flow token key: %w", err)
	}
	if !fi.Mode().IsRegular() {
		return nil, fmt.Errorf("nat: flow token key %s: not a regular file", path)
	}
	if perm := fi.Mode().Perm(); perm&0o077 != 0 && runtime.GOOS != "windows" {
		return nil, fmt.Errorf("nat: flow token key %s: mode %#o is too permissive, want 0600 (chmod 600 %s)", path, perm, path)
	}
	// Read one byte more than a valid file can hold, to catch oversize.
	buf, err := io.ReadAll(io.LimitReader(f, 2*MinKeySize+3))
	defer clear(buf)
	if err != nil {
		return nil, fmt.Errorf("nat: flow token key: %w", err)
	}
	text := bytes.TrimSuffix(bytes.TrimSuffix(buf, []byte("\n")), []byte("\r"))
	if len(text) != 2*MinKeySize {
		return nil, fmt.Errorf("nat: flow token key %s: want %d hex digits and an optional newline", path, 2*MinKeySize)
	}
	key := make([]byte, MinKeySize)
	if _, err := hex.Decode(key, text); err != nil {
		// The hex error quotes the offending byte: do not pass it on.
		return nil, fmt.Errorf("nat: flow token key %s: not hex-encoded", path)
	}
	return key, nil
}

// createKey writes a new key to a temporary file and moves it into place.
// It links rather than renames when it can, so that of two processes
// racing to create the key both end up with the one that won.
func createKey(path string) ([]byte, error) {
	dir := filepath.Dir(path)
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return nil, fmt.Errorf("nat: flow token key: %w", err)
	}
	key := make([]byte, MinKeySize)
	if _, err := rand.Read(key); err != nil {
		return nil, fmt.Errorf("nat: flow token key: %w", err)
	}
	text := make([]byte, 2*MinKeySize+1)
	hex.Encode(text, key)
	text[len(text)-1] = '\n'
	defer clear(text)

	tmp, err := os.CreateTemp(dir, "."+filepath.Base(path)+".*.tmp") // mode 0600
	if err != nil {
		return nil, fmt.Errorf("nat: flow token key: %w", err)
	}
	tmpName := tmp.Name()
	defer os.Remove(tmpName) // after a link, or on failure; harmless after a rename
	if err := tmp.Chmod(0o600); err != nil && runtime.GOOS != "windows" {
		tmp.Close()
		return nil, fmt.Errorf("nat: flow token key: %w", err)
	}
	if _, err := tmp.Write(text); err != nil {
		tmp.Close()
		return nil, fmt.Errorf("nat: flow token key: %w", err)
	}
	if err := tmp.Sync(); err != nil {
		tmp.Close()
		return nil, fmt.Errorf("nat: flow token key: %w", err)
	}
	if err := tmp.Close(); err != nil {
		return nil, fmt.Errorf("nat: flow token key: %w", err)
	}
	switch err := os.Link(tmpName, path); {
	case err == nil:
	case errors.Is(err, fs.ErrExist):
		return readKey(path) // another process won the race
	default:
		// No hard links here (some file systems): fall back to rename.
		if err := os.Rename(tmpName, path); err != nil {
			return nil, fmt.Errorf("nat: flow token key: %w", err)
		}
	}
	syncDir(dir)
	return key, nil
}

// syncDir makes a new directory entry durable; failure is not fatal
// because the key is already in place.
func syncDir(dir string) {
	if d, err := os.Open(dir); err == nil {
		_ = d.Sync()
		d.Close()
	}
}
