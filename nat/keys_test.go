package nat

import (
	"bytes"
	"encoding/hex"
	"errors"
	"fmt"
	"io/fs"
	"log/slog"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"
)

const (
	secret     = "00112233445566778899aabbccddeeff00112233445566778899aabbccddeeff"
	prevSecret = "ffeeddccbbaa99887766554433221100ffeeddccbbaa99887766554433221100"
)

func mustHex(s string) []byte {
	b, err := hex.DecodeString(s)
	if err != nil {
		panic(err)
	}
	return b
}

func writeKeyFile(t *testing.T, content string, mode fs.FileMode) string {
	t.Helper()
	path := filepath.Join(t.TempDir(), "flow.key")
	if err := os.WriteFile(path, []byte(content), 0o600); err != nil {
		t.Fatal(err)
	}
	if err := os.Chmod(path, mode); err != nil {
		t.Fatal(err)
	}
	return path
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

func assertOnlyFile(t *testing.T, dir string) {
	t.Helper()
	entries, err := os.ReadDir(dir)
	if err != nil {
		t.Fatal(err)
	}
	if len(entries) != 1 {
		t.Errorf("directory holds %d entries, want only the key (temp file left behind?)", len(entries))
	}
}

// assertNoLeak fails if msg, minus path, quotes 8 or more characters of
// any run of hex digits (a key, or part of one) in content.
func assertNoLeak(t *testing.T, msg, path, content string) {
	t.Helper()
	msg = strings.ToLower(strings.ReplaceAll(msg, path, ""))
	notHex := func(r rune) bool { return !strings.ContainsRune("0123456789abcdefABCDEF", r) }
	for _, run := range strings.FieldsFunc(content, notHex) {
		run = strings.ToLower(run)
		for i := 0; i+8 <= len(run); i++ {
			if strings.Contains(msg, run[i:i+8]) {
				t.Fatalf("error %q leaks key material %q", msg, run[i:i+8])
			}
		}
	}
}

func TestLoadOrCreateKeysCreates(t *testing.T) {
	dir := filepath.Join(t.TempDir(), "state", "sipedge")
	path := filepath.Join(dir, "flow.key")
	keys, err := LoadOrCreateKeys(path)
	if err != nil {
		t.Fatal(err)
	}
	if len(keys.Current) != MinKeySize || bytes.Equal(keys.Current, make([]byte, MinKeySize)) {
		t.Fatalf("created key has %d bytes (or is all zero)", len(keys.Current))
	}
	if keys.Previous != nil || !keys.Rotated.IsZero() {
		t.Errorf("a new file has a previous key or rotation time: %v", keys)
	}
	assertMode(t, dir, 0o700)
	assertMode(t, path, 0o600)
	data, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	if want := "current " + hex.EncodeToString(keys.Current) + "\n"; string(data) != want {
		t.Errorf("key file has %d bytes in the wrong form", len(data))
	}
	assertOnlyFile(t, dir)
	again, err := LoadOrCreateKeys(path)
	if err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(again.Current, keys.Current) || again.Previous != nil {
		t.Error("second LoadOrCreateKeys returned other keys")
	}
	if _, err := NewSigner(keys, time.Hour, nil); err != nil {
		t.Error(err)
	}
}

func TestLoadOrCreateKeysConcurrent(t *testing.T) {
	path := filepath.Join(t.TempDir(), "flow.key")
	keys := make([]Keys, 8)
	errs := make([]error, 8)
	var wg sync.WaitGroup
	for i := range keys {
		wg.Go(func() { keys[i], errs[i] = LoadOrCreateKeys(path) })
	}
	wg.Wait()
	onDisk, err := LoadOrCreateKeys(path)
	if err != nil {
		t.Fatal(err)
	}
	for i := range keys {
		if errs[i] != nil {
			t.Errorf("caller %d: %v", i, errs[i])
		} else if !bytes.Equal(keys[i].Current, onDisk.Current) {
			t.Errorf("caller %d got a key other than the one on disk", i)
		}
	}
	assertOnlyFile(t, filepath.Dir(path))
}

func TestLoadOrCreateKeysReadsOldFormat(t *testing.T) {
	want := mustHex(secret)
	for _, content := range []string{secret, secret + "\n", secret + "\r\n", strings.ToUpper(secret) + "\n"} {
		path := writeKeyFile(t, content, 0o600)
		got, err := LoadOrCreateKeys(path)
		if err != nil {
			t.Errorf("%q: %v", content, err)
		} else if !bytes.Equal(got.Current, want) || got.Previous != nil || !got.Rotated.IsZero() {
			t.Errorf("%q: wrong keys %v", content, got)
		}
		if data, _ := os.ReadFile(path); string(data) != content {
			t.Errorf("%q: loading rewrote the file", content)
		}
	}
	// 0400 is stricter than 0600 and fine.
	if _, err := LoadOrCreateKeys(writeKeyFile(t, secret, 0o400)); err != nil {
		t.Errorf("mode 0400: %v", err)
	}
}

func TestLoadOrCreateKeysReadsNewFormat(t *testing.T) {
	rotated := time.Date(2025, 3, 1, 12, 0, 0, 0, time.UTC)
	full := Keys{Current: mustHex(secret), Previous: mustHex(prevSecret), Rotated: rotated}
	long := mustHex(secret + prevSecret)
	tests := []struct {
		name, content string
		want          Keys
	}{
		{"current only", "current " + secret + "\n", Keys{Current: mustHex(secret)}},
		{"no final newline", "current " + secret, Keys{Current: mustHex(secret)}},
		{"all three", "current " + secret + "\nprevious " + prevSecret + "\nrotated 2025-03-01T12:00:00Z\n", full},
		{"any order, CRLF, blank lines, tabs", "\r\nrotated\t2025-03-01T13:00:00+01:00\r\n\r\n  previous  " + prevSecret + "\r\ncurrent " + secret + "\r\n\n", full},
		{"rotated without previous", "current " + secret + "\nrotated 2025-03-01T12:00:00Z\n", Keys{Current: mustHex(secret), Rotated: rotated}},
		{"64-byte key", "current " + secret + prevSecret + "\n", Keys{Current: long}},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			got, err := LoadOrCreateKeys(writeKeyFile(t, tc.content, 0o600))
			if err != nil {
				t.Fatal(err)
			}
			if !bytes.Equal(got.Current, tc.want.Current) || !bytes.Equal(got.Previous, tc.want.Previous) ||
				(got.Previous == nil) != (tc.want.Previous == nil) || !got.Rotated.Equal(tc.want.Rotated) {
				t.Errorf("got %v, want %v", got, tc.want)
			}
		})
	}
}

