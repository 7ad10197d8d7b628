package admin

// Subscribers is how many event streams are open, for tests that check
// a stream ends.
func (f *Feed) Subscribers() int {
	f.mu.Lock()
	defer f.mu.Unlock()
	return len(f.subs)
}
