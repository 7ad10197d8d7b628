package main

import (
	"bytes"
	"context"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/sipedge/sipedge/nat"
	"go.uber.org/goleak"
)

func TestMain(m *testing.M) { goleak.VerifyTestMain(m) }

// serve binds, serves and, once its context ends, drains and returns with
// every goroutine gone (goleak checks that after the tests).
func TestServeStopsCleanly(t *testing.T) {
	dir := t.TempDir()
	cfg := filepath.Join(dir, "sipedge.toml")
	key := filepath.Join(dir, "state", "flow.key")
	os.WriteFile(cfg, []byte(`
[access]
udp = ["127.0.0.1:0"]
tcp = ["127.0.0.1:0"]
[core]
listen = "127.0.0.1:0"
key_file = "`+key+`"
[state]
dir = "`+filepath.Join(dir, "state")+`"
[admin]
listen = "127.0.0.1:0"
token_file = "`+filepath.Join(dir, "state", "admin.token")+`"
`), 0o600)
	ctx, cancel := context.WithCancel(context.Background())
	var logs bytes.Buffer
	done := make(chan error, 1)
	go func() { done <- serve(ctx, cfg, false, &logs, &logs, nil) }()
	cancel()
	select {
	case err := <-done:
		if err != nil {
			t.Fatal(err)
		}
	case <-time.After(10 * time.Second):
		t.Fatal("serve did not return within 10s of cancel")
	}
	st, err := os.Stat(key)
	if err != nil || st.Mode().Perm() != 0o600 {
		t.Fatalf("flow key not created 0600: %v %v", st, err)
	}
	raw, _ := os.ReadFile(key)
	if strings.Contains(logs.String(), strings.TrimSpace(string(raw))) {
		t.Fatal("the flow key appears in the log")
	}
}

// rotate-key keeps the old key as the previous one, so tokens sealed
// with it still open during core.key_grace.
func TestRotateKey(t *testing.T) {
	dir := t.TempDir()
	cfg := filepath.Join(dir, "sipedge.toml")
	key := filepath.Join(dir, "flow.key")
	if err := os.WriteFile(cfg, []byte("[core]\nkey_file = \""+key+"\"\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	first, err := nat.LoadOrCreateKeys(key)
	if err != nil {
		t.Fatal(err)
	}
	var out, errb bytes.Buffer
	if code := run([]string{"rotate-key", "-config", cfg}, &out, &errb); code != 0 {
		t.Fatalf("exit %d: %s", code, errb.String())
	}
	second, err := nat.LoadOrCreateKeys(key)
	if err != nil {
		t.Fatal(err)
	}
	if bytes.Equal(second.Current, first.Current) || !bytes.Equal(second.Previous, first.Current) || second.Rotated.IsZero() {
		t.Fatal("rotate-key did not keep the old key as the previous one")
	}
	if strings.Contains(out.String()+errb.String(), fmt.Sprintf("%x", first.Current)) {
		t.Fatal("a key was printed")
	}
}

// --version and --help answer on stdout with status 0, as packagers and
// service managers expect.
func TestVersionAndHelpFlags(t *testing.T) {
	for _, args := range [][]string{{"--version"}, {"version"}, {"--help"}, {"help"}} {
		var out, errb bytes.Buffer
		if code := run(args, &out, &errb); code != 0 || out.Len() == 0 || errb.Len() != 0 {
			t.Errorf("%v: exit %d, stdout %q, stderr %q", args, code, out.String(), errb.String())
		}
	}
}

// A damaged state file stops the start with an error naming it; with
// -fresh-state it is moved aside and the edge starts empty.
func TestDamagedStateFile(t *testing.T) {
	dir := t.TempDir()
	stateDir := filepath.Join(dir, "state")
	os.MkdirAll(stateDir, 0o700)
	db := filepath.Join(stateDir, "sipedge.db")
	os.WriteFile(db, bytes.Repeat([]byte("junk"), 4096), 0o600)
	cfg := filepath.Join(dir, "sipedge.toml")
	os.WriteFile(cfg, []byte(`
[access]
udp = ["127.0.0.1:0"]
tcp = ["127.0.0.1:0"]
[core]
listen = "127.0.0.1:0"
key_file = "`+filepath.Join(dir, "flow.key")+`"
[state]
dir = "`+stateDir+`"
[admin]
listen = ""
`), 0o600)
	var logs bytes.Buffer
	err := serve(context.Background(), cfg, false, &logs, &logs, nil)
	if err == nil || !strings.Contains(err.Error(), db) || !strings.Contains(err.Error(), "-fresh-state") {
		t.Fatalf("damaged state file: %v", err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	if err := serve(ctx, cfg, true, &logs, &logs, nil); err != nil {
		t.Fatalf("-fresh-state: %v", err)
	}
	if !strings.Contains(logs.String(), "moved aside") {
		t.Errorf("no warning about the moved file:\n%s", logs.String())
	}
	if bad, _ := filepath.Glob(db + ".bad-*"); len(bad) != 1 {
		t.Errorf("moved-aside files: %v", bad)
	}
	var out, errb bytes.Buffer
	if code := run([]string{"state-dump", "-config", cfg}, &out, &errb); code != 0 || out.Len() != 0 {
		t.Errorf("state-dump of the fresh file: exit %d, %q %q", code, out.String(), errb.String())
	}
}
