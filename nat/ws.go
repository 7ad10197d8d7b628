package nat

import (
	"bufio"
	"bytes"
	"crypto/sha1"
	"encoding/base64"
	"encoding/binary"
	"errors"
	"fmt"
	"net"
	"net/http"
	"slices"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/emiago/sipgo/sip"
	"github.com/gobwas/ws"
)

// NewWSListener is NewListener for a WebSocket listener (t WS or WSS;
// for another transport it is NewListener) that does the WebSocket
// work sipgo's ServeWS gets wrong, so that ServeWS can run on top of it
// unchanged:
//
//   - The opening handshake is done off sipgo's accept loop, one goroutine
//     per connection within HeaderTimeout, and its request is capped at
//     MaxHeaderBytes: Accept returns only upgraded connections, and a
//     silent client delays no other. A client that does not offer the
//     "sip" subprotocol is refused with 400 (RFC 7118 §4); a failed
//     handshake fires OnClose with why "handshake".
//   - sipgo then upgrades a request made up for it and its 101 response is
//     swallowed; the client saw the real one.
//   - From the client, text and binary messages, fragmented or not, reach
//     sipgo each as one text frame. Each read from the client fires
//     OnRead. Pings are answered with a pong of the same payload, then
//     OnPing; pongs are only traffic; a Close is answered with a Close of
//     the same status code before the TCP close (why "eof"). A protocol
//     error is answered with Close 1002 (why "protocol"), a message over
//     MaxHeaderBytes+MaxBodyBytes, or over what sipgo can read whole
//     (sip.TransportBufferReadSize), with Close 1009 (why "too large").
//     Origin and the UTF-8 of text frames are not checked.
//   - A message that sipgo's parser would fail on its start-line, header
//     lines or Content-Length is dropped, as sipgo would close the
//     connection for it. One that fails only in a header sipgo parses
//     further (Via, CSeq...) is not caught, and still ends it.
//   - Each message (or control frame) must arrive within HeaderTimeout of
//     its first byte; any byte from the client is activity for
//     IdleTimeout.
//
// sipgo's frames to the client pass unchanged.
func NewWSListener(inner net.Listener, t Transport, hooks StreamHooks) *Listener {
	l := NewListener(inner, t, hooks)
	if t == WS || t == WSS {
		l.ws = &wsShim{l: l, ready: make(chan *Conn), stopped: make(chan struct{}), pending: make(map[*Conn]struct{})}
	}
	return l
}

// wsShim runs a WebSocket Listener's accept loop and handshakes.
type wsShim struct {
	l       *Listener
	ready   chan *Conn    // upgraded connections, for Accept
	stopped chan struct{} // closed once the accept loop ended, with err set
	err     error         // why the accept loop ended

	mu      sync.Mutex
	started bool
	closed  bool
	pending map[*Conn]struct{} // in their handshake
	wg      sync.WaitGroup     // the accept loop and the handshakes
}

// accept starts the accept loop on first use and returns the next
// upgraded connection.
func (s *wsShim) accept() (net.Conn, error) {
	s.mu.Lock()
	if s.closed {
		s.mu.Unlock()
		return nil, net.ErrClosed
	}
	if !s.started {
		s.started = true
		s.wg.Add(1)
		go s.loop()
	}
	s.mu.Unlock()
	select {
	case c := <-s.ready:
		return c, nil
	case <-s.stopped:
		return nil, s.err
	}
}

func (s *wsShim) loop() {
	defer s.wg.Done()
	for {
		c, err := s.l.accept()
		if err != nil {
			s.err = err
			close(s.stopped)
			return
		}
		s.mu.Lock()
		if s.closed {
			s.mu.Unlock()
			c.Close()
			continue
		}
		s.pending[c] = struct{}{}
		s.wg.Add(1)
		s.mu.Unlock()
		go s.handshake(c)
	}
}

