// Package udptx runs RFC 3261 non-INVITE transactions over UDP sockets
// the edge owns, in place of sipgo's transaction layer, for the requests
// that make most of an edge's load: REGISTERs and their answers.
//
// sipgo's layer is written for endpoints: a goroutine, several timers
// and channels per transaction, the request kept for the transaction's
// life, every response handed through its pool and handlers. Here a
// transaction is a map entry, one timer and the bytes of its last
// response; a datagram is matched by its top Via branch before anything
// else is parsed. Both sides keep the semantics a proxy needs: request
// retransmissions absorbed or answered from the last response (§17.2.2),
// the request retransmitted on Timer E until a response and given up on
// Timer F (§17.1.2), late response copies absorbed for Timer K.
package udptx

import (
	"bytes"
	"context"
	"errors"
	"net/netip"
	"slices"
	"sync"
	"time"

	"github.com/emiago/sipgo/sip"
	"github.com/sipedge/sipedge/edge/expiry"
	"github.com/sipedge/sipedge/edge/sipwire"
)

// Conn is the socket transactions write to: a *net.UDPConn.
type Conn interface {
	WriteToUDPAddrPort(b []byte, addr netip.AddrPort) (int, error)
}

// Timers are RFC 3261's, for non-INVITE transactions over UDP.
type Timers struct {
	T1, T2 time.Duration // Timer E starts at T1 and doubles up to T2
	F      time.Duration // the request is given up (64×T1)
	K      time.Duration // late response copies are absorbed (T4)
}

// DefaultTimers are sipgo's values, read when called (the edge sets
// sipgo's timers once at start).
func DefaultTimers() Timers {
	return Timers{T1: sip.T1, T2: sip.T2, F: sip.Timer_F, K: sip.Timer_K}
}

// Client runs client transactions from one socket. Responses reach it
// through Receive, from the socket's read loop.
type Client struct {
	conn   Conn
	timers Timers
	parser *sip.Parser // used from the read loop only

	mu     sync.Mutex
	txs    map[string]*ClientTx // by the branch of the edge's Via
	closed bool

	answered *expiry.Queue // Timer K
	bufs     buffers       // the requests' bytes, kept until answered
	sparse   []sip.RequestMethod
}

// ErrClosed ends the transactions of a closed Client.
var ErrClosed = errors.New("udptx: client closed")

// Close ends every transaction with ErrClosed (their readers return at
// once, as sipgo's do when its user agent closes); Start fails after.
func (c *Client) Close() {
	c.mu.Lock()
	c.closed = true
	txs := make([]*ClientTx, 0, len(c.txs))
	for _, tx := range c.txs {
		txs = append(txs, tx)
	}
	c.mu.Unlock()
	for _, tx := range txs {
		tx.end(ErrClosed)
	}
	c.answered.Close()
}

// NewClient sends from conn. Close stops it.
func NewClient(conn Conn, t Timers) *Client {
	return &Client{conn: conn, timers: t, parser: sip.NewParser(), txs: make(map[string]*ClientTx), answered: expiry.New(t.K)}
}

// SetSparse names the methods whose answers the caller reads no further
// than sipwire.ParseSparse parses (the first Via line, CSeq, Contact,
// Expires, Content-Length): their other headers reach it, and go on, as
// written. Called before the first Start.
func (c *Client) SetSparse(methods ...sip.RequestMethod) { c.sparse = methods }

// Start sends req, prepared with the edge's Via (and its branch) on top,
// to dest, and returns its transaction: retransmitted on Timer E until a
// response comes, timed out on Timer F. A request that cannot be sent is
// an error, as with sipgo's client.
func (c *Client) Start(ctx context.Context, req *sip.Request, dest netip.AddrPort) (sip.ClientTransaction, error) {
	return c.start(ctx, req, dest, nil, nil)
}

// StartNotify is Start for a caller that does not wait: each response
// is handed to onResponse on the goroutine that read it (the socket's
// read loop, so onResponse must not block), in order, instead of to
// Responses; onEnd is called when the transaction ends without a final
// response, with why (sip.ErrTransactionTimeout on Timer F, ErrClosed,
// nil when it was terminated), unless the request could not be sent:
// that is Start's error, and nothing is called. Once the final response
// is handed on, the transaction keeps neither callback (it stays for
// Timer K, and the caller is done).
func (c *Client) StartNotify(ctx context.Context, req *sip.Request, dest netip.AddrPort,
	onResponse func(*sip.Response), onEnd sip.FnTxTerminate) (sip.ClientTransaction, error) {
	return c.start(ctx, req, dest, onResponse, onEnd)
}

