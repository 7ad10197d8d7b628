// Package rawudp reads and sends datagrams on a UDP socket with raw
// system calls, under Go's poller as usual (a socket with nothing to
// read, or no room to send, parks the goroutine until it has).
//
// Why: a plain system call marks the goroutine as in one, and Go's
// monitor hands its processor to another thread when the call lasts past
// a tick (20 µs at first), as it does when the thread loses the CPU
// inside it on a busy machine; the hand-off wakes a thread, and the
// caller, back, parks its own. Non-blocking UDP calls need none of that.
// At 3,000 registrations/s the edge spent a sixth less CPU with its
// reads and sends here (the reads carry it: sends alone measured the
// same as plain ones).
package rawudp

import (
	"net"
	"net/netip"
	"os"
	"sync"
	"syscall"
)

// Conn is a *net.UDPConn whose ReadFromUDPAddrPort, WriteToUDPAddrPort
// and WriteTo (sipgo's) use raw system calls. Everything else is the
// socket's own. Safe for concurrent use.
type Conn struct {
	*net.UDPConn
	rc  syscall.RawConn
	v6  bool      // the socket is AF_INET6: IPv4 peers as mapped addresses
	ops sync.Pool // *op
}

// New wraps c. Where raw calls are not available (not Linux) or c's
// family cannot be told, it returns nil: use c as it is.
func New(c *net.UDPConn) *Conn {
	rc, err := c.SyscallConn()
	if err != nil {
		return nil
	}
	v6, ok := family(rc)
	if !ok {
		return nil
	}
	return &Conn{UDPConn: c, rc: rc, v6: v6}
}

// op is one call's arguments and results: the functions handed to the
// RawConn are made once per op, and ops are pooled, so a call allocates
// nothing.
type op struct {
	b     []byte
	sa    sockaddr
	n     int
	errno syscall.Errno
	read  func(fd uintptr) bool
	write func(fd uintptr) bool
}

func (c *Conn) get() *op {
	if o, _ := c.ops.Get().(*op); o != nil {
		return o
	}
	o := &op{}
	o.read, o.write = o.recvfrom, o.sendto
	return o
}

func (c *Conn) put(o *op) {
	o.b, o.n, o.errno = nil, 0, 0
	c.ops.Put(o)
}

// ReadFromUDPAddrPort reads a datagram as (*net.UDPConn).ReadFromUDPAddrPort
// does, with the socket's deadline.
func (c *Conn) ReadFromUDPAddrPort(b []byte) (int, netip.AddrPort, error) {
	o := c.get()
	o.b = b
	err := c.rc.Read(o.read)
	n, errno, from := o.n, o.errno, o.sa.addrPort()
	c.put(o)
	if err == nil && errno != 0 {
		err = os.NewSyscallError("recvfrom", errno)
	}
	if err != nil {
		return 0, netip.AddrPort{}, &net.OpError{Op: "read", Net: "udp", Source: c.LocalAddr(), Err: err}
	}
	return n, from, nil
}

// WriteToUDPAddrPort sends b to addr as (*net.UDPConn).WriteToUDPAddrPort
// does.
func (c *Conn) WriteToUDPAddrPort(b []byte, addr netip.AddrPort) (int, error) {
	o := c.get()
	if !o.sa.set(addr, c.v6) {
		c.put(o)
		return c.UDPConn.WriteToUDPAddrPort(b, addr) // says why not
	}
	o.b = b
	err := c.rc.Write(o.write)
	n, errno := o.n, o.errno
	c.put(o)
	if err == nil && errno != 0 {
		err = os.NewSyscallError("sendto", errno)
	}
	if err != nil {
		return 0, &net.OpError{Op: "write", Net: "udp", Source: c.LocalAddr(), Addr: net.UDPAddrFromAddrPort(addr), Err: err}
	}
	return n, nil
}

// WriteTo is net.PacketConn's send, the one sipgo uses.
func (c *Conn) WriteTo(b []byte, addr net.Addr) (int, error) {
	if a, ok := addr.(*net.UDPAddr); ok && a != nil && a.IP != nil {
		return c.WriteToUDPAddrPort(b, a.AddrPort())
	}
	return c.UDPConn.WriteTo(b, addr)
}