// handshake upgrades c and hands it to Accept, or closes it.
func (s *wsShim) handshake(c *Conn) {
	defer s.wg.Done()
	w, err := upgrade(c)
	s.mu.Lock()
	delete(s.pending, c)
	closed := s.closed
	s.mu.Unlock()
	if err != nil || closed {
		why := "handshake"
		if closed {
			why = "closed"
		}
		c.fireClose(why)
		c.inner.Close()
		return
	}
	c.ws = w
	select {
	case s.ready <- c:
	case <-s.stopped:
		c.Close()
	}
}

// close, after the inner listener's, closes the connections still in
// their handshake and waits for every goroutine the shim started.
func (s *wsShim) close() {
	s.mu.Lock()
	s.closed = true
	for c := range s.pending {
		c.inner.Close()
	}
	s.mu.Unlock()
	s.wg.Wait()
}

// wsUpgradeRequest is what sipgo's ServeWS upgrades.
const wsUpgradeRequest = "GET / HTTP/1.1\r\n" +
	"Host: sipedge\r\n" +
	"Upgrade: websocket\r\n" +
	"Connection: Upgrade\r\n" +
	"Sec-WebSocket-Version: 13\r\n" +
	"Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n" +
	"Sec-WebSocket-Protocol: sip\r\n\r\n"

var errHandshake = errors.New("nat: WebSocket handshake refused")

// upgrade reads the client's opening handshake from c, within the read
// deadline newConn armed, and answers it: 101 with the sip subprotocol,
// or an error status. Bytes the client sent after its request are kept
// for the frame reader.
func upgrade(c *Conn) (*wsConn, error) {
	lim := &c.l.limits
	buf := make([]byte, 0, min(wsBufSize, lim.MaxHeaderBytes))
	end := -1
	for end < 0 {
		if len(buf) == cap(buf) {
			if len(buf) >= lim.MaxHeaderBytes {
				return nil, refuse(c, http.StatusRequestHeaderFieldsTooLarge, "")
			}
			buf = slices.Grow(buf, min(cap(buf), lim.MaxHeaderBytes-cap(buf)))
		}
		n, err := c.inner.Read(buf[len(buf):cap(buf)])
		from := max(len(buf)-3, 0)
		buf = buf[:len(buf)+n]
		if i := bytes.Index(buf[from:], []byte("\r\n\r\n")); i >= 0 {
			end = from + i + 4
		} else if err != nil {
			return nil, err
		}
	}
	req, err := http.ReadRequest(bufio.NewReader(bytes.NewReader(buf[:end])))
	if err != nil {
		return nil, refuse(c, http.StatusBadRequest, "")
	}
	key, status := checkUpgrade(req)
	switch status {
	case http.StatusSwitchingProtocols:
	case http.StatusUpgradeRequired:
		return nil, refuse(c, status, "Sec-WebSocket-Version: 13\r\n")
	default:
		return nil, refuse(c, status, "")
	}
	if err := writeHandshake(c, "HTTP/1.1 101 Switching Protocols\r\n"+
		"Upgrade: websocket\r\n"+
		"Connection: Upgrade\r\n"+
		"Sec-WebSocket-Accept: "+acceptKey(key)+"\r\n"+
		"Sec-WebSocket-Protocol: sip\r\n\r\n"); err != nil {
		return nil, err
	}
	w := &wsConn{c: c, out: []byte(wsUpgradeRequest)}
	w.max = min(lim.MaxHeaderBytes+lim.MaxBodyBytes, int(sip.TransportBufferReadSize), sip.ParseMaxMessageLength)
	if rest := buf[end:]; len(rest) > 0 {
		w.rbuf = append([]byte(nil), rest...)
		w.rend = len(rest)
	}
	return w, nil
}

