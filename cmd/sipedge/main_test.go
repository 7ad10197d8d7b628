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
`), 0o600)
	ctx, cancel := context.WithCancel(context.Background())
	var logs bytes.Buffer
	done := make(chan error, 1)
	go func() { done <- serve(ctx, cfg, &logs) }()
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
