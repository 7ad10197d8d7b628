package nat

import (
	"bytes"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"log/slog"
	"os"
	"path/filepath"
	"runtime"
	"strconv"
	"time"
)

// Key file format. The old one is a single line of 2*MinKeySize hex
// digits: a current key only. The new one, which LoadOrCreateKeys and
// RotateKeys write, has one "name value" line per field:
//
//	current <hex>
//	previous <hex>
//	rotated <RFC 3339 time>
//
// current is required, previous needs rotated, blank lines are ignored and
// anything else is an error naming the file and line.
const (
	maxKeySize     = 64
	maxKeyFileSize = 1024
)

// Keys are the flow token keys: Current mints and checks tokens; Previous,
// if not nil, is the key Current replaced at Rotated, and still checks
// tokens for a grace period (see NewSigner). Its String and Format never
// show key material.
type Keys struct {
	Current, Previous []byte
	Rotated           time.Time
}

// String describes the keys without key material.
func (k Keys) String() string {
	s := "nat.Keys{current: " + strconv.Itoa(len(k.Current)) + " bytes"
	if k.Previous != nil {
		s += ", previous: " + strconv.Itoa(len(k.Previous)) + " bytes"
	}
	if !k.Rotated.IsZero() {
		s += ", rotated: " + k.Rotated.UTC().Format(time.RFC3339)
	}
	return s + "}"
}

// Format prints String for every verb, so that neither %x nor %#v shows
// key material.
func (k Keys) Format(f fmt.State, _ rune) { io.WriteString(f, k.String()) }

// LogValue keeps key material out of every slog handler.
func (k Keys) LogValue() slog.Value { return slog.StringValue(k.String()) }

// LoadOrCreateKeys returns the flow token keys stored at path, in either
// format. If the file does not exist, it creates the parent directory
// (mode 0700) and writes a fresh random current key with mode 0600,
// atomically. A key file readable or writable by group or others is
// rejected. Errors never include key material.
func LoadOrCreateKeys(path string) (Keys, error) {
	keys, err := readKeys(path)
	if !errors.Is(err, fs.ErrNotExist) {
		return keys, err
	}
	return createKeys(path)
}

// RotateKeys replaces the keys at path: a fresh random key becomes
// current, the current one previous (the old previous is dropped) and now,
// to the second, the rotation time. The file is replaced atomically. Run
// it once per grace period at most, or tokens of the dropped key fail
// early, and not concurrently with itself on the same path. Running
// processes keep their keys until they load them again.
func RotateKeys(path string, now time.Time) (Keys, error) {
	if !rotationInRange(now) {
		return Keys{}, fmt.Errorf("nat: flow token key %s: rotation time %v is not within the years 1970 to 9999 UTC", path, now)
	}
	old, err := readKeys(path)
	if err != nil {
		return Keys{}, err
	}
	clear(old.Previous)
	keys := Keys{Previous: old.Current, Rotated: now.UTC().Truncate(time.Second)}
	if keys.Current, err = randomKey(); err != nil {
		return Keys{}, err
	}
	if err := writeKeys(path, keys, false); err != nil {
		return Keys{}, err
	}
	return keys, nil
}

func readKeys(path string) (Keys, error) {
	f, err := os.Open(path)
	if err != nil {
		return Keys{}, fmt.Errorf("nat: flow token key: %w", err)
	}
	defer f.Close()
	fi, err := f.Stat()
	if err != nil {
		return Keys{}, fmt.Errorf("nat: flow token key: %w", err)
	}
	if !fi.Mode().IsRegular() {
		return Keys{}, fmt.Errorf("nat: flow token key %s: not a regular file", path)
	}
	if perm := fi.Mode().Perm(); perm&0o077 != 0 && runtime.GOOS != "windows" {
		return Keys{}, fmt.Errorf("nat: flow token key %s: mode %#o is too permissive, want 0600 (chmod 600 %s)", path, perm, path)
	}
	// Read one byte more than a valid file can hold, to catch oversize.
	buf, err := io.ReadAll(io.LimitReader(f, maxKeyFileSize+1))
	defer clear(buf)
	if err != nil {
		return Keys{}, fmt.Errorf("nat: flow token key: %w", err)
	}
	if len(buf) > maxKeyFileSize {
		return Keys{}, fmt.Errorf("nat: flow token key %s: larger than %d bytes", path, maxKeyFileSize)
	}
	if !bytes.ContainsAny(buf, " \t") {
		return parseOldKey(path, buf)
	}
	return parseKeys(path, buf)
}

// parseOldKey reads the old format: exactly one key of 2*MinKeySize hex
// digits and an optional newline.
func parseOldKey(path string, buf []byte) (Keys, error) {
	text := bytes.TrimSuffix(bytes.TrimSuffix(buf, []byte("\n")), []byte("\r"))
	if len(text) != 2*MinKeySize {
		return Keys{}, fmt.Errorf("nat: flow token key %s: want %d hex digits and an optional newline, or \"name value\" lines", path, 2*MinKeySize)
	}
	key := make([]byte, MinKeySize)
	if _, err := hex.Decode(key, text); err != nil {
		// The hex error quotes the offending byte: do not pass it on.
		return Keys{}, fmt.Errorf("nat: flow token key %s: not hex-encoded", path)
	}
	return Keys{Current: key}, nil
}