// checkUpgrade checks an opening handshake (RFC 6455 §4.2.1) offering
// the sip subprotocol (RFC 7118 §4) and returns its key and 101, or the
// status to refuse it with.
func checkUpgrade(req *http.Request) (key string, status int) {
	h := req.Header
	switch {
	case req.Method != http.MethodGet || !req.ProtoAtLeast(1, 1) || req.Host == "",
		!hasToken(h, "Upgrade", "websocket", false), !hasToken(h, "Connection", "upgrade", false):
		return "", http.StatusBadRequest
	case h.Get("Sec-WebSocket-Version") != "13":
		return "", http.StatusUpgradeRequired
	case !hasToken(h, "Sec-WebSocket-Protocol", "sip", true):
		return "", http.StatusBadRequest
	}
	key = h.Get("Sec-WebSocket-Key")
	if k, err := base64.StdEncoding.DecodeString(key); err != nil || len(k) != 16 || len(h.Values("Sec-WebSocket-Key")) != 1 {
		return "", http.StatusBadRequest
	}
	return key, http.StatusSwitchingProtocols
}

// hasToken reports whether a comma-separated list in header name holds
// token; subprotocols compare case-sensitively, other tokens do not.
func hasToken(h http.Header, name, token string, exact bool) bool {
	for _, v := range h.Values(name) {
		for t := range strings.SplitSeq(v, ",") {
			t = strings.TrimSpace(t)
			if t == token || !exact && strings.EqualFold(t, token) {
				return true
			}
		}
	}
	return false
}

func acceptKey(key string) string {
	sum := sha1.Sum([]byte(key + "258EAFA5-E914-47DA-95CA-C5AB0DC85B11"))
	return base64.StdEncoding.EncodeToString(sum[:])
}

// refuse answers a handshake with status and returns errHandshake.
func refuse(c *Conn, status int, header string) error {
	_ = writeHandshake(c, fmt.Sprintf("HTTP/1.1 %d %s\r\n%sConnection: close\r\nContent-Length: 0\r\n\r\n", status, http.StatusText(status), header))
	return errHandshake
}

// writeHandshake writes a handshake response within HeaderTimeout.
func writeHandshake(c *Conn, resp string) error {
	if err := c.inner.SetWriteDeadline(time.Now().Add(c.l.limits.HeaderTimeout)); err != nil {
		return err
	}
	if _, err := c.inner.Write([]byte(resp)); err != nil {
		return err
	}
	return c.inner.SetWriteDeadline(time.Time{})
}

const (
	// wsBufSize is what a connection's buffers are kept to between
	// messages.
	wsBufSize = 4 << 10
	// wsRoom is the room kept before a message for its frame header to
	// sipgo: 2 bytes, 8 of length, 4 of mask.
	wsRoom = 14
	// wsHugeFrame stands for a length over any cap.
	wsHugeFrame = 1 << 30
)

var (
	errWSProtocol   = &limitError{"protocol"}
	errWSPeerClosed = &limitError{"eof"}
)

// wsConn is the WebSocket side of an upgraded Conn. Its reading side
// turns the client's frames into what sipgo reads (the made-up upgrade
// request, then one masked text frame per message); it runs on the
// Conn's Read, which sipgo calls from one goroutine. Its writing side
// passes sipgo's frames through, each in one write, so that the pongs
// and Closes it writes itself never land inside one.
type wsConn struct {
	c   *Conn
	max int // cap on a message

	rbuf       []byte // rbuf[rpos:rend]: read from the client, not yet parsed
	rpos, rend int
	rerr       error     // an error that came with the last bytes read
	out        []byte    // for sipgo, not yet read
	msg        []byte    // the message being put together, after wsRoom bytes
	op         ws.OpCode // of the message being put together; 0 between messages
	busy       bool      // bytes of a message or control frame were read: HeaderTimeout runs

	wmu     sync.Mutex
	wd      time.Time // the caller's write deadline
	hidden  int       // bytes of the "\r\n\r\n" ending sipgo's 101 response seen; 4 once it is all swallowed
	pend    []byte    // the start of one of sipgo's frames
	wclosed bool      // a Close was sent: nothing may follow it
}

