package rawudp

import (
	"encoding/binary"
	"net/netip"
	"syscall"
	"unsafe"
)

// sockaddr holds a sockaddr_in or sockaddr_in6 and its length.
type sockaddr struct {
	raw syscall.RawSockaddrAny
	len uint32
}

// set makes s addr, in the socket's family; false if it cannot be (an
// IPv6 peer on an IPv4 socket, an invalid address).
func (s *sockaddr) set(addr netip.AddrPort, v6 bool) bool {
	ip := addr.Addr()
	switch {
	case !ip.IsValid():
		return false
	case v6:
		sa := (*syscall.RawSockaddrInet6)(unsafe.Pointer(&s.raw))
		*sa = syscall.RawSockaddrInet6{Family: syscall.AF_INET6, Addr: ip.As16()}
		binary.BigEndian.PutUint16((*[2]byte)(unsafe.Pointer(&sa.Port))[:], addr.Port())
		if z := ip.Zone(); z != "" {
			return false // a scoped address: the net package knows its interface
		}
		s.len = syscall.SizeofSockaddrInet6
	case ip.Unmap().Is4():
		sa := (*syscall.RawSockaddrInet4)(unsafe.Pointer(&s.raw))
		*sa = syscall.RawSockaddrInet4{Family: syscall.AF_INET, Addr: ip.Unmap().As4()}
		binary.BigEndian.PutUint16((*[2]byte)(unsafe.Pointer(&sa.Port))[:], addr.Port())
		s.len = syscall.SizeofSockaddrInet4
	default:
		return false
	}
	return true
}

// addrPort is the address recvfrom wrote (the zero AddrPort if none).
func (s *sockaddr) addrPort() netip.AddrPort {
	switch s.raw.Addr.Family {
	case syscall.AF_INET:
		sa := (*syscall.RawSockaddrInet4)(unsafe.Pointer(&s.raw))
		port := binary.BigEndian.Uint16((*[2]byte)(unsafe.Pointer(&sa.Port))[:])
		return netip.AddrPortFrom(netip.AddrFrom4(sa.Addr), port)
	case syscall.AF_INET6:
		sa := (*syscall.RawSockaddrInet6)(unsafe.Pointer(&s.raw))
		port := binary.BigEndian.Uint16((*[2]byte)(unsafe.Pointer(&sa.Port))[:])
		return netip.AddrPortFrom(netip.AddrFrom16(sa.Addr), port)
	}
	return netip.AddrPort{}
}

// recvfrom is the read given to the RawConn: false (wait) when nothing
// is there yet.
func (o *op) recvfrom(fd uintptr) bool { return o.call(fd, true) }

// sendto is the write given to the RawConn: false (wait) when the
// socket has no room.
func (o *op) sendto(fd uintptr) bool { return o.call(fd, false) }

// call makes the recvfrom (read) or sendto on fd, again if interrupted;
// false for EAGAIN. The two differ in the address length: recvfrom is
// given its place, sendto its value (pointers are converted only in the
// calls themselves, as unsafe's rules ask).
func (o *op) call(fd uintptr, read bool) bool {
	var p unsafe.Pointer
	if len(o.b) > 0 {
		p = unsafe.Pointer(&o.b[0])
	}
	for {
		var n uintptr
		var e syscall.Errno
		if read {
			o.sa.len = uint32(unsafe.Sizeof(o.sa.raw))
			o.sa.raw.Addr.Family = syscall.AF_UNSPEC
			n, _, e = syscall.RawSyscall6(syscall.SYS_RECVFROM, fd, uintptr(p), uintptr(len(o.b)), 0,
				uintptr(unsafe.Pointer(&o.sa.raw)), uintptr(unsafe.Pointer(&o.sa.len)))
		} else {
			n, _, e = syscall.RawSyscall6(syscall.SYS_SENDTO, fd, uintptr(p), uintptr(len(o.b)), 0,
				uintptr(unsafe.Pointer(&o.sa.raw)), uintptr(o.sa.len))
		}
		switch e {
		case syscall.EINTR:
			continue
		case syscall.EAGAIN:
			return false
		}
		o.n, o.errno = int(n), e
		return true
	}
}

// family tells the socket's address family: v6 for AF_INET6.
func family(rc syscall.RawConn) (v6, ok bool) {
	var dom int
	var err error
	if cerr := rc.Control(func(fd uintptr) {
		dom, err = syscall.GetsockoptInt(int(fd), syscall.SOL_SOCKET, syscall.SO_DOMAIN)
	}); cerr != nil || err != nil {
		return false, false
	}
	switch dom {
	case syscall.AF_INET:
		return false, true
	case syscall.AF_INET6:
		return true, true
	}
	return false, false
}
