package state

import (
	"encoding/binary"
	"errors"
	"fmt"
	"hash/fnv"
	"os"
	"path/filepath"
	"runtime/debug"
	"time"

	bolt "go.etcd.io/bbolt"
	bolterr "go.etcd.io/bbolt/errors"
)

// FileName is the state file inside [state] dir.
const FileName = "sipedge.db"

// format names the layout below; a file with another is refused.
// Format 1 held bindings as JSON; 2 writes them binary (bincodec.go) and
// still reads JSON. A format 1 file is read as it is and marked 2 by the
// first write, the one that can put a binary record in it: until then
// (a state-dump, a start that wrote nothing) an older sipedge can still
// use it.
const (
	Format   = "sipedge-state/2" // what this sipedge writes
	formatV1 = "sipedge-state/1"
)

var (
	bucketMeta     = []byte("meta")
	bucketBindings = []byte("bindings") // AOR NUL ID -> appendBinding's record (or bindingRecord JSON)
	bucketBans     = []byte("bans")     // prefix -> banRecord JSON
	keyFormat      = []byte("format")
	keySaved       = []byte("saved") // RFC 3339 with nanoseconds
)

// Bolt is a Store in one bbolt file: embedded, one process at a time
// (the file is locked while open).
type Bolt struct {
	db   *bolt.DB
	path string
	mark string // the format the file says it is in (Write's, the one writer's, once open)
}

// OpenBolt opens or creates the state file in dir. A file that is not a
// sipedge state file, or is damaged, is an error naming it, as is one
// another process holds.
func OpenBolt(dir string) (*Bolt, error) {
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return nil, fmt.Errorf("state dir: %w", err)
	}
	path := filepath.Join(dir, FileName)
	if err := precheck(path); err != nil {
		return nil, &CorruptError{Path: path, Err: err}
	}
	db, err := guarded(func() (*bolt.DB, error) {
		return bolt.Open(path, 0o600, &bolt.Options{Timeout: time.Second})
	})
	switch {
	case errors.Is(err, bolterr.ErrTimeout):
		return nil, fmt.Errorf("state file %s is locked: is another sipedge using it?", path)
	case err != nil:
		return nil, &CorruptError{Path: path, Err: err}
	}
	s := &Bolt{db: db, path: path}
	if _, err := guarded(func() (struct{}, error) { return struct{}{}, db.Update(s.init) }); err != nil {
		db.Close()
		return nil, &CorruptError{Path: path, Err: err}
	}
	return s, nil
}

// init marks a new file with the format, and refuses one of another.
func (s *Bolt) init(tx *bolt.Tx) error {
	meta := tx.Bucket(bucketMeta)
	if meta == nil {
		if tx.Bucket(bucketBindings) != nil || tx.Bucket(bucketBans) != nil {
			return errors.New("no format mark")
		}
		var err error
		if meta, err = tx.CreateBucket(bucketMeta); err != nil {
			return err
		}
		if err := meta.Put(keyFormat, []byte(Format)); err != nil {
			return err
		}
		s.mark = Format
	} else if f := string(meta.Get(keyFormat)); f != Format && f != formatV1 {
		return fmt.Errorf("unknown format %q (this sipedge reads %q)", f, Format)
	} else {
		s.mark = f
	}
	for _, b := range [][]byte{bucketBindings, bucketBans} {
		if _, err := tx.CreateBucketIfNotExists(b); err != nil {
			return err
		}
	}
	return nil
}

// CorruptError is a state file that cannot be used.
type CorruptError struct {
	Path string
	Err  error
}

func (e *CorruptError) Error() string { return "state file " + e.Path + ": " + e.Err.Error() }
func (e *CorruptError) Unwrap() error { return e.Err }

func (s *Bolt) String() string { return s.path }

// Load reads the whole file. Its reads run here, under guarded (bbolt's
// own Check would walk the pages on a goroutine of its own, where a
// fault on a damaged page cannot be caught).
func (s *Bolt) Load() (Snapshot, error) {
	snap, err := guarded(s.load)
	if err != nil {
		return Snapshot{}, &CorruptError{Path: s.path, Err: err}
	}
	return snap, nil
}

func (s *Bolt) load() (Snapshot, error) {
	var snap Snapshot
	err := s.db.View(func(tx *bolt.Tx) error {
		if v := tx.Bucket(bucketMeta).Get(keySaved); v != nil {
			if err := snap.Saved.UnmarshalText(v); err != nil {
				return fmt.Errorf("saved time: %w", err)
			}
		}
		err := tx.Bucket(bucketBindings).ForEach(func(k, v []byte) error {
			b, err := decodeBinding(v)
			if err != nil {
				return fmt.Errorf("binding %q: %w", k, err)
			}
			snap.Bindings = append(snap.Bindings, b)
			return nil
		})
		if err != nil {
			return err
		}
		return tx.Bucket(bucketBans).ForEach(func(k, v []byte) error {
			b, err := decodeBan(v)
			if err != nil {
				return fmt.Errorf("ban %q: %w", k, err)
			}
			snap.Bans = append(snap.Bans, b)
			return nil
		})
	})
	return snap, err
}