// read returns bytes for sipgo, reading frames from the client as needed.
// An error that is a *limitError means the connection is to be closed
// for it (a Close frame went out already).
func (w *wsConn) read(b []byte) (int, error) {
	for len(w.out) == 0 {
		if err := w.next(); err != nil {
			return 0, err
		}
	}
	n := copy(b, w.out)
	w.out = w.out[n:]
	return n, nil
}

// next reads frames from the client until a message is ready for sipgo
// in w.out. It keeps its state across errors: a read that timed out may
// be resumed.
func (w *wsConn) next() error {
	if w.op == 0 { // sipgo read the last message
		if cap(w.msg) > wsBufSize+wsRoom {
			w.msg = nil
		}
		w.msg = w.msg[:0]
	}
	for {
		h, n := parseWSHeader(w.rbuf[w.rpos:w.rend])
		if n == 0 {
			if err := w.fill(ws.MaxHeaderSize); err != nil {
				return err
			}
			continue
		}
		if err := w.check(h); err != nil {
			return err
		}
		size := n + int(h.Length)
		if w.rend-w.rpos < size {
			if err := w.fill(size); err != nil {
				return err
			}
			continue
		}
		p := w.rbuf[w.rpos+n : w.rpos+size]
		w.rpos += size
		ws.Cipher(p, h.Mask, 0)
		if done, err := w.frame(h, p); done || err != nil {
			return err
		}
	}
}

// check validates a client frame's header (RFC 6455 §5) and sizes the
// message it belongs to.
func (w *wsConn) check(h ws.Header) error {
	switch {
	case h.Rsv != 0, !h.Masked, h.OpCode.IsReserved(),
		h.OpCode.IsControl() && (!h.Fin || h.Length > ws.MaxControlFramePayloadSize),
		h.OpCode == ws.OpContinuation && w.op == 0,
		h.OpCode.IsData() && h.OpCode != ws.OpContinuation && w.op != 0:
		return w.fail(ws.StatusProtocolError, errWSProtocol)
	case !h.OpCode.IsControl() && int64(max(len(w.msg)-wsRoom, 0))+h.Length > int64(w.max):
		return w.fail(ws.StatusMessageTooBig, errTooLarge)
	}
	return nil
}

// fill reads from the client, with room for need bytes unparsed. Bytes
// read are activity; the first of a message starts its HeaderTimeout.
func (w *wsConn) fill(need int) error {
	if err := w.rerr; err != nil {
		w.rerr = nil
		return err
	}
	if w.rpos == w.rend && len(w.rbuf) > wsBufSize {
		w.rbuf = nil
	}
	w.rend = copy(w.rbuf, w.rbuf[w.rpos:w.rend])
	w.rpos = 0
	if need = max(need, wsBufSize); len(w.rbuf) < need {
		w.rbuf = append(w.rbuf[:w.rend], make([]byte, need-w.rend)...)
	}
	n, err := w.c.inner.Read(w.rbuf[w.rend:])
	if n == 0 {
		return err
	}
	w.rend += n
	w.rerr = err
	if f := w.c.l.hooks.OnRead; f != nil {
		f(w.c.key)
	}
	w.c.advance(!w.busy, false, true)
	w.busy = true
	return w.c.armRead()
}

// frame handles a whole, unmasked frame. done is true when a message is
// ready for sipgo.
func (w *wsConn) frame(h ws.Header, p []byte) (done bool, err error) {
	hooks := &w.c.l.hooks
	switch h.OpCode {
	case ws.OpPing:
		if err := w.control(ws.OpPong, p); err != nil {
			return false, err
		}
		if hooks.OnPing != nil {
			hooks.OnPing(w.c.key)
		}
	case ws.OpPong:
	case ws.OpClose:
		if len(p) == 0 {
			_ = w.control(ws.OpClose, nil)
			return false, errWSPeerClosed
		}
		if len(p) == 1 || ws.CheckCloseFrameData(ws.ParseCloseFrameData(p)) != nil {
			return false, w.fail(ws.StatusProtocolError, errWSProtocol)
		}
		_ = w.control(ws.OpClose, p[:2])
		return false, errWSPeerClosed
	default:
		if len(w.msg) == 0 {
			w.msg = append(w.msg, make([]byte, wsRoom)...)
			w.op = h.OpCode
		}
		w.msg = append(w.msg, p...)
		if !h.Fin {
			return false, nil
		}
		w.op = 0
		if m, ok := sipShaped(w.msg[wsRoom:]); ok {
			w.busy = false // HeaderTimeout stops as sipgo reads it
			w.out = encodeForSipgo(w.msg, len(w.msg)-len(m))
			return true, nil
		}
		w.msg = w.msg[:0]
	}
	if w.op != 0 {
		return false, nil // a control frame inside a message
	}
	w.busy = false
	w.c.advance(false, true, false)
	return false, w.c.armRead()
}

