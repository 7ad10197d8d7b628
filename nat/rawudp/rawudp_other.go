//go:build !linux

package rawudp

import (
	"net/netip"
	"syscall"
)

type sockaddr struct{}

func (s *sockaddr) set(netip.AddrPort, bool) bool { return false }
func (s *sockaddr) addrPort() netip.AddrPort      { return netip.AddrPort{} }
func (o *op) recvfrom(uintptr) bool               { return true }
func (o *op) sendto(uintptr) bool                 { return true }

// family: raw calls are Linux's only here.
func family(syscall.RawConn) (v6, ok bool) { return false, false }
