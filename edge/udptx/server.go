package udptx

import (
	"bytes"
	"errors"
	"net/netip"
	"strings"
	"sync"
	"time"

	"github.com/emiago/sipgo/sip"
	"github.com/sipedge/sipedge/edge/expiry"
	"github.com/sipedge/sipedge/edge/sipwire"
)

// Server runs server transactions for non-INVITE requests read from one
// socket.
type Server struct {
	conn     Conn
	answered *expiry.Queue // Timer J: how long an answered transaction stays to answer copies
	bufs     buffers       // responses as they are written

	mu  sync.Mutex
	txs map[serverKey]*ServerTx
}

// serverKey matches a request to its transaction (RFC 3261 §17.2.3).
type serverKey struct {
	branch string
	host   string // the top Via's sent-by
	port   int
	method sip.RequestMethod
}

// NewServer answers on conn; an answered transaction is kept for timerJ
// (sipgo's Timer J, as the edge set it). Close stops it.
func NewServer(conn Conn, timerJ time.Duration) *Server {
	return &Server{conn: conn, answered: expiry.New(timerJ), txs: make(map[serverKey]*ServerTx)}
}

// Close stops s's timer; its transactions are dropped with it.
func (s *Server) Close() { s.answered.Close() }

// Receive finds or makes the transaction of req, a non-INVITE request
// (not ACK, not CANCEL) that came from src. A copy of a request already
// here is answered with its transaction's last response, or absorbed
// while it has none: isNew is false and there is nothing else to do.
// ok is false for a request without an RFC 3261 branch: sipgo matches
// those the old way.
func (s *Server) Receive(req *sip.Request, src netip.AddrPort) (tx *ServerTx, isNew, ok bool) {
	via := req.Via()
	if via == nil {
		return nil, false, false
	}
	branch, _ := via.Params.Get("branch")
	if len(branch) <= len(sip.RFC3261BranchMagicCookie) || !strings.HasPrefix(branch, sip.RFC3261BranchMagicCookie) {
		return nil, false, false
	}
	key := serverKey{branch: branch, host: via.Host, port: via.Port, method: req.Method}
	s.mu.Lock()
	if tx := s.txs[key]; tx != nil {
		s.mu.Unlock()
		tx.retransmitted()
		return tx, false, true
	}
	// The key is kept for Timer J: its own strings, not ones cut from
	// the request's datagram (sipwire.Parse), which they would keep.
	own := key.branch + key.host // one allocation for both, when both are there
	if key.host == "" {
		own = strings.Clone(key.branch) // a + "" may be a itself
	}
	key.branch, key.host, key.method = own[:len(key.branch)], own[len(key.branch):], ownMethod(key.method)
	tx = &ServerTx{s: s, key: key, src: src}
	s.txs[key] = tx
	s.mu.Unlock()
	return tx, true, true
}

// Len is how many transactions s holds.
func (s *Server) Len() int {
	s.mu.Lock()
	defer s.mu.Unlock()
	return len(s.txs)
}

func (s *Server) forget(tx *ServerTx) {
	s.mu.Lock()
	if s.txs[tx.key] == tx {
		delete(s.txs, tx.key)
	}
	s.mu.Unlock()
}

// ServerTx is one server transaction: a sip.ServerTransaction.
type ServerTx struct {
	s   *Server
	key serverKey
	src netip.AddrPort // where the request came from, and answers go

	mu    sync.Mutex
	last  []byte // the last response sent, for copies of the request
	final bool
	ending
}

var errTerminated = errors.New("udptx: transaction terminated")

// Respond sends res to where the request came from. Once a final
// response has gone, any other is discarded (RFC 3261 §17.2.2); Hold
// keeps it for copies of the request.
func (tx *ServerTx) Respond(res *sip.Response) error {
	tx.mu.Lock()
	if tx.terminated {
		tx.mu.Unlock()
		return errTerminated
	}
	if tx.final {
		tx.mu.Unlock()
		return nil
	}
	// Written in a pooled buffer, kept in one of its own size: an
	// answered transaction may hold it for Timer J.
	wire := tx.s.bufs.get()
	wire.b = sipwire.AppendResponse(wire.b, res)
	tx.last = bytes.Clone(wire.b)
	tx.final = res.StatusCode >= 200
	tx.mu.Unlock()
	_, err := tx.s.conn.WriteToUDPAddrPort(wire.b, tx.src)
	tx.s.bufs.put(wire)
	return err
}

// Hold is the end of the request's handling when its source may get
// copies answered: the final response stays for them until Timer J. A
// transaction without one ends now. The other end is Terminate: toward
// a source that may be spoofed nothing is kept, so a flood of them
// leaves nothing behind.
func (tx *ServerTx) Hold() {
	tx.mu.Lock()
	final, terminated := tx.final, tx.terminated
	tx.mu.Unlock()
	switch {
	case terminated:
	case final:
		tx.s.answered.Add(tx) // Timer J
	default:
		tx.Terminate()
	}
}

// retransmitted answers a copy of the request with the last response,
// if any (none yet: absorbed, the first copy is being handled).
func (tx *ServerTx) retransmitted() {
	tx.mu.Lock()
	last := tx.last // never written to once made
	tx.mu.Unlock()
	if last != nil {
		_, _ = tx.s.conn.WriteToUDPAddrPort(last, tx.src)
	}
}

// Terminate ends the transaction now: copies of the request that come
// later are new requests.
func (tx *ServerTx) Terminate() {
	tx.mu.Lock()
	hs, ok := tx.terminate()
	tx.last = nil
	tx.mu.Unlock()
	if !ok {
		return
	}
	tx.s.forget(tx) // before Done: a copy that follows is a new request
	tx.mu.Lock()
	tx.closeDone()
	tx.mu.Unlock()
	hs.call(tx.key.branch, nil)
}

// Expire ends the transaction once Timer J ran out (expiry.Item).
func (tx *ServerTx) Expire() { tx.Terminate() }

// Done is closed once the transaction ended.
func (tx *ServerTx) Done() <-chan struct{} {
	tx.mu.Lock()
	defer tx.mu.Unlock()
	return tx.doneChan()
}

func (tx *ServerTx) Err() error                { return nil }
func (tx *ServerTx) Acks() <-chan *sip.Request { return nil } // no INVITE here

// OnCancel never fires: CANCEL is for INVITE, which sipgo keeps.
func (tx *ServerTx) OnCancel(sip.FnTxCancel) bool { return !tx.isTerminated() }

func (tx *ServerTx) OnTerminate(f sip.FnTxTerminate) bool {
	tx.mu.Lock()
	defer tx.mu.Unlock()
	return tx.hook(f)
}

func (tx *ServerTx) isTerminated() bool {
	tx.mu.Lock()
	defer tx.mu.Unlock()
	return tx.terminated
}

var _ sip.ServerTransaction = (*ServerTx)(nil)