// encodeForSipgo writes a masked text frame header (of a zero mask) into
// the room before msg[off:] and returns the frame.
func encodeForSipgo(msg []byte, off int) []byte {
	n := len(msg) - off
	var h [wsRoom]byte
	h[0] = 0x80 | byte(ws.OpText)
	hl := 2
	switch {
	case n <= 125:
		h[1] = byte(n)
	case n <= 0xffff:
		h[1] = 126
		binary.BigEndian.PutUint16(h[2:], uint16(n))
		hl = 4
	default:
		h[1] = 127
		binary.BigEndian.PutUint64(h[2:], uint64(n))
		hl = 10
	}
	h[1] |= 0x80
	hl += 4 // the mask, zero: sipgo's server side requires one
	copy(msg[off-hl:off], h[:hl])
	return msg[off-hl:]
}

// control writes a control frame to the client within HeaderTimeout.
func (w *wsConn) control(op ws.OpCode, p []byte) error {
	var f [2 + ws.MaxControlFramePayloadSize]byte
	f[0] = 0x80 | byte(op)
	f[1] = byte(len(p))
	n := 2 + copy(f[2:], p)
	w.wmu.Lock()
	defer w.wmu.Unlock()
	if w.wclosed {
		return net.ErrClosed
	}
	w.wclosed = op == ws.OpClose
	raw := w.c.inner
	if err := raw.SetWriteDeadline(time.Now().Add(w.c.l.limits.HeaderTimeout)); err != nil {
		return err
	}
	_, err := raw.Write(f[:n])
	if e := raw.SetWriteDeadline(w.wd); err == nil {
		err = e
	}
	return err
}

// fail sends a Close with code and returns le, for which the connection
// is closed.
func (w *wsConn) fail(code ws.StatusCode, le *limitError) error {
	var p [2]byte
	binary.BigEndian.PutUint16(p[:], uint16(code))
	_ = w.control(ws.OpClose, p[:])
	return le
}

// write takes sipgo's bytes: it swallows its 101 response and writes each
// of its frames whole.
func (w *wsConn) write(b []byte) (int, error) {
	w.wmu.Lock()
	defer w.wmu.Unlock()
	if w.wclosed {
		return 0, net.ErrClosed
	}
	n := len(b)
	for ; w.hidden < 4 && len(b) > 0; b = b[1:] {
		switch {
		case b[0] == "\r\n\r\n"[w.hidden]:
			w.hidden++
		case b[0] == '\r':
			w.hidden = 1
		default:
			w.hidden = 0
		}
	}
	w.pend = append(w.pend, b...)
	for {
		h, hl := parseWSHeader(w.pend)
		size := hl + int(h.Length)
		if hl == 0 || len(w.pend) < size {
			break
		}
		if _, err := w.c.inner.Write(w.pend[:size]); err != nil {
			w.pend = w.pend[:0]
			return 0, err
		}
		w.pend = w.pend[:copy(w.pend, w.pend[size:])]
	}
	if len(w.pend) == 0 && cap(w.pend) > wsBufSize {
		w.pend = nil
	}
	return n, nil
}

// setWriteDeadline sets the caller's write deadline, which control
// frames restore after theirs.
func (w *wsConn) setWriteDeadline(t time.Time) error {
	w.wmu.Lock()
	defer w.wmu.Unlock()
	w.wd = t
	return w.c.inner.SetWriteDeadline(t)
}

