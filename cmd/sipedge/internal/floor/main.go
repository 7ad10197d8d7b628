// Command floor is the least a Go program can do as a UDP SIP edge, for
// the comparison harness (TestEdgeCompare with SIPEDGE_BENCH_FLOOR): what
// sipedge costs above it is its SIP work, what it costs up to it is Go's
// runtime and the kernel's UDP path, which no work on sipedge removes.
//
// A request from a phone gets one Via line on top whose branch names the
// phone's address and goes to the first upstream; an answer from the core
// loses its top Via line and goes to the address that branch names.
// Nothing else is parsed, checked, kept or answered (but an OPTIONS,
// which the harness sends to see it is up). Not an edge anyone should
// run: it relays anything from anyone.
//
// It reads sipedge's own configuration (access.udp, core.listen,
// core.upstreams), so the harness starts it as it starts sipedge:
// "floor check-config FILE" and "floor run -config FILE".
package main

import (
	"bytes"
	"fmt"
	"net"
	"net/netip"
	"os"
	"strconv"
	"strings"

	"github.com/BurntSushi/toml"
	"github.com/sipedge/sipedge/nat/rawudp"
)

type config struct {
	Access struct{ UDP []string }
	Core   struct {
		Listen    string
		Upstreams []string
	}
}

func main() {
	if err := run(os.Args[1:]); err != nil {
		fmt.Fprintln(os.Stderr, "floor:", err)
		os.Exit(1)
	}
}

func run(args []string) error {
	var path string
	switch {
	case len(args) == 2 && args[0] == "check-config":
		path = args[1]
	case len(args) >= 3 && args[0] == "run" && args[1] == "-config":
		path = args[2]
	default:
		return fmt.Errorf("usage: floor check-config FILE | floor run -config FILE")
	}
	var cfg config
	if _, err := toml.DecodeFile(path, &cfg); err != nil {
		return err
	}
	if len(cfg.Access.UDP) == 0 || len(cfg.Core.Upstreams) == 0 {
		return fmt.Errorf("%s: no access.udp or no core.upstreams", path)
	}
	// "sip:127.0.0.1:5060;transport=udp"
	up, _, _ := strings.Cut(strings.TrimPrefix(cfg.Core.Upstreams[0], "sip:"), ";")
	core, err := netip.ParseAddrPort(up)
	if err != nil {
		return fmt.Errorf("upstream %q: %v", cfg.Core.Upstreams[0], err)
	}
	if args[0] == "check-config" {
		return nil
	}
	access, err := listen(cfg.Access.UDP[0])
	if err != nil {
		return err
	}
	toCore, err := listen(cfg.Core.Listen)
	if err != nil {
		return err
	}
	fmt.Fprintln(os.Stderr, "floor: access", access.LocalAddr(), "core side", toCore.LocalAddr(), "core", core)
	go func() {
		fromCore(toCore, access)
		os.Exit(1)
	}()
	fromPhones(access, toCore, core, toCore.LocalAddr().String())
	return fmt.Errorf("access socket closed")
}

// conn is a UDP socket as the floor uses it.
type conn interface {
	ReadFromUDPAddrPort(b []byte) (int, netip.AddrPort, error)
	WriteToUDPAddrPort(b []byte, addr netip.AddrPort) (int, error)
	LocalAddr() net.Addr
}

// listen binds addr, read and written with raw system calls as sipedge's
// are (nat/rawudp).
func listen(addr string) (conn, error) {
	ap, err := netip.ParseAddrPort(addr)
	if err != nil {
		return nil, err
	}
	c, err := net.ListenUDP("udp", net.UDPAddrFromAddrPort(ap))
	if err != nil {
		return nil, err
	}
	if fast := rawudp.New(c); fast != nil {
		return fast, nil
	}
	return c, nil
}

var crlf = []byte("\r\n")

// fromPhones relays requests to the core with a Via naming their source.
func fromPhones(access, toCore conn, core netip.AddrPort, self string) {
	buf, out := make([]byte, 65536), make([]byte, 0, 65536)
	for {
		n, src, err := access.ReadFromUDPAddrPort(buf)
		if err != nil {
			return
		}
		b := buf[:n]
		eol := bytes.Index(b, crlf)
		if eol < 0 || bytes.HasPrefix(b, []byte("SIP/")) {
			continue
		}
		if bytes.HasPrefix(b, []byte("OPTIONS ")) {
			_, _ = access.WriteToUDPAddrPort(ok(b), src)
			continue
		}
		ip := src.Addr().As4()
		out = append(out[:0], b[:eol+2]...)
		out = append(out, "Via: SIP/2.0/UDP "...)
		out = append(out, self...)
		out = append(out, ";branch=z9hG4bK-"...)
		out = strconv.AppendUint(out, uint64(src.Port()), 10)
		out = append(out, '-')
		out = strconv.AppendUint(out, uint64(ip[0])<<24|uint64(ip[1])<<16|uint64(ip[2])<<8|uint64(ip[3]), 10)
		out = append(out, crlf...)
		out = append(out, b[eol+2:]...)
		_, _ = toCore.WriteToUDPAddrPort(out, core)
	}
}

// fromCore relays answers to the address their top Via's branch names.
func fromCore(toCore, access conn) {
	buf, out := make([]byte, 65536), make([]byte, 0, 65536)
	for {
		n, _, err := toCore.ReadFromUDPAddrPort(buf)
		if err != nil {
			return
		}
		b := buf[:n]
		i := bytes.Index(b, []byte("\r\nVia: "))
		if i < 0 {
			continue
		}
		line, _, _ := bytes.Cut(b[i+2:], crlf)
		_, branch, found := bytes.Cut(line, []byte("branch=z9hG4bK-"))
		if !found {
			continue
		}
		branch, _, _ = bytes.Cut(branch, []byte(";"))
		port, ip, _ := bytes.Cut(branch, []byte("-"))
		p, err1 := strconv.ParseUint(string(port), 10, 16)
		a, err2 := strconv.ParseUint(string(ip), 10, 32)
		if err1 != nil || err2 != nil {
			continue
		}
		dst := netip.AddrPortFrom(netip.AddrFrom4([4]byte{byte(a >> 24), byte(a >> 16), byte(a >> 8), byte(a)}), uint16(p))
		out = append(out[:0], b[:i]...)
		out = append(out, b[i+2+len(line):]...)
		_, _ = access.WriteToUDPAddrPort(out, dst)
	}
}

// ok is a 200 to the OPTIONS in b.
func ok(b []byte) []byte {
	out := []byte("SIP/2.0 200 OK\r\n")
	for _, l := range bytes.Split(b, crlf)[1:] {
		for _, h := range []string{"Via:", "From:", "To:", "Call-ID:", "CSeq:"} {
			if bytes.HasPrefix(l, []byte(h)) {
				out = append(append(out, l...), crlf...)
			}
		}
	}
	return append(out, "Content-Length: 0\r\n\r\n"...)
}
