package main

import (
	"bytes"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"slices"
	"strconv"
	"strings"
)

// The time an edge holds each message, read from a packet capture on the
// loopback: from a datagram reaching the edge to the datagram it sends
// on. sipp's response times come in its clock ticks (4 ms here), too
// coarse for what an edge adds; the kernel stamps each packet to the
// nanosecond. Both edges are measured alike, queueing in their sockets
// included.

// readPcap calls each for every UDP datagram over IPv4 or IPv6 in a pcap
// file (tcpdump -w), with its capture time in ns.
func readPcap(r io.Reader, each func(ns int64, src, dst uint16, payload []byte)) error {
	var gh [24]byte
	if _, err := io.ReadFull(r, gh[:]); err != nil {
		return fmt.Errorf("pcap header: %w", err)
	}
	var bo binary.ByteOrder = binary.LittleEndian
	frac := int64(1000) // µs to ns
	switch binary.LittleEndian.Uint32(gh[:]) {
	case 0xa1b2c3d4:
	case 0xa1b23c4d:
		frac = 1
	case 0xd4c3b2a1:
		bo = binary.BigEndian
	case 0x4d3cb2a1:
		bo, frac = binary.BigEndian, 1
	default:
		return errors.New("not a pcap file")
	}
	link := bo.Uint32(gh[20:]) & 0xffff
	var rec [16]byte
	var buf []byte
	for {
		if _, err := io.ReadFull(r, rec[:]); err == io.EOF {
			return nil
		} else if err != nil {
			return nil // tcpdump stopped mid-record: what came before stands
		}
		n := bo.Uint32(rec[8:])
		if n > 1<<18 {
			return fmt.Errorf("pcap record of %d bytes", n)
		}
		buf = slices.Grow(buf[:0], int(n))[:n]
		if _, err := io.ReadFull(r, buf); err != nil {
			return nil
		}
		ns := int64(bo.Uint32(rec[:]))*1e9 + int64(bo.Uint32(rec[4:]))*frac
		if src, dst, p, ok := udpOf(link, buf); ok {
			each(ns, src, dst, p)
		}
	}
}

// udpOf finds the UDP datagram in a captured frame of the link type.
func udpOf(link uint32, f []byte) (src, dst uint16, payload []byte, ok bool) {
	var ethertype uint16
	switch link {
	case 1: // Ethernet (Linux's lo)
		if len(f) < 14 {
			return 0, 0, nil, false
		}
		ethertype, f = binary.BigEndian.Uint16(f[12:]), f[14:]
	case 113: // Linux cooked (tcpdump -i any)
		if len(f) < 16 {
			return 0, 0, nil, false
		}
		ethertype, f = binary.BigEndian.Uint16(f[14:]), f[16:]
	case 276: // Linux cooked v2
		if len(f) < 20 {
			return 0, 0, nil, false
		}
		ethertype, f = binary.BigEndian.Uint16(f[0:]), f[20:]
	default:
		return 0, 0, nil, false
	}
	switch {
	case ethertype == 0x0800 && len(f) >= 20 && f[0]>>4 == 4:
		hl := int(f[0]&0xf) * 4
		if f[9] != 17 || binary.BigEndian.Uint16(f[6:])&0x3fff != 0 || len(f) < hl+8 { // not UDP, or a fragment
			return 0, 0, nil, false
		}
		f = f[hl:]
	case ethertype == 0x86dd && len(f) >= 48 && f[6] == 17:
		f = f[40:]
	default:
		return 0, 0, nil, false
	}
	return binary.BigEndian.Uint16(f), binary.BigEndian.Uint16(f[2:]), f[8:], true
}

// residence pairs what an edge received with what it sent on, by Call-ID
// and CSeq (a proxy keeps both): a request from the phones with its copy
// to the core, the core's answer with its copy to the phones.
type residence struct {
	phones, core  uint16 // the ports of sipp and of the core
	reqIn, reqOut map[string]int64
	resIn, resOut map[string]int64
}

func newResidence(phones, core uint16) *residence {
	return &residence{phones: phones, core: core,
		reqIn: map[string]int64{}, reqOut: map[string]int64{}, resIn: map[string]int64{}, resOut: map[string]int64{}}
}

// add notes one datagram; retransmissions keep the first time.
func (s *residence) add(ns int64, src, dst uint16, p []byte) {
	status, key, ok := sipKey(p)
	if !ok {
		return
	}
	var m map[string]int64
	switch {
	case status == 0 && src == s.phones:
		m = s.reqIn
	case status == 0 && dst == s.core:
		m = s.reqOut
	case status >= 200 && src == s.core:
		m, key = s.resIn, key+" "+strconv.Itoa(status)
	case status >= 200 && dst == s.phones:
		m, key = s.resOut, key+" "+strconv.Itoa(status)
	default:
		return
	}
	if _, seen := m[key]; !seen {
		m[key] = ns
	}
}

// legs are an edge's residence times in µs, per completed transaction:
// its request's and its final answer's summed (total), and each apart.
type legs struct{ total, request, answer []float64 }

// times is the edge's residence per completed transaction, and how many
// answers the phones got that could not be paired (a part missing from
// the capture).
func (s *residence) times() (l legs, unpaired int) {
	for k, out := range s.resOut {
		in, ok := s.resIn[k]
		tk := k[:strings.LastIndexByte(k, ' ')]
		rin, ok1 := s.reqIn[tk]
		rout, ok2 := s.reqOut[tk]
		if !ok || !ok1 || !ok2 {
			unpaired++
			continue
		}
		l.total = append(l.total, float64(out-in+rout-rin)/1e3)
		l.request = append(l.request, float64(rout-rin)/1e3)
		l.answer = append(l.answer, float64(out-in)/1e3)
	}
	return l, unpaired
}

// sipKey reads a SIP message's status (0 for a request) and its Call-ID
// and CSeq.
func sipKey(p []byte) (status int, key string, ok bool) {
	line, rest, _ := bytes.Cut(p, []byte("\r\n"))
	if bytes.HasPrefix(line, []byte("SIP/2.0 ")) && len(line) >= 11 {
		if status, _ = strconv.Atoi(string(line[8:11])); status < 100 {
			return 0, "", false
		}
	} else if !bytes.HasSuffix(line, []byte(" SIP/2.0")) {
		return 0, "", false
	}
	var callID, cseq []byte
	for len(rest) > 0 {
		line, rest, _ = bytes.Cut(rest, []byte("\r\n"))
		if len(line) == 0 {
			break
		}
		name, value, found := bytes.Cut(line, []byte(":"))
		if !found {
			continue
		}
		name, value = bytes.TrimSpace(name), bytes.TrimSpace(value)
		switch {
		case bytes.EqualFold(name, []byte("Call-ID")) || bytes.EqualFold(name, []byte("i")):
			callID = value
		case bytes.EqualFold(name, []byte("CSeq")):
			cseq = bytes.Join(bytes.Fields(value), []byte(" "))
		}
	}
	if callID == nil || cseq == nil {
		return 0, "", false
	}
	return status, string(callID) + " " + string(cseq), true
}
