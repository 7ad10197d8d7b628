package alert

import "time"

// SetBackoff shortens the webhook's retry pause for tests.
func SetBackoff(h *Webhook, d time.Duration) { h.backoff = d }