func TestLoadOrCreateKeysRejectsOldFormat(t *testing.T) {
	tests := []struct {
		name    string
		content string
		mode    fs.FileMode
		wantIn  string
	}{
		{"group readable", secret, 0o640, "mode"},
		{"world readable", secret + "\n", 0o604, "mode"},
		{"new format world readable", "current " + secret + "\n", 0o644, "mode"},
		{"too short", secret[:62], 0o600, "hex digits"},
		{"too long", secret + "00", 0o600, "hex digits"},
		{"two newlines", secret + "\n\n", 0o600, "hex digits"},
		{"raw bytes", secret[:32], 0o600, "hex digits"},
		{"not hex", "g0112233445566778899aabbccddeeff00112233445566778899aabbccddeezz", 0o600, "not hex"},
		{"empty", "", 0o600, "hex digits"},
		{"oversize", strings.Repeat(secret+"\n", 20), 0o600, "larger than"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			path := writeKeyFile(t, tc.content, tc.mode)
			keys, err := LoadOrCreateKeys(path)
			if err == nil {
				t.Fatalf("accepted: %v", keys)
			}
			msg := err.Error()
			if !strings.Contains(msg, tc.wantIn) || !strings.Contains(msg, path) {
				t.Errorf("error %q should mention %q and the path", msg, tc.wantIn)
			}
			assertNoLeak(t, msg, path, tc.content)
			if strings.ContainsAny(msg, "gz") && tc.name == "not hex" {
				t.Errorf("error %q quotes the file's content", msg)
			}
		})
	}
}

