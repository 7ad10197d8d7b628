package edge_test

import (
	"bytes"
	"net"
	"net/netip"
	"strconv"
	"syscall"
	"testing"
	"time"

	"github.com/sipedge/sipedge/edge/edgetest"
)

// BenchmarkRegisterPipeline is the edge's own cost per registration with
// digest auth (REGISTER, 401, REGISTER, 200: two transactions), with as
// little else in the process as can be: a phone that keeps 16
// registrations in flight from one socket, as sipp does, and a core that
// answers from the request's bytes (401 without credentials, 200 with,
// Path echoed) instead of parsing it. cpu-us/reg is the process's user
// and system time per registration; the phone's and the core's share of
// it is a few microseconds. The edge runs without the binary's observers
// (audit log, alerts, metrics, state file): those are the sipp bench's.
//
//	go test -run '^$' -bench RegisterPipeline -benchtime 20000x ./edge/
func BenchmarkRegisterPipeline(b *testing.B) {
	core := cannedCore(b)
	e := edgetest.Start(b, "sip:"+core.String()+";transport=udp", func(c *edgetest.Config) {
		c.RateLimit.Allow = []string{"127.0.0.0/8"} // one source, many REGISTERs
	})
	phone, err := net.ListenUDP("udp", &net.UDPAddr{IP: net.IPv4(127, 0, 0, 1)})
	if err != nil {
		b.Fatal(err)
	}
	defer phone.Close()
	_ = phone.SetReadBuffer(4 << 20)
	local := phone.LocalAddr().(*net.UDPAddr).AddrPort()

	const users, window = 1000, 16
	cseq := make([]int, users)
	send := func(buf []byte, user int, auth bool) []byte {
		cseq[user]++
		buf = appendRegister(buf[:0], local, user, cseq[user], auth)
		if _, err := phone.WriteToUDPAddrPort(buf, e.UDP); err != nil {
			b.Fatal(err)
		}
		return buf
	}
	var out []byte
	in := make([]byte, 65536)
	run := func(n int) {
		next, done := 0, 0
		for ; next < min(window, n); next++ {
			out = send(out, next%users, false)
		}
		for done < n {
			_ = phone.SetReadDeadline(time.Now().Add(5 * time.Second))
			k, _, err := phone.ReadFromUDPAddrPort(in)
			if err != nil {
				b.Fatalf("%d of %d registrations done: %v", done, n, err)
			}
			res := in[:k]
			user := userOf(res)
			switch {
			case bytes.HasPrefix(res, []byte("SIP/2.0 401 ")):
				out = send(out, user, true)
			case bytes.HasPrefix(res, []byte("SIP/2.0 200 ")):
				done++
				if next < n {
					out = send(out, next%users, false)
					next++
				}
			default:
				b.Fatalf("unexpected answer:\n%s", res)
			}
		}
	}
	run(2 * users) // every binding made once: what follows are refreshes
	var before syscall.Rusage
	_ = syscall.Getrusage(syscall.RUSAGE_SELF, &before)
	b.ReportAllocs()
	b.ResetTimer()
	run(b.N)
	b.StopTimer()
	var after syscall.Rusage
	_ = syscall.Getrusage(syscall.RUSAGE_SELF, &after)
	cpu := time.Duration(after.Utime.Nano() + after.Stime.Nano() - before.Utime.Nano() - before.Stime.Nano())
	b.ReportMetric(float64(cpu.Microseconds())/float64(b.N), "cpu-us/reg")
}

// appendRegister is user's REGISTER, with credentials or without.
func appendRegister(b []byte, from netip.AddrPort, user, cseq int, auth bool) []byte {
	u := strconv.Itoa(user)
	b = append(b, "REGISTER sip:example.com SIP/2.0\r\nVia: SIP/2.0/UDP "...)
	b = from.AppendTo(b)
	b = append(b, ";branch=z9hG4bK-b"...)
	b = strconv.AppendInt(append(b, u...), int64(cseq), 10)
	b = append(b, ";rport\r\nMax-Forwards: 70\r\nFrom: <sip:u"...)
	b = append(b, u...)
	b = append(b, "@example.com>;tag=t"...)
	b = append(b, u...)
	b = append(b, "\r\nTo: <sip:u"...)
	b = append(b, u...)
	b = append(b, "@example.com>\r\nCall-ID: bench-"...)
	b = append(b, u...)
	b = strconv.AppendInt(append(b, "\r\nCSeq: "...), int64(cseq), 10)
	b = append(b, " REGISTER\r\nContact: <sip:u"...)
	b = append(b, u...)
	b = append(b, '@')
	b = from.AppendTo(b)
	b = append(b, ">\r\nExpires: 3600\r\nUser-Agent: bench\r\n"...)
	if auth {
		b = append(b, `Authorization: Digest username="u`...)
		b = append(b, u...)
		b = append(b, `", realm="example.com", nonce="n", uri="sip:example.com", response="00000000000000000000000000000000", algorithm=MD5`+"\r\n"...)
	}
	return append(b, "Content-Length: 0\r\n\r\n"...)
}

// userOf reads the user number back from an answer's Call-ID.
func userOf(res []byte) int {
	_, rest, _ := bytes.Cut(res, []byte("\r\nCall-ID: bench-"))
	end := bytes.IndexByte(rest, '\r')
	if end < 0 {
		return -1
	}
	n, _ := strconv.Atoi(string(rest[:end]))
	return n
}

// cannedCore answers every REGISTER it gets from its bytes: its Via,
// From, To (with a tag), Call-ID, CSeq lines, a 401 with a challenge
// when it has no Authorization, else a 200 with its Contact (expires
// as asked) and Path.
func cannedCore(b *testing.B) netip.AddrPort {
	c, err := net.ListenUDP("udp", &net.UDPAddr{IP: net.IPv4(127, 0, 0, 1)})
	if err != nil {
		b.Fatal(err)
	}
	_ = c.SetReadBuffer(4 << 20)
	done := make(chan struct{})
	b.Cleanup(func() { c.Close(); <-done })
	go func() {
		defer close(done)
		in := make([]byte, 65536)
		var out []byte
		for {
			n, src, err := c.ReadFromUDPAddrPort(in)
			if err != nil {
				return
			}
			req := in[:n]
			auth := bytes.Contains(req, []byte("\r\nAuthorization:"))
			out = out[:0]
			if auth {
				out = append(out, "SIP/2.0 200 OK\r\n"...)
			} else {
				out = append(out, "SIP/2.0 401 Unauthorized\r\n"...)
			}
			_, rest, _ := bytes.Cut(req, []byte("\r\n"))
			for len(rest) > 0 {
				line, r, _ := bytes.Cut(rest, []byte("\r\n"))
				rest = r
				if len(line) == 0 {
					break
				}
				name, _, _ := bytes.Cut(line, []byte(":"))
				switch string(name) {
				case "Via", "From", "Call-ID", "CSeq":
					out = append(append(out, line...), "\r\n"...)
				case "To":
					out = append(append(out, line...), ";tag=core\r\n"...)
				case "Contact", "Path":
					if auth {
						out = append(append(out, line...), "\r\n"...)
					}
				}
			}
			if auth {
				out = append(out, "Expires: 3600\r\n"...)
			} else {
				out = append(out, `WWW-Authenticate: Digest realm="example.com", nonce="n", algorithm=MD5`+"\r\n"...)
			}
			out = append(out, "Server: canned\r\nContent-Length: 0\r\n\r\n"...)
			if _, err := c.WriteToUDPAddrPort(out, src); err != nil {
				return
			}
		}
	}()
	return c.LocalAddr().(*net.UDPAddr).AddrPort()
}