// parseWSHeader parses the frame header p starts with; n is its size, 0
// when p holds only part of it. A length over wsHugeFrame is wsHugeFrame.
func parseWSHeader(p []byte) (h ws.Header, n int) {
	if len(p) < 2 {
		return h, 0
	}
	h.Fin = p[0]&0x80 != 0
	h.Rsv = p[0] >> 4 & 7
	h.OpCode = ws.OpCode(p[0] & 0x0f)
	h.Masked = p[1]&0x80 != 0
	n = 2
	switch l := p[1] & 0x7f; l {
	case 126:
		if n = 4; len(p) < n {
			return h, 0
		}
		h.Length = int64(binary.BigEndian.Uint16(p[2:]))
	case 127:
		if n = 10; len(p) < n {
			return h, 0
		}
		h.Length = int64(min(binary.BigEndian.Uint64(p[2:]), wsHugeFrame))
	default:
		h.Length = int64(l)
	}
	if h.Masked {
		if len(p) < n+4 {
			return h, 0
		}
		copy(h.Mask[:], p[n:])
		n += 4
	}
	return h, n
}

// sipShaped trims the CR and LF bytes a message starts with and reports
// whether sipgo's parser, whose failure ends the connection, can take
// what remains: a CRLF keepalive of up to 4 bytes (which sipgo answers
// or ignores), or a message whose start-line sipgo parses, whose header
// lines hold a colon, whose last Content-Length is a number no greater
// than its body, and whose lines end in CRLF. The headers sipgo parses
// further (Via, From, CSeq...) are not checked.
func sipShaped(p []byte) ([]byte, bool) {
	i := 0
	for i < len(p) && (p[i] == '\r' || p[i] == '\n') {
		i++
	}
	if i == len(p) {
		return p, len(p) > 0 && len(p) <= 4
	}
	p = p[i:]
	eoh := bytes.Index(p, []byte("\r\n\r\n"))
	if eoh < 0 {
		return p, false
	}
	head := p[:eoh+2] // each line with its CRLF
	if bytes.Count(head, []byte("\r")) != bytes.Count(head, []byte("\r\n")) {
		return p, false
	}
	start, head, _ := bytes.Cut(head, []byte("\r\n"))
	if !sipStartLine(string(start)) {
		return p, false
	}
	clen := -1
	for len(head) > 0 {
		// A header line and its folded continuations, as sipgo joins them.
		var line []byte
		line, head, _ = bytes.Cut(head, []byte("\r\n"))
		for len(head) > 0 && (head[0] == ' ' || head[0] == '\t') {
			var cont []byte
			cont, head, _ = bytes.Cut(head, []byte("\r\n"))
			line = append(append(line[:len(line):len(line)], ' '), cont...)
		}
		name, value, ok := bytes.Cut(line, []byte(":"))
		if !ok {
			return p, false
		}
		if n := strings.ToLower(string(bytes.TrimSpace(name))); n == "content-length" || n == "l" {
			v, err := strconv.ParseUint(string(bytes.TrimSpace(value)), 10, 32)
			if err != nil {
				return p, false
			}
			clen = int(v)
		}
	}
	return p, clen <= len(p)-eoh-4
}

// sipStartLine reports whether sipgo parses line as a start-line.
func sipStartLine(line string) bool {
	parts := strings.SplitN(line, " ", 3)
	if len(parts) != 3 {
		return false
	}
	isSIP := func(s string) bool { return len(s) >= 3 && (s[:3] == "SIP" || s[:3] == "sip") }
	switch {
	case isSIP(parts[2]) && !strings.Contains(parts[2], " "): // a request
		var u sip.Uri
		return sip.ParseUri(parts[1], &u) == nil && !u.Wildcard
	case isSIP(parts[0]): // a response
		_, err := strconv.ParseUint(parts[1], 10, 16)
		return err == nil
	}
	return false
}