func TestLoadOrCreateKeysRejectsNewFormat(t *testing.T) {
	cur, prev, rot := "current "+secret+"\n", "previous "+prevSecret+"\n", "rotated 2025-03-01T12:00:00Z\n"
	tests := []struct {
		name, content string
		line          int // 0: the whole file
		wantIn        string
	}{
		{"unknown name", cur + "foo bar\n", 2, "unknown name"},
		{"misspelt", "\ncurent " + secret + "\n", 2, "unknown name"},
		{"key as name", cur + secret + " x\n", 2, "unknown name"},
		{"three fields", cur + "previous " + prevSecret + " extra\n", 2, `want "name value"`},
		{"name only", cur + rot + "previous\n", 3, `want "name value"`},
		{"indented name only", cur + "  previous \n", 2, `want "name value"`},
		{"duplicate current", cur + prev + rot + cur, 4, "duplicate current"},
		{"duplicate previous", prev + cur + prev + rot, 3, "duplicate previous"},
		{"duplicate rotated", cur + rot + rot, 3, "duplicate rotated"},
		{"short key", "current " + secret[:62] + "\n", 1, "hex digits"},
		{"odd key", "current " + secret + "0\n", 1, "hex digits"},
		{"long key", "current " + secret + secret + "00\n", 1, "hex digits"},
		{"not hex", cur + "previous " + prevSecret[:60] + "zzzz\n" + rot, 2, "not hex"},
		{"bad time", cur + prev + "rotated yesterday\n", 3, "RFC 3339"},
		{"time without zone", cur + prev + "rotated 2025-03-01T12:00:00\n", 3, "RFC 3339"},
		{"time before 1970", cur + prev + "rotated 0001-01-01T00:00:00Z\n", 3, "1970"},
		{"time after 9999 in UTC", cur + prev + "rotated 9999-12-31T23:59:59-01:00\n", 3, "9999"},
		{"no current", prev + rot, 0, "no current key"},
		{"blank", " \n\t\n", 0, "no current key"},
		{"previous without rotated", cur + prev, 0, "without rotated"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			path := writeKeyFile(t, tc.content, 0o600)
			keys, err := LoadOrCreateKeys(path)
			if err == nil {
				t.Fatalf("accepted: %v", keys)
			}
			msg := err.Error()
			where := path + ":"
			if tc.line > 0 {
				where = fmt.Sprintf("%s:%d: ", path, tc.line)
			}
			if !strings.Contains(msg, tc.wantIn) || !strings.Contains(msg, where) {
				t.Errorf("error %q should mention %q and %q", msg, tc.wantIn, where)
			}
			assertNoLeak(t, msg, path, tc.content)
		})
	}
}

func TestLoadOrCreateKeysNotAFile(t *testing.T) {
	path := t.TempDir()
	if _, err := LoadOrCreateKeys(path); err == nil {
		t.Error("accepted a directory as key file")
	}
	blocker := filepath.Join(t.TempDir(), "file")
	if err := os.WriteFile(blocker, nil, 0o600); err != nil {
		t.Fatal(err)
	}
	if _, err := LoadOrCreateKeys(filepath.Join(blocker, "flow.key")); err == nil {
		t.Error("created a key under a regular file")
	}
}

func TestRotateKeys(t *testing.T) {
	path := writeKeyFile(t, secret+"\n", 0o600) // old format
	t1 := time.Date(2025, 3, 1, 12, 0, 0, 500_000_000, time.FixedZone("X", 3600))
	rotated, err := RotateKeys(path, t1)
	if err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(rotated.Previous, mustHex(secret)) || len(rotated.Current) != MinKeySize ||
		bytes.Equal(rotated.Current, rotated.Previous) || !rotated.Rotated.Equal(t1.Truncate(time.Second)) {
		t.Fatalf("RotateKeys = %v", rotated)
	}
	assertMode(t, path, 0o600)
	assertOnlyFile(t, filepath.Dir(path))
	assertSameKeys(t, path, rotated)

	// A token of the first key still decodes with the loaded keys within
	// the grace period, and not after.
	k := testKeys()[0]
	tok := newTestSigner(t, mustHex(secret)).Encode(k, t1)
	loaded, _ := LoadOrCreateKeys(path)
	now := t1.Add(time.Hour)
	s, err := NewSigner(loaded, 2*time.Hour, func() time.Time { return now })
	if err != nil {
		t.Fatal(err)
	}
	if got, err := s.Decode(tok); err != nil || got.Flow != k {
		t.Errorf("within grace: %v, %v", got, err)
	}
	now = t1.Add(3 * time.Hour)
	if _, err := s.Decode(tok); !errors.Is(err, ErrBadToken) {
		t.Errorf("after grace: %v, want ErrBadToken", err)
	}

	t2 := t1.Add(24 * time.Hour)
	again, err := RotateKeys(path, t2)
	if err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(again.Previous, rotated.Current) || !again.Rotated.Equal(t2.Truncate(time.Second)) {
		t.Errorf("second RotateKeys = %v", again)
	}
	assertSameKeys(t, path, again)
	assertOnlyFile(t, filepath.Dir(path))
}

func assertSameKeys(t *testing.T, path string, want Keys) {
	t.Helper()
	got, err := LoadOrCreateKeys(path)
	if err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(got.Current, want.Current) || !bytes.Equal(got.Previous, want.Previous) || !got.Rotated.Equal(want.Rotated) {
		t.Errorf("on disk %v, RotateKeys returned %v", got, want)
	}
}