// guarded runs f, turning a fault in the memory-mapped file (a damaged
// page pointing past its end) into an error instead of a crash.
func guarded[T any](f func() (T, error)) (v T, err error) {
	defer debug.SetPanicOnFault(debug.SetPanicOnFault(true))
	defer func() {
		if p := recover(); p != nil {
			err = fmt.Errorf("damaged: %v", p)
		}
	}()
	return f()
}

// precheck reads the file's two meta pages (bbolt's layout: a 16-byte
// page header, then magic, version, page size, flags, root, sequence,
// freelist, high-water page, txid, checksum) and refuses a file shorter
// than the pages its newest valid meta claims: bbolt would map past its
// end. A missing or empty file is fine: bbolt makes a new one.
func precheck(path string) error {
	b, err := os.ReadFile(path)
	if errors.Is(err, os.ErrNotExist) || err == nil && len(b) == 0 {
		return nil
	}
	if err != nil {
		return err
	}
	const magic, metaOff = 0xED0CDAED, 16
	var best struct{ txid, pages, size uint64 }
	for off := 0; off < 2; off++ {
		if len(b) < metaOff+64 {
			break
		}
		pageSize := uint64(binary.LittleEndian.Uint32(b[metaOff+8:]))
		at := uint64(off) * pageSize
		if off == 1 && (pageSize < 512 || at+metaOff+64 > uint64(len(b))) {
			break
		}
		m := b[at+metaOff:]
		if binary.LittleEndian.Uint32(m) != magic {
			continue
		}
		h := fnv.New64a()
		h.Write(m[:56])
		if h.Sum64() != binary.LittleEndian.Uint64(m[56:]) {
			continue
		}
		if txid := binary.LittleEndian.Uint64(m[48:]); best.size == 0 || txid > best.txid {
			best.txid, best.pages, best.size = txid, binary.LittleEndian.Uint64(m[40:]), uint64(binary.LittleEndian.Uint32(m[8:]))
		}
	}
	switch {
	case best.size == 0:
		return errors.New("not a state file (no valid meta page)")
	case best.pages*best.size > uint64(len(b)):
		return fmt.Errorf("truncated: %d bytes, its pages need %d", len(b), best.pages*best.size)
	}
	return nil
}

// Format is the format the file says it is in: "sipedge-state/1" for an
// older file until the first write marks it "sipedge-state/2".
func (s *Bolt) Format() string { return s.mark }

// Write applies b in one transaction (one fsync).
func (s *Bolt) Write(b Batch) error {
	err := s.db.Update(func(tx *bolt.Tx) error {
		if s.mark != Format {
			if err := tx.Bucket(bucketMeta).Put(keyFormat, []byte(Format)); err != nil {
				return err
			}
		}
		bs := tx.Bucket(bucketBindings)
		var buf []byte
		for _, d := range b.Delete {
			if err := bs.Delete(bindingKey(d)); err != nil {
				return err
			}
		}
		for _, p := range b.Put {
			// bbolt keeps the value it is given until the commit.
			buf = appendBinding(buf[len(buf):], p)
			if err := bs.Put(bindingKey(p), buf); err != nil {
				return err
			}
		}
		if b.BansSet {
			if err := tx.DeleteBucket(bucketBans); err != nil {
				return err
			}
			bans, err := tx.CreateBucket(bucketBans)
			if err != nil {
				return err
			}
			for _, ban := range b.Bans {
				v, err := encodeBan(ban)
				if err != nil {
					return err
				}
				if err := bans.Put([]byte(ban.Addr.String()), v); err != nil {
					return err
				}
			}
		}
		saved, err := b.Saved.MarshalText()
		if err != nil {
			return err
		}
		return tx.Bucket(bucketMeta).Put(keySaved, saved)
	})
	if err == nil {
		s.mark = Format
	}
	return err
}

// Close closes the file.
func (s *Bolt) Close() error { return s.db.Close() }

// Size is the file's size in bytes.
func (s *Bolt) Size() int64 {
	var n int64
	_ = s.db.View(func(tx *bolt.Tx) error { n = tx.Size(); return nil })
	return n
}

// MoveAside renames a damaged state file out of the way (to
// sipedge.db.bad-UNIXTIME) and returns the new name, for a fresh start.
func MoveAside(dir string, now time.Time) (string, error) {
	path := filepath.Join(dir, FileName)
	bad := fmt.Sprintf("%s.bad-%d", path, now.Unix())
	return bad, os.Rename(path, bad)
}

type boltTx = bolt.Tx
