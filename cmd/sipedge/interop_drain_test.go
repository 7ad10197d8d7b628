//go:build interop

package main

import (
	"bufio"
	"errors"
	"fmt"
	"io"
	"net"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/emiago/sipgo/sip"
)

// tcpOutcome is what one TCP phone saw during the drain.
type tcpOutcome struct {
	got503, retryAfter int
	other              []int // other answers after the stop
	end                error // how the connection ended
}

// Drain under load: sipp registers over UDP while TCP phones keep
// sending REGISTERs; SIGTERM. Every answer after the stop is 503 with
// Retry-After; every TCP connection is closed cleanly (EOF, no reset)
// within the grace; the process exits within it.
func TestInteropDrain(t *testing.T) {
	needTools(t, "kamailio", "kamcmd", "sipp")
	k := startKamailio(t, kamOpts{users: 100})
	bin := buildSipedge(t, buildRace)
	dir := t.TempDir()
	access := fmt.Sprintf("127.0.0.1:%d", freePort(t))
	core := fmt.Sprintf("127.0.0.1:%d", freePort(t))
	cfg := sipedgeConfig(access, core, dir, edgeOpts{mode: "path", level: "info",
		upstream: fmt.Sprintf("sip:%s;transport=udp", k.addr()), extra: "\n[drain]\ngrace = \"4s\"\nretry_after = \"30s\"\n"})
	cfgPath, out, err := writeSipedgeConfig(t, bin, dir, cfg)
	if err != nil {
		t.Fatalf("check-config: %v\n%s", err, out)
	}
	e := runSipedge(t, procOpts{logPath: filepath.Join(dir, "sipedge.log")}, bin, cfgPath)
	waitSIP(t, e, access)

	const phones = 20
	conns := make([]net.Conn, phones)
	for i := range conns {
		c, err := net.Dial("tcp", access)
		must(t, err)
		t.Cleanup(func() { c.Close() })
		conns[i] = c
	}
	var stopped time.Time
	var mu sync.Mutex
	stoppedAt := func() time.Time { mu.Lock(); defer mu.Unlock(); return stopped }
	outcomes := make([]tcpOutcome, phones)
	var wg sync.WaitGroup
	for i, c := range conns {
		wg.Go(func() {
			o := &outcomes[i]
			local := c.LocalAddr().String()
			r := bufio.NewReader(c)
			for seq := 1; ; seq++ {
				user := 1000 + i
				fmt.Fprintf(c, "REGISTER sip:sipedge.test SIP/2.0\r\nVia: SIP/2.0/TCP %s;branch=z9hG4bK-drain-%d-%d\r\nMax-Forwards: 70\r\n"+
					"From: <sip:%d@sipedge.test>;tag=d%d\r\nTo: <sip:%d@sipedge.test>\r\nCall-ID: drain-%d@test\r\nCSeq: %d REGISTER\r\n"+
					"Contact: <sip:%d@%s;transport=tcp>\r\nExpires: 600\r\nContent-Length: 0\r\n\r\n",
					local, i, seq, user, i, user, i, seq, user, local)
				c.SetReadDeadline(time.Now().Add(10 * time.Second))
				res, err := readResponse(r)
				if err != nil {
					o.end = err
					return
				}
				if s := stoppedAt(); !s.IsZero() && time.Now().After(s.Add(100*time.Millisecond)) {
					if res.StatusCode == 503 {
						o.got503++
						if res.GetHeader("Retry-After") != nil {
							o.retryAfter++
						}
					} else {
						o.other = append(o.other, res.StatusCode)
					}
				}
				time.Sleep(100 * time.Millisecond) // a phone's pace, not synchronisation
			}
		})
	}
	sippDone := make(chan sippResult, 1)
	go func() {
		sippDone <- runSipp(t, sippRun{target: access, transport: "u1", csv: filepath.Join(interopDir, "users.csv"),
			calls: 200, rate: 50, limit: 30 * time.Second, traceMsg: true})
	}()
	// Stop once registrations flow.
	deadline := time.Now().Add(20 * time.Second)
	for len(k.ulDump(t)) < 20 {
		if time.Now().After(deadline) {
			t.Fatal("no registrations reached the core")
		}
		time.Sleep(50 * time.Millisecond)
	}
	mu.Lock()
	stopped = time.Now()
	mu.Unlock()
	must(t, syscall.Kill(e.cmd.Process.Pid, syscall.SIGTERM))
	if !e.wait(10 * time.Second) {
		t.Fatal("sipedge did not exit within 10 s of SIGTERM")
	}
	took := time.Since(stopped)
	wg.Wait()
	res := <-sippDone

	total := 0
	for i, o := range outcomes {
		if !errors.Is(o.end, io.EOF) {
			t.Errorf("TCP phone %d: connection ended with %v, want a clean close (EOF)", i, o.end)
		}
		if len(o.other) > 0 || o.retryAfter != o.got503 {
			t.Errorf("TCP phone %d after the stop: %d × 503 (%d with Retry-After), others %v; want only 503 with Retry-After", i, o.got503, o.retryAfter, o.other)
		}
		total += o.got503
	}
	// Connections close one by one over the grace: all but the first few
	// asked again before theirs closed.
	if total < phones {
		t.Errorf("TCP phones got %d × 503 in all while draining, want at least %d", total, phones)
	}
	// sipp's answers: every 503 carries Retry-After.
	n503, nRA := 0, 0
	for _, msg := range strings.Split(res.messages, "----------------------------------------------- ") {
		if strings.Contains(msg, "SIP/2.0 503") {
			n503++
			if strings.Contains(msg, "Retry-After:") {
				nRA++
			}
		}
	}
	if n503 != nRA {
		t.Errorf("sipp got %d 503s, %d with Retry-After", n503, nRA)
	}
	if took > 4*time.Second+2*time.Second {
		t.Errorf("drain took %v with a 4 s grace", took)
	}
	t.Logf("drain: exit %v after SIGTERM; %d TCP phones: %d × 503, all with Retry-After, then clean closes; sipp over UDP: %d × 503, all with Retry-After",
		took.Round(10*time.Millisecond), phones, total, n503)
}

// readResponse reads one SIP response from a stream.
func readResponse(r *bufio.Reader) (*sip.Response, error) {
	var head strings.Builder
	length := 0
	for {
		line, err := r.ReadString('\n')
		if err != nil {
			return nil, err
		}
		if line == "\r\n" && head.Len() == 0 {
			continue // keepalive
		}
		head.WriteString(line)
		if l := strings.ToLower(line); strings.HasPrefix(l, "content-length:") {
			fmt.Sscan(strings.TrimSpace(line[len("content-length:"):]), &length)
		}
		if line == "\r\n" {
			break
		}
	}
	body := make([]byte, length)
	if _, err := io.ReadFull(r, body); err != nil {
		return nil, err
	}
	m, err := sip.ParseMessage([]byte(head.String() + string(body)))
	if err != nil {
		return nil, err
	}
	res, ok := m.(*sip.Response)
	if !ok {
		return nil, fmt.Errorf("not a response: %T", m)
	}
	return res, nil
}
