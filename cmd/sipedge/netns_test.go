//go:build interop || bench || natlab

package main

import (
	"encoding/binary"
	"fmt"
	"math/rand/v2"
	"net/netip"
	"os"
	"runtime"
	"testing"
	"time"

	"golang.org/x/sys/unix"
)

// newNetns makes a network namespace with only loopback, up, for a test
// whose traffic must stay its own (spoofed sources): deleted when the
// test ends, after the processes in it stopped (cleanups run in reverse).
// Needs root: missing, it skips, or fails under CI=true.
func newNetns(t *testing.T, prefix string) string {
	t.Helper()
	var missing []string
	if os.Geteuid() != 0 {
		missing = append(missing, "root (network namespaces)")
	}
	requireTools(t, "the test needs %s (Debian package: iproute2)", missing, "ip")
	ns := fmt.Sprintf("%s-%d-%04x", prefix, os.Getpid(), rand.IntN(1<<16))
	if out, err := runBounded(10*time.Second, "", "ip", "netns", "add", ns); err != nil {
		t.Fatalf("ip netns add %s: %v\n%s", ns, err, out)
	}
	t.Cleanup(func() {
		if out, err := runBounded(10*time.Second, "", "ip", "netns", "del", ns); err != nil {
			t.Errorf("ip netns del %s: %v\n%s", ns, err, out)
		}
	})
	if out, err := runBounded(10*time.Second, "", "ip", "-n", ns, "link", "set", "lo", "up"); err != nil {
		t.Fatalf("lo up in %s: %v\n%s", ns, err, out)
	}
	return ns
}

// enterNetns moves the calling goroutine into ns for the rest of its
// life: it is locked to its thread, which is switched to ns and never
// unlocked, so Go discards the thread when the goroutine (a test or
// subtest) ends. Every socket the goroutine opens from then on is in ns.
// Goroutines it starts are not.
func enterNetns(t *testing.T, ns string) {
	t.Helper()
	runtime.LockOSThread()
	fd, err := unix.Open("/run/netns/"+ns, unix.O_RDONLY|unix.O_CLOEXEC, 0)
	if err != nil {
		t.Fatalf("open netns %s: %v", ns, err)
	}
	defer unix.Close(fd)
	if err := unix.Setns(fd, unix.CLONE_NEWNET); err != nil {
		t.Fatalf("setns %s: %v", ns, err)
	}
}

// spoofer sends UDP datagrams with any IPv4 source from a raw socket
// (IP_HDRINCL): the forged sources of the attack tests. Make it after
// enterNetns, so it lives in the test's namespace.
type spoofer struct{ fd int }

func newSpoofer(t *testing.T) *spoofer {
	t.Helper()
	fd, err := unix.Socket(unix.AF_INET, unix.SOCK_RAW|unix.SOCK_CLOEXEC, unix.IPPROTO_RAW)
	if err != nil {
		t.Fatalf("raw socket: %v", err)
	}
	t.Cleanup(func() { unix.Close(fd) })
	return &spoofer{fd: fd}
}

// send writes payload from src to dst, both IPv4.
func (s *spoofer) send(src, dst netip.AddrPort, payload []byte) error {
	pkt := make([]byte, 28+len(payload))
	ip := pkt[:20]
	ip[0] = 0x45 // IPv4, 5 words
	binary.BigEndian.PutUint16(ip[2:], uint16(len(pkt)))
	ip[8] = 64 // TTL
	ip[9] = unix.IPPROTO_UDP
	s4, d4 := src.Addr().As4(), dst.Addr().As4()
	copy(ip[12:16], s4[:])
	copy(ip[16:20], d4[:])
	// The kernel fills the IP checksum (and the ID) with IP_HDRINCL; a
	// zero UDP checksum means none, which IPv4 allows.
	udp := pkt[20:28]
	binary.BigEndian.PutUint16(udp[0:], src.Port())
	binary.BigEndian.PutUint16(udp[2:], dst.Port())
	binary.BigEndian.PutUint16(udp[4:], uint16(8+len(payload)))
	copy(pkt[28:], payload)
	return unix.Sendto(s.fd, pkt, 0, &unix.SockaddrInet4{Addr: d4})
}
