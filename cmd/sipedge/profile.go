package main

import (
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"runtime"
	"runtime/pprof"
	"runtime/trace"
)

// profiles are `sipedge run`'s -cpuprofile, -memprofile and -trace, as
// go test has them: a CPU profile of the whole run, an allocation profile
// written when sipedge stops, for `go tool pprof`, and an execution trace
// (where each goroutine waited, and on what) for `go tool trace`. The
// sipp benchmarks (compare_test.go) take them under load.
type profiles struct {
	cpu, mem, trace string
}

// profileFlags adds -cpuprofile, -memprofile and -trace to fs.
func profileFlags(fs *flag.FlagSet) *profiles {
	p := &profiles{}
	fs.StringVar(&p.cpu, "cpuprofile", "", "write a CPU profile of the run to `FILE`")
	fs.StringVar(&p.mem, "memprofile", "", "write an allocation profile to `FILE` when sipedge stops")
	fs.StringVar(&p.trace, "trace", "", "write an execution trace of the run to `FILE` (large: tens of MB a second under load)")
	return p
}

// start opens both files and starts the CPU profile: a profile asked for
// and impossible to write stops sipedge before it serves. stop ends the
// CPU profile and writes the allocation profile; what goes wrong then is
// reported on stderr.
func (p *profiles) start(stderr io.Writer) (stop func(), err error) {
	var cpu, mem, tr *os.File
	closeAll := func() {
		for _, f := range []*os.File{cpu, mem, tr} {
			if f != nil {
				f.Close()
			}
		}
	}
	if p.cpu != "" {
		if cpu, err = os.Create(p.cpu); err != nil {
			return nil, fmt.Errorf("-cpuprofile: %w", err)
		}
	}
	if p.mem != "" {
		if mem, err = os.Create(p.mem); err != nil {
			closeAll()
			return nil, fmt.Errorf("-memprofile: %w", err)
		}
	}
	if p.trace != "" {
		if tr, err = os.Create(p.trace); err != nil {
			closeAll()
			return nil, fmt.Errorf("-trace: %w", err)
		}
	}
	if cpu != nil {
		if err := pprof.StartCPUProfile(cpu); err != nil {
			closeAll()
			return nil, fmt.Errorf("-cpuprofile: %w", err)
		}
	}
	if tr != nil {
		if err := trace.Start(tr); err != nil {
			if cpu != nil {
				pprof.StopCPUProfile()
			}
			closeAll()
			return nil, fmt.Errorf("-trace: %w", err)
		}
	}
	return func() {
		if tr != nil {
			trace.Stop()
			profileErr(stderr, "-trace", tr.Close())
		}
		if cpu != nil {
			pprof.StopCPUProfile()
			profileErr(stderr, "-cpuprofile", cpu.Close())
		}
		if mem != nil {
			runtime.GC() // the profile counts what the last GC saw
			err := pprof.Lookup("allocs").WriteTo(mem, 0)
			profileErr(stderr, "-memprofile", errors.Join(err, mem.Close()))
		}
	}, nil
}

func profileErr(w io.Writer, what string, err error) {
	if err != nil {
		fmt.Fprintf(w, "sipedge: %s: %v\n", what, err)
	}
}
