package udptx

import "github.com/emiago/sipgo/sip"

// ending is the end both kinds of transaction share: terminated once,
// Done closed, the OnTerminate hooks called. Its fields are under the
// transaction's mutex; the hooks are called after it is released.
type ending struct {
	done       chan struct{}
	terminated bool
	hooks      []sip.FnTxTerminate
}

func newEnding() ending { return ending{done: make(chan struct{})} }

// terminate marks the transaction ended and returns the hooks to call
// (ok false: it had ended already). Done is closed by the caller, at the
// point its kind of transaction promises.
func (e *ending) terminate() (hooks []sip.FnTxTerminate, ok bool) {
	if e.terminated {
		return nil, false
	}
	e.terminated = true
	hooks, e.hooks = e.hooks, nil
	return hooks, true
}

// hook adds f to the hooks, unless the transaction has ended (false).
func (e *ending) hook(f sip.FnTxTerminate) bool {
	if e.terminated {
		return false
	}
	e.hooks = append(e.hooks, f)
	return true
}

func (e *ending) Done() <-chan struct{} { return e.done }
