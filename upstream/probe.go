package upstream

import (
	"context"
	"errors"
	"sync"
	"time"
)

// ProbeFunc asks one core whether it is there (an OPTIONS, say) and
// returns its final status, or an error when it did not answer. It must
// give up when ctx is done.
type ProbeFunc func(ctx context.Context, t Target) (status int, err error)

// maxProbes bounds the probes in flight at once, however many cores.
const maxProbes = 16

// Probe probes every target every core.health_interval until ctx is
// done, and Reports each answer as ReportAnswer does. A reload that
// changes the interval takes effect at once; an interval of 0 stops
// probing until a reload sets one (health then changes only by Report
// from forwarding). The first round is one interval after the start:
// targets start up. Ticks come from WithTicker's source, or the system
// clock.
func (p *Pool) Probe(ctx context.Context, probe ProbeFunc) {
	p.every(ctx, func(s *poolSet) time.Duration { return s.interval }, func() {
		p.ProbeOnce(ctx, probe)
		if p.afterRound != nil {
			p.afterRound()
		}
	})
}

// every runs round on a ticker of the period the current set asks for
// (0: none) until ctx is done. A reload that changes the period takes
// effect at once; one that keeps it keeps the ticker's phase.
func (p *Pool) every(ctx context.Context, period func(*poolSet) time.Duration, round func()) {
	var (
		every time.Duration
		tick  <-chan time.Time
		stop  = func() {}
	)
	defer func() { stop() }()
	for {
		s := p.set.Load()
		if want := period(s); want != every {
			stop()
			every, tick, stop = want, nil, func() {}
			if every > 0 {
				tick, stop = p.newTicker(every)
			}
		}
		select {
		case <-ctx.Done():
			return
		case <-s.replaced:
		case <-tick:
			round()
		}
	}
}

// ProbeOnce probes every target once, at most maxProbes at a time, each
// within core.health_timeout, Reports the answers and returns when all
// are in. Probes cut short by ctx itself (shutting down) report
// nothing: leaving is no sign of the cores' health.
func (p *Pool) ProbeOnce(ctx context.Context, probe ProbeFunc) {
	s := p.set.Load()
	slots := make(chan struct{}, min(len(s.targets), maxProbes))
	var wg sync.WaitGroup
	for _, t := range s.targets {
		select {
		case slots <- struct{}{}:
		case <-ctx.Done():
		}
		if ctx.Err() != nil {
			break
		}
		wg.Add(1)
		go func() {
			defer wg.Done()
			defer func() { <-slots }()
			started := time.Now()
			pctx, cancel := context.WithTimeout(ctx, s.timeout)
			status, err := probe(pctx, t)
			late := pctx.Err()
			cancel()
			if ctx.Err() != nil {
				return
			}
			if err == nil && late != nil {
				err = errors.New("upstream: probe answered after health_timeout")
			}
			p.ReportTry(t, started, status, err)
		}()
	}
	wg.Wait()
}
