package udptx

import (
	"net"
	"net/netip"
	"syscall"
	"unsafe"
)

// RawSender is a UDP socket whose datagrams are sent with a raw sendto:
// no entersyscall and exitsyscall around it. On the loopback, and on any
// socket whose receiver is local, sendto does the receiver's work too and
// takes tens of microseconds; past 20 the runtime's monitor hands the
// sender's P to another thread, and the sender, back from the kernel,
// waits for a P. Under load that wait was the edge's largest scheduling
// delay (go tool trace). A non-blocking sendto never blocks: a full
// buffer is EAGAIN, which waits for the socket in the netpoller as
// net's own write does.
type RawSender struct {
	*net.UDPConn
	rc    syscall.RawConn
	inet6 bool // AF_INET6 (dual stack: IPv4 goes as v4-mapped)
}

// NewRawSender wraps c; if its descriptor cannot be reached, c's own
// WriteToUDPAddrPort stays in use.
func NewRawSender(c *net.UDPConn) Conn {
	rc, err := c.SyscallConn()
	if err != nil {
		return c
	}
	domain := -1
	if err := rc.Control(func(fd uintptr) {
		domain, err = syscall.GetsockoptInt(int(fd), syscall.SOL_SOCKET, syscall.SO_DOMAIN)
	}); err != nil || (domain != syscall.AF_INET && domain != syscall.AF_INET6) {
		return c
	}
	return &RawSender{UDPConn: c, rc: rc, inet6: domain == syscall.AF_INET6}
}

// WriteToUDPAddrPort sends b to addr.
func (s *RawSender) WriteToUDPAddrPort(b []byte, addr netip.AddrPort) (int, error) {
	if len(b) == 0 || !addr.IsValid() {
		return s.UDPConn.WriteToUDPAddrPort(b, addr)
	}
	var sa syscall.RawSockaddrInet6 // the larger; an IPv4 one fits in it
	var salen uintptr
	ip, port := addr.Addr(), addr.Port()
	switch {
	case s.inet6:
		sa.Family = syscall.AF_INET6
		sa.Addr = ip.As16() // an IPv4 address comes out v4-mapped
		if z := ip.Zone(); z != "" {
			ifi, err := net.InterfaceByName(z)
			if err != nil {
				return s.UDPConn.WriteToUDPAddrPort(b, addr)
			}
			sa.Scope_id = uint32(ifi.Index)
		}
		salen = syscall.SizeofSockaddrInet6
	case ip.Unmap().Is4():
		sa4 := (*syscall.RawSockaddrInet4)(unsafe.Pointer(&sa))
		sa4.Family = syscall.AF_INET
		sa4.Addr = ip.Unmap().As4()
		salen = syscall.SizeofSockaddrInet4
	default:
		return s.UDPConn.WriteToUDPAddrPort(b, addr) // IPv6 on an IPv4 socket: net's error
	}
	// sin_port and sin6_port sit at the same offset, in network order.
	p := (*[2]byte)(unsafe.Pointer(&sa.Port))
	p[0], p[1] = byte(port>>8), byte(port)

	var n int
	var errno syscall.Errno
	err := s.rc.Write(func(fd uintptr) bool {
		r, _, e := syscall.RawSyscall6(syscall.SYS_SENDTO, fd, uintptr(unsafe.Pointer(&b[0])), uintptr(len(b)),
			0, uintptr(unsafe.Pointer(&sa)), salen)
		if e == syscall.EAGAIN {
			return false // wait until the socket takes more
		}
		n, errno = int(r), e
		return true
	})
	if err != nil {
		return 0, err
	}
	if errno != 0 {
		return 0, &net.OpError{Op: "write", Net: "udp", Source: s.LocalAddr(), Addr: net.UDPAddrFromAddrPort(addr), Err: errno}
	}
	return n, nil
}

const isLinux = true
