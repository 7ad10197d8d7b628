package main

import "testing"

func TestParseBoxTicks(t *testing.T) {
	a, err := parseBoxTicks("cpu  100 5 50 800 10 3 2 30 7 0\ncpu0 1 2 3 4 5 6 7 8 9 10\n")
	if err != nil {
		t.Fatal(err)
	}
	if a != (boxTicks{busy: 160, steal: 30, total: 1000}) {
		t.Fatalf("parsed %+v", a)
	}
	b, _ := parseBoxTicks("cpu  400 5 150 1100 10 3 2 130 7 0")
	busy, steal := b.since(a)
	if busy != 50 || steal != 12.5 {
		t.Fatalf("busy %v%%, steal %v%%; want 50, 12.5", busy, steal)
	}
	if busy, steal := a.since(a); busy != 0 || steal != 0 {
		t.Fatalf("no ticks: %v, %v", busy, steal)
	}
	for _, bad := range []string{"", "intr 1 2 3", "cpu 1 2 3", "cpu a b c d e f g h"} {
		if _, err := parseBoxTicks(bad); err == nil {
			t.Errorf("%q parsed", bad)
		}
	}
	if _, err := readBoxTicks(); err != nil {
		t.Fatal(err)
	}
}
