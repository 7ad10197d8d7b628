//go:build !linux

package udptx

import "net"

// NewRawSender is c itself where the raw sendto is not written.
func NewRawSender(c *net.UDPConn) Conn { return c }

const isLinux = false
