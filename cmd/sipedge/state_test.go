package main

import (
	"bytes"
	"log/slog"
	"path/filepath"
	"strings"
	"testing"

	"github.com/sipedge/sipedge/edge/state"
	bolt "go.etcd.io/bbolt"
)

// A state file from before the binary format opens, and the log says that
// writing to it will leave it to this version only.
func TestStateFileOlderFormatSaid(t *testing.T) {
	dir := t.TempDir()
	db, err := bolt.Open(filepath.Join(dir, state.FileName), 0o600, nil)
	if err != nil {
		t.Fatal(err)
	}
	err = db.Update(func(tx *bolt.Tx) error {
		for _, b := range []string{"bindings", "bans"} {
			if _, err := tx.CreateBucket([]byte(b)); err != nil {
				return err
			}
		}
		meta, err := tx.CreateBucket([]byte("meta"))
		if err != nil {
			return err
		}
		return meta.Put([]byte("format"), []byte("sipedge-state/1"))
	})
	db.Close()
	if err != nil {
		t.Fatal(err)
	}
	var logs bytes.Buffer
	cfg := state.DefaultConfig()
	cfg.Dir = dir
	open := func() state.Store {
		t.Helper()
		logs.Reset()
		s, _, err := openState(cfg, false, slog.New(slog.NewTextHandler(&logs, nil)))
		if err != nil {
			t.Fatal(err)
		}
		return s
	}
	s := open()
	if !strings.Contains(logs.String(), "older format") || !strings.Contains(logs.String(), "sipedge-state/1") {
		t.Fatalf("nothing said of the older format:\n%s", logs.String())
	}
	if err := s.Write(state.Batch{}); err != nil {
		t.Fatal(err)
	}
	s.Close()
	s = open()
	defer s.Close()
	if strings.Contains(logs.String(), "older format") {
		t.Fatalf("said again after the file was written:\n%s", logs.String())
	}
}
