//go:build interop

package main

import (
	"bytes"
	"context"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"testing"
	"time"
)

// A scanner-style burst (OPTIONS then REGISTER, User-Agent:
// friendly-scanner) from sipp against the built binary gets no answer at
// all, and a normal client on another address still does.
func TestInteropScannerGetsNoAnswer(t *testing.T) {
	needTools(t, "sipp")
	e := startSipedge(t, edgeOpts{mode: "path", upstream: fmt.Sprintf("sip:127.0.0.1:%d;transport=udp", freePort(t)), level: "info"})
	dir := t.TempDir()
	scenario, err := filepath.Abs(filepath.Join(interopDir, "scanner.xml"))
	must(t, err)
	const calls = 40
	args := []string{"sipp", e.udp, "-sf", scenario, "-i", "127.0.0.66", "-p", strconv.Itoa(freePort(t)),
		"-t", "u1", "-m", strconv.Itoa(calls), "-r", "200", "-rp", "1000", "-timeout", "30", "-timeout_error",
		"-nostdin", "-trace_err", "-error_file", filepath.Join(dir, "errors.log")}
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	cmd := exec.CommandContext(ctx, args[0], args[1:]...)
	cmd.Dir = dir
	out, _ := cmd.CombinedOutput() // sipp counts a call with a timeout as failed, even when jumped over
	if ctx.Err() != nil {
		t.Fatalf("sipp killed after 60s:\n%s", tail(string(out), 20))
	}
	errs, _ := os.ReadFile(filepath.Join(dir, "errors.log"))
	// Silence is a receive timeout on each step of every call; an answer
	// of any kind would be an unexpected message.
	opts := bytes.Count(errs, []byte("receive timeout on message scanner:1"))
	regs := bytes.Count(errs, []byte("receive timeout on message scanner:3"))
	t.Logf("sipp scanner: %d calls; unanswered OPTIONS %d, unanswered REGISTER %d", calls, opts, regs)
	if opts != calls || regs != calls || bytes.Contains(bytes.ToLower(errs), []byte("unexpected")) {
		t.Fatalf("the scanner got answers:\n%s\n%s", tail(string(errs), 40), tail(string(out), 20))
	}

	// The edge is alive and answers an ordinary client elsewhere.
	c, err := net.ListenPacket("udp", "127.0.0.67:0")
	must(t, err)
	defer c.Close()
	dst, err := net.ResolveUDPAddr("udp", e.udp)
	must(t, err)
	local := c.LocalAddr().String()
	msg := "OPTIONS sip:" + e.udp + " SIP/2.0\r\nVia: SIP/2.0/UDP " + local + ";branch=z9hG4bK-alive;rport\r\n" +
		"Max-Forwards: 70\r\nFrom: <sip:ok@127.0.0.67>;tag=a\r\nTo: <sip:" + e.udp + ">\r\nCall-ID: alive-1\r\n" +
		"CSeq: 1 OPTIONS\r\nUser-Agent: Yealink SIP-T46U\r\nContent-Length: 0\r\n\r\n"
	_, err = c.WriteTo([]byte(msg), dst)
	must(t, err)
	c.SetReadDeadline(time.Now().Add(5 * time.Second))
	buf := make([]byte, 4096)
	n, _, err := c.ReadFrom(buf)
	if err != nil || !bytes.HasPrefix(buf[:n], []byte("SIP/2.0 200")) {
		t.Fatalf("an ordinary client got no 200 after the scan: %v %q", err, buf[:n])
	}
}