func TestRotateKeysRefuses(t *testing.T) {
	now := time.Date(2025, 3, 1, 12, 0, 0, 0, time.UTC)
	missing := filepath.Join(t.TempDir(), "flow.key")
	if _, err := RotateKeys(missing, now); !errors.Is(err, fs.ErrNotExist) {
		t.Errorf("missing file: %v, want fs.ErrNotExist", err)
	}
	if _, err := os.Stat(missing); err == nil {
		t.Error("RotateKeys created a missing key file")
	}
	for name, tc := range map[string]struct {
		content string
		mode    fs.FileMode
		now     time.Time
	}{
		"world readable": {secret, 0o644, now},
		"corrupt":        {"current " + secret + "\nbogus line\n", 0o600, now},
		"zero time":      {secret, 0o600, time.Time{}},
		"year 10000":     {secret, 0o600, time.Date(10000, 1, 1, 0, 0, 0, 0, time.UTC)},
	} {
		path := writeKeyFile(t, tc.content, tc.mode)
		if keys, err := RotateKeys(path, tc.now); err == nil {
			t.Errorf("%s: rotated: %v", name, keys)
		} else {
			assertNoLeak(t, err.Error(), path, tc.content)
		}
		if data, _ := os.ReadFile(path); string(data) != tc.content {
			t.Errorf("%s: the file changed", name)
		}
		assertOnlyFile(t, filepath.Dir(path))
	}
}

func TestKeysHideSecrets(t *testing.T) {
	keys := Keys{Current: mustHex(secret), Previous: mustHex(prevSecret), Rotated: time.Date(2025, 3, 1, 12, 0, 0, 0, time.UTC)}
	const want = "nat.Keys{current: 32 bytes, previous: 32 bytes, rotated: 2025-03-01T12:00:00Z}"
	var outs []string
	for _, verb := range []string{"%v", "%+v", "%#v", "%s", "%x", "%X", "%q", "%d"} {
		outs = append(outs, fmt.Sprintf(verb, keys), fmt.Sprintf(verb, &keys), fmt.Sprintf(verb, []Keys{keys}))
	}
	var buf bytes.Buffer
	slog.New(slog.NewJSONHandler(&buf, nil)).Info("x", "keys", keys)
	slog.New(slog.NewTextHandler(&buf, nil)).Info("x", "keys", keys)
	outs = append(outs, buf.String(), fmt.Sprint(keys), keys.String())
	for _, out := range outs {
		if !strings.Contains(out, want) {
			t.Errorf("%q does not contain %q", out, want)
		}
		for _, b := range [][]byte{keys.Current, keys.Previous} {
			for _, enc := range []string{hex.EncodeToString(b[:4]), strings.ToUpper(hex.EncodeToString(b[:4])), fmt.Sprint(b[:4])} {
				if strings.Contains(out, enc) {
					t.Errorf("%q shows key material", out)
				}
			}
		}
	}
	if got := (Keys{Current: make([]byte, 32)}).String(); got != "nat.Keys{current: 32 bytes}" {
		t.Errorf("String() = %q", got)
	}
}

func FuzzParseKeys(f *testing.F) {
	f.Add("current " + secret + "\nprevious " + prevSecret + "\nrotated 2025-03-01T12:00:00Z\n")
	f.Add(secret + "\n")
	f.Add("current " + secret + "\r\n\r\nrotated 2025-03-01T12:00:00+01:00")
	f.Add("current \xff" + secret[1:])
	f.Add("rotated 9999-12-31T23:59:59Z\ncurrent " + secret + secret)
	f.Fuzz(func(t *testing.T, content string) {
		var keys Keys
		var err error
		if !strings.ContainsAny(content, " \t") {
			keys, err = parseOldKey("f", []byte(content))
		} else {
			keys, err = parseKeys("f", []byte(content))
		}
		if err != nil {
			if !strings.HasPrefix(err.Error(), "nat: flow token key f") {
				t.Fatalf("error %q does not name the file", err)
			}
			return
		}
		if len(keys.Current) < MinKeySize || (keys.Previous != nil && len(keys.Previous) < MinKeySize) {
			t.Fatalf("accepted short keys: %v", keys)
		}
		// What the writer writes, the reader reads back.
		back, err := parseKeys("f", marshalKeys(keys))
		if err != nil {
			t.Fatalf("re-reading %q: %v", marshalKeys(keys), err)
		}
		if !bytes.Equal(back.Current, keys.Current) || !bytes.Equal(back.Previous, keys.Previous) || !back.Rotated.Equal(keys.Rotated) {
			t.Fatalf("re-read %v, want %v", back, keys)
		}
	})
}
