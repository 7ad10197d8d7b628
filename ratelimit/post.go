package ratelimit

// The limits applied after parsing (a source's request rate and method
// budgets, an AOR's REGISTER rate) are GCRA buckets like the others
// (bucket.go), guarded by the lock of what holds them (a shard, overMu,
// an AOR shard). A source's are made lazily: it gets its reqLimits, one
// 56-byte slot in its shard's slab, on its first parsed request, so
// sources that only send datagrams or open connections (a spoofed flood)
// cost none of them. An AOR's REGISTER bucket is a tat in its entry, zero
// (full) until its first REGISTER. Sweep frees a source's slot once every
// bucket in it is full: a slot not made yet, or dropped, is a full one.

// postSlots is the request-rate bucket (slot 0), then the method budgets
// (slot 1 + methodSlot).
const postSlots = 1 + methodSlots

// reqLimits is the tats of a source's post-parse buckets, zero (full)
// until first charged. The binding factor is applied per call.
type reqLimits [postSlots]int64

// idle reports whether every bucket of rq is full at now.
func (rq *reqLimits) idle(now int64) bool {
	for _, tat := range rq {
		if tat > now {
			return false
		}
	}
	return true
}

// reqsOf returns e's post-parse buckets, giving it a slot on its first
// parsed request. sh.mu must be held; the pointer is valid until the slab
// changes (the next reqsOf or compact).
func (sh *shard) reqsOf(e *entry) *reqLimits {
	if e.req == 0 {
		if n := len(sh.reqFree); n > 0 {
			e.req = sh.reqFree[n-1] + 1
			sh.reqFree = sh.reqFree[:n-1]
		} else {
			sh.reqs = append(sh.reqs, reqLimits{})
			e.req = int32(len(sh.reqs))
		}
	}
	return &sh.reqs[e.req-1]
}

// dropReqs frees e's post-parse buckets. sh.mu must be held.
func (sh *shard) dropReqs(e *entry) {
	if e.req == 0 {
		return
	}
	sh.reqs[e.req-1] = reqLimits{}
	sh.reqFree = append(sh.reqFree, e.req-1)
	e.req = 0
}
