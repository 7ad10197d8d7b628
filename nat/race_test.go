//go:build race

package nat

// raceEnabled: allocation counts are meaningless under -race (sync.Pool
// drops items at random).
const raceEnabled = true
