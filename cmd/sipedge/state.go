package main

import (
	"errors"
	"fmt"
	"io"
	"log/slog"
	"os"
	"time"

	"github.com/sipedge/sipedge/edge/state"
)

// openState opens the [state] store and loads it, or returns nil for
// memory only. A damaged or unknown file is an error naming it unless
// fresh is set: then it is moved aside, with a warning, and the edge
// starts empty. An unreachable Redis is not fatal: the edge serves from
// memory, the writer retries and the change feed resynchronises.
func openState(cfg state.Config, fresh bool, log *slog.Logger) (state.Store, state.Snapshot, error) {
	if cfg.Backend == "redis" {
		return openRedis(cfg, log)
	}
	if cfg.Dir == "" {
		log.Info("state: memory only ([state] dir is empty); a restart forgets registrations and bans, UDP phones stay reachable by their tokens")
		return nil, state.Snapshot{}, nil
	}
	s, snap, err := loadState(cfg.Dir)
	var ce *state.CorruptError
	if errors.As(err, &ce) && fresh {
		bad, merr := state.MoveAside(cfg.Dir, time.Now())
		if merr != nil {
			return nil, snap, fmt.Errorf("%w (and moving it aside failed: %v)", err, merr)
		}
		log.Warn("state file unusable: moved aside, starting with no state", "err", err, "moved_to", bad)
		s, snap, err = loadState(cfg.Dir)
	}
	if err != nil {
		if errors.As(err, &ce) {
			err = fmt.Errorf("%w (run with -fresh-state to move it aside and start empty)", err)
		}
		return nil, snap, err
	}
	if f := s.Format(); f != state.Format {
		// Once written, the file is one older versions refuse: say so
		// before it is.
		log.Info("state file in an older format: the first write rewrites its mark, and older sipedge versions then refuse it",
			"file", s.String(), "format", f, "to", state.Format)
	}
	return s, snap, nil
}

func openRedis(cfg state.Config, log *slog.Logger) (state.Store, state.Snapshot, error) {
	id := cfg.EdgeID
	if id == "" {
		host, err := os.Hostname()
		if err != nil {
			return nil, state.Snapshot{}, fmt.Errorf("state.edge_id: empty, and no host name: %w", err)
		}
		id = host
	}
	state.QuietRedis()
	r, err := state.OpenRedis(cfg.Redis, id)
	if r == nil {
		return nil, state.Snapshot{}, err
	}
	r.SetLogger(log)
	if err != nil {
		log.Warn("state: redis unreachable at start; serving from memory until it returns", "err", err)
		return r, state.Snapshot{}, nil
	}
	snap, err := r.Load()
	if err != nil {
		log.Warn("state: redis state unreadable at start; serving from memory, the change feed resynchronises", "err", err)
		return r, state.Snapshot{}, nil
	}
	return r, snap, nil
}

func loadState(dir string) (*state.Bolt, state.Snapshot, error) {
	s, err := state.OpenBolt(dir)
	if err != nil {
		return nil, state.Snapshot{}, err
	}
	snap, err := s.Load()
	if err != nil {
		s.Close()
		return nil, state.Snapshot{}, err
	}
	return s, snap, nil
}

// dumpState prints the stored bindings and bans, one JSON object a line.
func dumpState(cfg state.Config, w io.Writer) error {
	if cfg.Backend == "redis" {
		st, snap, err := openRedis(cfg, slog.New(slog.DiscardHandler))
		if err != nil {
			return err
		}
		defer st.Close()
		return state.Dump(w, snap)
	}
	if cfg.Dir == "" {
		return errors.New("state.dir is empty: state is kept in memory only")
	}
	s, snap, err := loadState(cfg.Dir)
	if err != nil {
		return err
	}
	defer s.Close()
	return state.Dump(w, snap)
}