// parseKeys reads the new format. Errors name the line, never its content:
// a misplaced key must not end up in a log.
func parseKeys(path string, buf []byte) (Keys, error) {
	var keys Keys
	var rotated bool
	lineErr := func(n int, msg string) error {
		return fmt.Errorf("nat: flow token key %s:%d: %s", path, n, msg)
	}
	for i, line := range bytes.Split(buf, []byte("\n")) {
		n := i + 1
		fields := bytes.Fields(line)
		if len(fields) == 0 {
			continue
		}
		if len(fields) != 2 {
			return Keys{}, lineErr(n, `want "name value"`)
		}
		var err error
		switch name := string(fields[0]); name {
		case "current", "previous":
			dst := &keys.Current
			if name == "previous" {
				dst = &keys.Previous
			}
			if *dst != nil {
				return Keys{}, lineErr(n, "duplicate "+name)
			}
			if *dst, err = parseHexKey(fields[1]); err != nil {
				return Keys{}, lineErr(n, name+": "+err.Error())
			}
		case "rotated":
			if rotated {
				return Keys{}, lineErr(n, "duplicate rotated")
			}
			if keys.Rotated, err = time.Parse(time.RFC3339, string(fields[1])); err != nil {
				return Keys{}, lineErr(n, "rotated: not an RFC 3339 time")
			}
			if !rotationInRange(keys.Rotated) {
				return Keys{}, lineErr(n, "rotated: not within the years 1970 to 9999 UTC")
			}
			rotated = true
		default:
			return Keys{}, lineErr(n, "unknown name, want current, previous or rotated")
		}
	}
	if keys.Current == nil {
		return Keys{}, fmt.Errorf("nat: flow token key %s: no current key", path)
	}
	if keys.Previous != nil && !rotated {
		return Keys{}, fmt.Errorf("nat: flow token key %s: previous key without rotated time", path)
	}
	return keys, nil
}

// rotationInRange reports whether t can be written and read back, and is
// no zero time.
func rotationInRange(t time.Time) bool {
	y := t.UTC().Year()
	return y >= 1970 && y <= 9999
}

func parseHexKey(text []byte) ([]byte, error) {
	if len(text) < 2*MinKeySize || len(text) > 2*maxKeySize || len(text)%2 != 0 {
		return nil, fmt.Errorf("want %d to %d hex digits, an even number", 2*MinKeySize, 2*maxKeySize)
	}
	key := make([]byte, len(text)/2)
	if _, err := hex.Decode(key, text); err != nil {
		return nil, errors.New("not hex-encoded") // hex's error quotes the byte
	}
	return key, nil
}

func randomKey() ([]byte, error) {
	key := make([]byte, MinKeySize)
	if _, err := rand.Read(key); err != nil {
		return nil, fmt.Errorf("nat: flow token key: %w", err)
	}
	return key, nil
}

func createKeys(path string) (Keys, error) {
	if err := os.MkdirAll(filepath.Dir(path), 0o700); err != nil {
		return Keys{}, fmt.Errorf("nat: flow token key: %w", err)
	}
	key, err := randomKey()
	if err != nil {
		return Keys{}, err
	}
	keys := Keys{Current: key}
	err = writeKeys(path, keys, true)
	if errors.Is(err, fs.ErrExist) {
		return readKeys(path) // another process won the race
	}
	if err != nil {
		return Keys{}, err
	}
	return keys, nil
}

func marshalKeys(k Keys) []byte {
	var b []byte
	b = append(b, "current "...)
	b = hex.AppendEncode(b, k.Current)
	b = append(b, '\n')
	if k.Previous != nil {
		b = append(b, "previous "...)
		b = hex.AppendEncode(b, k.Previous)
		b = append(b, '\n')
	}
	if !k.Rotated.IsZero() {
		b = append(b, "rotated "...)
		b = k.Rotated.UTC().AppendFormat(b, time.RFC3339)
		b = append(b, '\n')
	}
	return b
}

// writeKeys writes keys to a temporary file, syncs it and moves it into
// place. With exclusive, it links rather than renames when it can, so
// that of two processes racing to create the file both end up with the
// one that won (the loser gets an error wrapping fs.ErrExist); otherwise
// it renames over any existing file.
func writeKeys(path string, keys Keys, exclusive bool) error {
	text := marshalKeys(keys)
	defer clear(text)
	dir := filepath.Dir(path)
	tmp, err := os.CreateTemp(dir, "."+filepath.Base(path)+".*.tmp") // mode 0600
	if err != nil {
		return fmt.Errorf("nat: flow token key: %w", err)
	}
	tmpName := tmp.Name()
	defer os.Remove(tmpName) // after a link, or on failure; harmless after a rename
	if err := fillTemp(tmp, text); err != nil {
		return fmt.Errorf("nat: flow token key: %w", err)
	}
	if exclusive {
		switch err := os.Link(tmpName, path); {
		case err == nil:
			syncDir(dir)
			return nil
		case errors.Is(err, fs.ErrExist):
			return fmt.Errorf("nat: flow token key: %w", err)
		}
		// No hard links here (some file systems): fall back to rename.
	}
	if err := os.Rename(tmpName, path); err != nil {
		return fmt.Errorf("nat: flow token key: %w", err)
	}
	syncDir(dir)
	return nil
}

// fillTemp makes tmp private, writes text, syncs and closes it.
func fillTemp(tmp *os.File, text []byte) error {
	if err := tmp.Chmod(0o600); err != nil && runtime.GOOS != "windows" {
		tmp.Close()
		return err
	}
	if _, err := tmp.Write(text); err != nil {
		tmp.Close()
		return err
	}
	if err := tmp.Sync(); err != nil {
		tmp.Close()
		return err
	}
	return tmp.Close()
}

// syncDir makes a new directory entry durable; failure is not fatal
// because the file is already in place.
func syncDir(dir string) {
	if d, err := os.Open(dir); err == nil {
		_ = d.Sync()
		d.Close()
	}
}
