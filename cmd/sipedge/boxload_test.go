package main

import (
	"fmt"
	"os"
	"strconv"
	"strings"
)

// boxTicks is the whole machine's CPU time so far, from the first line
// of /proc/stat, in clock ticks: what every CPU spent busy (user, nice,
// system, irq, softirq), taken by the hypervisor (steal), and in all.
// The comparison's latency depends on how busy the box is (sipp, the
// core and the edge share it), so each run says so.
type boxTicks struct{ busy, steal, total uint64 }

// parseBoxTicks reads the "cpu" line of /proc/stat: user nice system
// idle iowait irq softirq steal [guest guest_nice]; guest time is
// already part of user.
func parseBoxTicks(stat string) (boxTicks, error) {
	line, _, _ := strings.Cut(stat, "\n")
	f := strings.Fields(line)
	if len(f) < 9 || f[0] != "cpu" {
		return boxTicks{}, fmt.Errorf("/proc/stat: no cpu line in %q", line)
	}
	var v [8]uint64
	for i := range v {
		n, err := strconv.ParseUint(f[i+1], 10, 64)
		if err != nil {
			return boxTicks{}, fmt.Errorf("/proc/stat: %w", err)
		}
		v[i] = n
	}
	user, nice, system, idle, iowait, irq, softirq, steal := v[0], v[1], v[2], v[3], v[4], v[5], v[6], v[7]
	return boxTicks{
		busy:  user + nice + system + irq + softirq,
		steal: steal,
		total: user + nice + system + idle + iowait + irq + softirq + steal,
	}, nil
}

func readBoxTicks() (boxTicks, error) {
	b, err := os.ReadFile("/proc/stat")
	if err != nil {
		return boxTicks{}, err
	}
	return parseBoxTicks(string(b))
}

// since is the share of all CPUs that was busy, and stolen, from a to b,
// in per cent (0, 0 when no tick passed).
func (b boxTicks) since(a boxTicks) (busy, steal float64) {
	if b.total <= a.total {
		return 0, 0
	}
	d := float64(b.total - a.total)
	return 100 * float64(b.busy-a.busy) / d, 100 * float64(b.steal-a.steal) / d
}
