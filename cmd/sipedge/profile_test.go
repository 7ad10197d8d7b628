package main

import (
	"bytes"
	"flag"
	"io"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

// -cpuprofile and -memprofile write gzipped pprof profiles when the run
// stops, -trace an execution trace.
func TestProfilesWritten(t *testing.T) {
	dir := t.TempDir()
	cpu, mem, tr := filepath.Join(dir, "cpu.pprof"), filepath.Join(dir, "mem.pprof"), filepath.Join(dir, "run.trace")
	fs := flag.NewFlagSet("run", flag.ContinueOnError)
	p := profileFlags(fs)
	if err := fs.Parse([]string{"-cpuprofile", cpu, "-memprofile", mem, "-trace", tr}); err != nil {
		t.Fatal(err)
	}
	var stderr bytes.Buffer
	stop, err := p.start(&stderr)
	if err != nil {
		t.Fatal(err)
	}
	sink := 0
	for i := range 100000 {
		sink += len(strings.Repeat("x", i%64))
	}
	_ = sink
	stop()
	if stderr.Len() > 0 {
		t.Fatalf("stderr: %s", stderr.String())
	}
	for _, f := range []string{cpu, mem} {
		b, err := os.ReadFile(f)
		if err != nil {
			t.Fatal(err)
		}
		if len(b) < 2 || b[0] != 0x1f || b[1] != 0x8b {
			t.Errorf("%s: not a gzipped profile (%d bytes)", f, len(b))
		}
	}
	if b, err := os.ReadFile(tr); err != nil || !bytes.HasPrefix(b, []byte("go 1.")) {
		t.Errorf("%s: not an execution trace (%d bytes, %v)", tr, len(b), err)
	}
}

// A profile that cannot be written stops the run before it serves.
func TestProfileUnwritable(t *testing.T) {
	bad := filepath.Join(t.TempDir(), "missing", "cpu.pprof")
	for _, flags := range [][]string{{"-cpuprofile", bad}, {"-memprofile", bad}, {"-trace", bad}} {
		fs := flag.NewFlagSet("run", flag.ContinueOnError)
		p := profileFlags(fs)
		if err := fs.Parse(flags); err != nil {
			t.Fatal(err)
		}
		if _, err := p.start(io.Discard); err == nil || !strings.Contains(err.Error(), flags[0]) {
			t.Errorf("%v: got %v, want an error naming %s", flags, err, flags[0])
		}
	}
	var stderr bytes.Buffer
	if code := run([]string{"run", "-cpuprofile", bad}, io.Discard, &stderr); code != 1 || !strings.Contains(stderr.String(), "-cpuprofile") {
		t.Errorf("run -cpuprofile %s: exit %d, stderr %q; want 1 naming -cpuprofile", bad, code, stderr.String())
	}
}
