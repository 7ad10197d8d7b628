//go:build !unix

package nat

// idleManyConns is how many connections TestStreamIdleMany opens.
func idleManyConns() int { return 500 }
