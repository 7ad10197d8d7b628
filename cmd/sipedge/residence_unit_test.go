package main

import (
	"bytes"
	"encoding/binary"
	"testing"
	"time"
)

// pcapOf writes frames as tcpdump -w does on Linux's lo (Ethernet,
// nanosecond stamps): each an IPv4 UDP datagram at its time.
type frame struct {
	ns       int64
	src, dst uint16
	payload  string
}

func pcapOf(frames []frame) []byte {
	var b bytes.Buffer
	h := make([]byte, 24)
	binary.LittleEndian.PutUint32(h, 0xa1b23c4d)
	binary.LittleEndian.PutUint16(h[4:], 2)
	binary.LittleEndian.PutUint16(h[6:], 4)
	binary.LittleEndian.PutUint32(h[16:], 262144)
	binary.LittleEndian.PutUint32(h[20:], 1)
	b.Write(h)
	for _, f := range frames {
		udp := binary.BigEndian.AppendUint16(nil, f.src)
		udp = binary.BigEndian.AppendUint16(udp, f.dst)
		udp = binary.BigEndian.AppendUint16(udp, uint16(8+len(f.payload)))
		udp = append(udp, 0, 0)
		udp = append(udp, f.payload...)
		ip := []byte{0x45, 0, 0, 0, 0, 0, 0x40, 0, 64, 17, 0, 0, 127, 0, 0, 1, 127, 0, 0, 1}
		binary.BigEndian.PutUint16(ip[2:], uint16(20+len(udp)))
		eth := append(make([]byte, 12), 0x08, 0x00)
		pkt := append(append(eth, ip...), udp...)
		r := make([]byte, 16)
		binary.LittleEndian.PutUint32(r, uint32(f.ns/1e9))
		binary.LittleEndian.PutUint32(r[4:], uint32(f.ns%1e9))
		binary.LittleEndian.PutUint32(r[8:], uint32(len(pkt)))
		binary.LittleEndian.PutUint32(r[12:], uint32(len(pkt)))
		b.Write(r)
		b.Write(pkt)
	}
	return b.Bytes()
}

// The residence of one transaction is its request's time in the edge
// plus its answer's; a retransmission keeps the first time, and an
// answer whose request went uncaptured is counted apart.
func TestResidenceFromCapture(t *testing.T) {
	const phones, edge, edgeCore, core = 5000, 5060, 6000, 5070
	req := func(cseq string) string {
		return "REGISTER sip:example.com SIP/2.0\r\nVia: SIP/2.0/UDP x;branch=z9hG4bK1\r\ni: abc@1\r\nCSeq:  " + cseq + "\r\nContent-Length: 0\r\n\r\n"
	}
	res := func(code, cseq string) string {
		return "SIP/2.0 " + code + " X\r\nCall-ID: abc@1\r\ncseq: " + cseq + "\r\nContent-Length: 0\r\n\r\n"
	}
	const s = 1_700_000_000 * int64(time.Second)
	capture := pcapOf([]frame{
		{s + 1000, phones, edge, req("1 REGISTER")},
		{s + 1500, phones, edge, req("1 REGISTER")}, // retransmission
		{s + 31000, edgeCore, core, req("1 REGISTER")},
		{s + 900000, core, edgeCore, res("401", "1 REGISTER")},
		{s + 950000, edge, phones, res("401", "1 REGISTER")},
		{s + 2000000, core, edgeCore, res("100", "2 REGISTER")}, // provisional: not a final answer
		{s + 3000000, edge, phones, res("200", "2 REGISTER")},   // its request never captured
	})
	r := newResidence(phones, core)
	if err := readPcap(bytes.NewReader(capture), r.add); err != nil {
		t.Fatal(err)
	}
	us, unpaired := r.times()
	if len(us.total) != 1 || us.total[0] != 30+50 || us.request[0] != 30 || us.answer[0] != 50 {
		t.Fatalf("residences %+v µs, want total 80, request 30, answer 50", us)
	}
	if unpaired != 1 {
		t.Fatalf("unpaired %d, want 1", unpaired)
	}
	if err := readPcap(bytes.NewReader([]byte("not a capture at all....")), r.add); err == nil {
		t.Fatal("garbage read as a capture")
	}
}