func (c *Client) start(ctx context.Context, req *sip.Request, dest netip.AddrPort,
	onResponse func(*sip.Response), onEnd sip.FnTxTerminate) (sip.ClientTransaction, error) {
	if err := ctx.Err(); err != nil {
		return nil, err
	}
	via := req.Via()
	if via == nil || req.CSeq() == nil {
		return nil, errors.New("udptx: request without Via or CSeq")
	}
	branch, _ := via.Params.Get("branch")
	if branch == "" {
		return nil, errors.New("udptx: request without a branch")
	}
	// The branch is the edge's own, made for this request; the method
	// may be cut from the phone's datagram, which Timer K must not keep.
	tx := &ClientTx{c: c, branch: branch, method: ownMethod(req.CSeq().MethodName), dest: dest,
		notify: onResponse, interval: c.timers.T1}
	if onResponse == nil {
		tx.responses = make(chan *sip.Response, responseBuffer)
	}
	if name := req.MessageData.Destination(); name != "" {
		if ap, err := netip.ParseAddrPort(name); err == nil && ap == dest {
			tx.destName = name
		}
	}
	tx.wire = c.bufs.get()
	tx.wire.b = sipwire.AppendRequest(tx.wire.b, req)
	tx.started = time.Now()
	c.mu.Lock()
	if c.closed {
		c.mu.Unlock()
		return nil, ErrClosed
	}
	if _, dup := c.txs[branch]; dup {
		c.mu.Unlock()
		return nil, errors.New("udptx: a transaction with this branch is running")
	}
	c.txs[branch] = tx
	tx.mu.Lock()
	tx.timer = time.AfterFunc(tx.interval, tx.tick) // set before any answer can come
	c.mu.Unlock()
	if err := tx.send(); err != nil {
		tx.end(err)
		return nil, err
	}
	if onEnd != nil {
		// Hooked after the send (a request not sent calls nothing), so
		// what happened during it counts: a final answer needs no hook,
		// an end (the client closing) is told at once.
		tx.mu.Lock()
		ended, why := !tx.final && !tx.hook(onEnd), tx.err
		tx.mu.Unlock()
		if ended {
			onEnd(tx.branch, why)
		}
	}
	return tx, nil
}

// Receive takes a datagram from src that may answer one of c's
// transactions. It reports whether the datagram was one of theirs (then
// consumed); anything else is left for sipgo. An answer is taken from
// the transaction's destination, or from anywhere the caller vouches
// for (trusted: one of the cores, which may answer from another of its
// addresses); from anyone else it is not the core's answer.
func (c *Client) Receive(b []byte, src netip.AddrPort, trusted bool) bool {
	if !bytes.HasPrefix(b, []byte("SIP/2.0 ")) {
		return false
	}
	branch, ok := topBranch(b)
	if !ok {
		return false
	}
	c.mu.Lock()
	tx := c.txs[string(branch)] // no allocation: the compiler keys by the bytes
	c.mu.Unlock()
	if tx == nil || tx.dest != src && !trusted {
		return false
	}
	parse := sipwire.Parse
	if slices.Contains(c.sparse, tx.method) {
		parse = sipwire.ParseSparse
	}
	msg, err := parse(c.parser, b) // nothing of an answer is kept past its relay
	if err != nil {
		return true // a broken copy of an answer of ours: nothing to learn
	}
	res, ok := msg.(*sip.Response)
	if !ok || res.CSeq() == nil || res.CSeq().MethodName != tx.method {
		return true
	}
	res.SetTransport("UDP")
	if src == tx.dest && tx.destName != "" {
		res.SetSource(tx.destName)
	} else {
		res.SetSource(src.String())
	}
	tx.receive(res)
	return true
}

func (c *Client) forget(tx *ClientTx) {
	c.mu.Lock()
	if c.txs[tx.branch] == tx {
		delete(c.txs, tx.branch)
	}
	c.mu.Unlock()
}

// Len is how many transactions c holds (running or absorbing).
func (c *Client) Len() int {
	c.mu.Lock()
	defer c.mu.Unlock()
	return len(c.txs)
}

// responseBuffer is how many responses a transaction holds for its
// reader. Only provisional ones can be more than one; past that many they
// are dropped (a proxy passes the latest on anyway), a final never is.
const responseBuffer = 8

// ClientTx is one client transaction: a sip.ClientTransaction.
type ClientTx struct {
	c         *Client
	branch    string
	method    sip.RequestMethod
	dest      netip.AddrPort
	destName  string              // dest as the request named it, for answers from there
	wire      *buffer             // the request as sent (nil once answered or given up)
	sending   int                 // sends of wire under way, outside mu
	responses chan *sip.Response  // nil when notify takes them
	notify    func(*sip.Response) // StartNotify's onResponse

	mu       sync.Mutex
	started  time.Time
	interval time.Duration // Timer E's next interval
	timer    *time.Timer
	answered bool // a provisional response came: retransmit at T2
	final    bool // a final response came: completed
	err      error
	ending
}

