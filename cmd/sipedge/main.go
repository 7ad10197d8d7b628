// Command sipedge is an edge SIP registration proxy with NAT traversal.
package main

import (
	"context"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"os"
	"os/signal"
	"runtime/debug"
	"sync"
	"syscall"
	"time"

	"github.com/emiago/sipgo/sip"
	"github.com/sipedge/sipedge/edge"
	"github.com/sipedge/sipedge/edge/clock"
	"github.com/sipedge/sipedge/nat"
)

// version is stamped by the Makefile (-ldflags -X main.version=...).
var version = "dev"

// gcPercent is the garbage collector's target unless GOGC says otherwise:
// the live heap is small (tens of MiB at 100k phones) and every SIP
// message allocates, so Go's default of 100 spent a tenth of the CPU in
// marking at 3,000 registrations/s. 200 trades some MiB of heap for about
// half of that; 400 saved more but a spoofed flood then grew the process
// by over 64 MiB.
const gcPercent = 200

func lessGC() {
	if os.Getenv("GOGC") == "" {
		debug.SetGCPercent(gcPercent)
	}
}

// holdAnswered is how long a server transaction over UDP that has sent
// its final response stays to absorb retransmissions of the request
// (Timer J), instead of RFC 3261's 64×T1 = 32 s: a phone whose answer
// was lost retransmits within T2 (4 s), and a later copy is forwarded
// again like a new request. Kamailio's tm keeps a transaction 5 s
// (wait_timer) for the same reason. At 3,000 registrations/s, 32 s held
// some 190,000 answered transactions (hundreds of MiB) that the garbage
// collector scanned again and again. sipgo reads it when a transaction
// starts: set once, in serve, before anything is served.
//
// INVITE transactions wait as long after their final answer, for the
// same reason: Timers L and M (RFC 6026, after a 2xx) and D (after an
// error) are 32 s too. A late copy of the INVITE or of its answer is
// then handled like any stray one. At 900 calls/s through the edge,
// four INVITE transactions a call held for 32 s were some 115,000
// transactions with their INVITEs and 200s: 600 MiB.
const holdAnswered = 5 * time.Second

const usage = `usage:
  sipedge run [-config FILE] [-fresh-state] [-cpuprofile FILE] [-memprofile FILE] [-trace FILE]
                                   serve (no file: built-in defaults); -fresh-state moves an
                                   unusable state file aside and starts empty instead of failing;
                                   -cpuprofile/-memprofile write pprof profiles of the run,
                                   -trace an execution trace (go tool trace)
  sipedge check-config FILE        validate a config file
  sipedge rotate-key -config FILE  new token key; the old one stays valid for core.key_grace
  sipedge state-dump -config FILE  print the saved bindings and bans (sipedge must be stopped)
  sipedge ctl [-config FILE] regs|bans|ban|unban|cores|reload
                                   ask a running sipedge (its admin API); sipedge ctl -h for more
  sipedge version, --version       print the version
  sipedge help, --help             print this
`

func main() {
	os.Exit(run(os.Args[1:], os.Stdout, os.Stderr))
}

func run(args []string, stdout, stderr io.Writer) int {
	if len(args) == 0 {
		fmt.Fprint(stderr, usage)
		return 2
	}
	switch args[0] {
	case "version", "--version", "-version":
		fmt.Fprintln(stdout, "sipedge", version)
		return 0
	case "help", "--help", "-help", "-h":
		fmt.Fprint(stdout, usage)
		return 0
	case "state-dump":
		cfg, code := configFlag(args, stderr)
		if code != 0 {
			return code
		}
		if err := dumpState(cfg.State, stdout); err != nil {
			fmt.Fprintln(stderr, err)
			return 1
		}
		return 0
	case "check-config":
		if len(args) != 2 {
			fmt.Fprint(stderr, usage)
			return 2
		}
		if _, err := loadConfig(args[1]); err != nil {
			fmt.Fprintln(stderr, err)
			return 1
		}
		fmt.Fprintln(stdout, args[1]+": ok")
		return 0
	case "rotate-key":
		cfg, code := configFlag(args, stderr)
		if code != 0 {
			return code
		}
		if _, err := nat.RotateKeys(cfg.Core.KeyFile, time.Now()); err != nil {
			fmt.Fprintln(stderr, "core.key_file:", err)
			return 1
		}
		fmt.Fprintf(stdout, "%s: new key; the previous one opens tokens for %s more (restart sipedge to use it)\n", cfg.Core.KeyFile, cfg.Core.KeyGrace)
		return 0
	case "ctl":
		return ctl(args[1:], stdout, stderr)
	case "run":
		fs := flag.NewFlagSet("run", flag.ContinueOnError)
		fs.SetOutput(stderr)
		path := fs.String("config", "", "config file (TOML)")
		fresh := fs.Bool("fresh-state", false, "move an unusable state file aside and start empty")
		prof := profileFlags(fs)
		if err := fs.Parse(args[1:]); err != nil {
			return 2
		}
		if fs.NArg() > 0 { // "sipedge run FILE" without -config would serve the defaults
			fmt.Fprintf(stderr, "unexpected argument %q (did you mean -config %s?)\n%s", fs.Arg(0), fs.Arg(0), usage)
			return 2
		}
		stopProf, err := prof.start(stderr)
		if err != nil {
			fmt.Fprintln(stderr, "sipedge:", err)
			return 1
		}
		defer stopProf()
		lessGC()
		sig := newSignals()
		defer sig.stop()
		if err := serve(sig.ctx, *path, *fresh, stderr, stdout, sig); err != nil {
			fmt.Fprintln(stderr, "sipedge:", err)
			return 1
		}
		return 0
	}
	fmt.Fprint(stderr, usage)
	return 2
}

