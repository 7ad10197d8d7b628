//go:build race

package rawudp_test

const raceEnabled = true
