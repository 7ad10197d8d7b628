package udptx

import "github.com/emiago/sipgo/sip"

// ending is the end both kinds of transaction share: terminated once,
// Done closed, the OnTerminate hooks called. Its fields are under the
// transaction's mutex; the hooks are called after it is released.
type ending struct {
	done       chan struct{} // made once asked for: most ends nobody waits on
	terminated bool
	hooks      hooks
}

// hooks are the OnTerminate hooks: nearly always one, kept without a
// slice of its own.
type hooks struct {
	first sip.FnTxTerminate
	more  []sip.FnTxTerminate
}

func (h hooks) call(id string, err error) {
	if h.first != nil {
		h.first(id, err)
	}
	for _, f := range h.more {
		f(id, err)
	}
}

// closed is a closed channel: Done of a transaction that ended before
// anyone asked. Nothing writes to it.
var closed = func() chan struct{} {
	c := make(chan struct{})
	close(c)
	return c
}()

// doneChan is Done's channel, made now if nobody asked before.
func (e *ending) doneChan() <-chan struct{} {
	if e.done == nil {
		e.done = make(chan struct{})
	}
	return e.done
}

// closeDone closes Done's channel, once the transaction is terminated.
func (e *ending) closeDone() {
	if e.done == nil {
		e.done = closed
		return
	}
	close(e.done)
}

// terminate marks the transaction ended and returns the hooks to call
// (ok false: it had ended already). Done is closed by the caller, at the
// point its kind of transaction promises.
func (e *ending) terminate() (h hooks, ok bool) {
	if e.terminated {
		return hooks{}, false
	}
	e.terminated = true
	h, e.hooks = e.hooks, hooks{}
	return h, true
}

// hook adds f to the hooks, unless the transaction has ended (false).
func (e *ending) hook(f sip.FnTxTerminate) bool {
	if e.terminated {
		return false
	}
	if e.hooks.first == nil {
		e.hooks.first = f
	} else {
		e.hooks.more = append(e.hooks.more, f)
	}
	return true
}
