//go:build unix

package nat

import "syscall"

// idleManyConns is how many connections TestStreamIdleMany opens: 2,000,
// or fewer if the descriptor limit (which Go raises to the hard one at
// start) would not leave room for both ends of each and 256 more.
func idleManyConns() int {
	var rl syscall.Rlimit
	if err := syscall.Getrlimit(syscall.RLIMIT_NOFILE, &rl); err != nil {
		return 200
	}
	return int(min(2000, max(100, (int64(rl.Cur)-256)/2)))
}
