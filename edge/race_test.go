//go:build race

package edge_test

// raceEnabled: the race detector makes the edge several times slower,
// so load tests scale their load down.
const raceEnabled = true