// tick is Timer E: send the request again, until Timer F.
func (tx *ClientTx) tick() {
	tx.mu.Lock()
	if tx.final || tx.terminated {
		tx.mu.Unlock()
		return
	}
	if time.Since(tx.started) >= tx.c.timers.F {
		tx.mu.Unlock()
		tx.end(sip.ErrTransactionTimeout)
		return
	}
	if tx.answered {
		tx.interval = tx.c.timers.T2
	} else {
		tx.interval = min(2*tx.interval, tx.c.timers.T2)
	}
	next := min(tx.interval, tx.c.timers.F-time.Since(tx.started))
	tx.timer.Reset(next)
	_ = tx.send() // a lost copy is what retransmission is for
}

// send sends the request once more; called with mu held, returns with it
// released. The write is done without mu: a sendto can lose the CPU to
// the core it wakes, and the core's answer, read meanwhile on the other
// read loop, must not wait for it (under mu, that wait put the mutex
// into starvation mode and stalled both loops). The buffer stays out of
// the pool until the last send of it is over (release).
func (tx *ClientTx) send() error {
	wire := tx.wire
	tx.sending++
	tx.mu.Unlock()
	_, err := tx.c.conn.WriteToUDPAddrPort(wire.b, tx.dest)
	tx.mu.Lock()
	if tx.sending--; tx.sending == 0 && tx.wire == nil {
		tx.c.bufs.put(wire) // released while it was being sent
	}
	tx.mu.Unlock()
	return err
}

// release gives the request's buffer back to the pool, or, while it is
// being sent, leaves that to send. Called with mu held.
func (tx *ClientTx) release() {
	if tx.sending == 0 {
		tx.c.bufs.put(tx.wire)
	}
	tx.wire = nil
}

func (tx *ClientTx) receive(res *sip.Response) {
	tx.mu.Lock()
	if tx.final || tx.terminated {
		tx.mu.Unlock()
		return
	}
	final := res.StatusCode >= 200
	if tx.final = final; final {
		// Completed: the branch stays known for Timer K, so the core's
		// copies of this answer are absorbed here.
		tx.release()
		tx.timer.Stop()
	} else {
		tx.answered = true
	}
	notify := tx.notify
	if final && notify != nil {
		// The caller is done with the transaction once it has the final
		// answer: what waits for Timer K keeps nothing of the caller's.
		tx.notify, tx.hooks = nil, hooks{}
	}
	tx.mu.Unlock()
	if final {
		tx.c.answered.Add(tx) // Timer K
	}
	if notify != nil {
		notify(res)
		return
	}
	select {
	case tx.responses <- res:
	default:
		// Only provisionals can find the buffer full: see responseBuffer.
	}
}

// Expire ends the transaction once Timer K ran out (expiry.Item).
func (tx *ClientTx) Expire() { tx.end(nil) }

// end terminates tx with err (nil: normally) and forgets its branch.
func (tx *ClientTx) end(err error) {
	tx.mu.Lock()
	tx.timer.Stop()
	tx.mu.Unlock()
	tx.c.forget(tx) // before Done: nothing is taken for tx after it
	tx.finish(err)
}

// finish ends tx for its reader: Done closes, Err says why.
func (tx *ClientTx) finish(err error) {
	tx.mu.Lock()
	hs, ok := tx.terminate()
	if !ok {
		tx.mu.Unlock()
		return
	}
	tx.err = err
	tx.release()
	tx.closeDone()
	tx.mu.Unlock()
	hs.call(tx.branch, err)
}

// Done is closed once the transaction ended.
func (tx *ClientTx) Done() <-chan struct{} {
	tx.mu.Lock()
	defer tx.mu.Unlock()
	return tx.doneChan()
}

// Terminate ends the transaction. Once a final answer came, its branch
// stays known until Timer K, so the core's copies of it are absorbed.
func (tx *ClientTx) Terminate() {
	tx.mu.Lock()
	final := tx.final
	tx.mu.Unlock()
	if final {
		tx.finish(nil)
		return
	}
	tx.end(nil)
}

func (tx *ClientTx) Responses() <-chan *sip.Response { return tx.responses }

func (tx *ClientTx) Err() error {
	tx.mu.Lock()
	defer tx.mu.Unlock()
	return tx.err
}

// OnRetransmission is for INVITE 2xx copies: never for these.
func (tx *ClientTx) OnRetransmission(sip.FnTxResponse) bool { return false }

func (tx *ClientTx) OnTerminate(f sip.FnTxTerminate) bool {
	tx.mu.Lock()
	defer tx.mu.Unlock()
	return tx.hook(f)
}