// configFlag reads the -config FILE of a command args[0] that takes
// nothing else; a non-zero code is the exit status of a bad call (2) or
// a bad file (1), already explained on stderr.
func configFlag(args []string, stderr io.Writer) (fileConfig, int) {
	fs := flag.NewFlagSet(args[0], flag.ContinueOnError)
	fs.SetOutput(stderr)
	path := fs.String("config", "", "config file (TOML)")
	if err := fs.Parse(args[1:]); err != nil || fs.NArg() > 0 {
		fmt.Fprint(stderr, usage)
		return fileConfig{}, 2
	}
	cfg, err := loadConfig(*path)
	if err != nil {
		fmt.Fprintln(stderr, err)
		return cfg, 1
	}
	return cfg, 0
}

func serve(ctx context.Context, path string, freshState bool, logOut, stdout io.Writer, sig *signals) error {
	cfg, err := loadConfig(path)
	if err != nil {
		return err
	}
	log, level := newLogger(cfg.Log, logOut)
	// sipgo's process-wide knobs, set once here. UDP messages up to 64 KiB
	// may leave; sipgo's default (1300 B) refuses INVITEs with large SDP.
	sip.UDPMTUSize = 65535
	sip.Timer_J, sip.Timer_L, sip.Timer_M, sip.Timer_D = holdAnswered, holdAnswered, holdAnswered, holdAnswered
	sip.SetDefaultLogger(slog.New(slog.DiscardHandler))

	keys, err := nat.LoadOrCreateKeys(cfg.Core.KeyFile)
	if err != nil {
		return fmt.Errorf("core.key_file: %w", err)
	}
	signer, err := nat.NewSigner(keys, cfg.Core.KeyGrace, time.Now)
	if err != nil {
		return fmt.Errorf("core.key_file: %w", err)
	}
	if keys.Previous != nil {
		// After a rotation: until when the core's stored Paths and the
		// dialogs' Record-Routes sealed with the old key still open.
		log.Info("flow token key rotated", "file", cfg.Core.KeyFile, "rotated", keys.Rotated, "previous_key_until", keys.Rotated.Add(cfg.Core.KeyGrace))
	}
	st, snap, err := openState(cfg.State, freshState, log)
	if err != nil {
		return err
	}
	if st != nil {
		defer st.Close()
	}
	socks, err := edge.Listen(cfg.Access, cfg.Core.Listen)
	if err != nil {
		return err
	}
	auditOut := cfg.Audit.Output(stdout)
	defer auditOut.Close()
	a, err := build(cfg, socks, log, signer, clock.Real{}, st, snap, auditOut)
	if err != nil {
		socks.Close()
		return err
	}
	a.reload.path, a.reload.log, a.reload.level = path, log, level
	if sig != nil {
		sig.on(a.srv.Hurry, a.reload.reload)
	}
	log.Info("sipedge starting", "version", version)
	return a.serve(ctx)
}

// newLogger makes the process's logger; its level can change (reload).
func newLogger(c logConfig, w io.Writer) (*slog.Logger, *slog.LevelVar) {
	lv := new(slog.LevelVar)
	_ = lv.UnmarshalText([]byte(c.Level))
	opts := &slog.HandlerOptions{Level: lv}
	if c.Format == "json" {
		return slog.New(slog.NewJSONHandler(w, opts)), lv
	}
	return slog.New(slog.NewTextHandler(w, opts)), lv
}

// signals turns the process's signals into actions: the first SIGTERM
// or SIGINT drains (ctx ends), the next cuts the drain short; SIGHUP
// reloads the config (and never kills the edge).
type signals struct {
	ctx    context.Context
	cancel context.CancelFunc
	ch     chan os.Signal

	mu       sync.Mutex
	hurryFn  func()
	reloadFn func()
}

func newSignals() *signals {
	s := &signals{ch: make(chan os.Signal, 4)}
	s.ctx, s.cancel = context.WithCancel(context.Background())
	signal.Notify(s.ch, os.Interrupt, syscall.SIGTERM, syscall.SIGHUP)
	go s.watch()
	return s
}

func (s *signals) watch() {
	stops := 0
	for sg := range s.ch {
		if sg == syscall.SIGHUP {
			s.mu.Lock()
			f := s.reloadFn
			s.mu.Unlock()
			if f != nil {
				f()
			}
			continue
		}
		if stops++; stops == 1 {
			s.cancel()
			continue
		}
		s.mu.Lock()
		f := s.hurryFn
		s.mu.Unlock()
		if f != nil {
			f()
		}
	}
}

// on sets what a second stop signal and SIGHUP do.
func (s *signals) on(hurry, reload func()) {
	s.mu.Lock()
	s.hurryFn, s.reloadFn = hurry, reload
	s.mu.Unlock()
}

func (s *signals) stop() {
	signal.Stop(s.ch)
	s.cancel()
}
