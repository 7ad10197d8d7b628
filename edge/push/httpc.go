package push

import (
	"crypto/tls"
	"io"
	"net"
	"net/http"
	"strconv"
	"strings"
	"time"
)

// maxResponse is as much of a response body as is read: push services
// answer with a few hundred bytes of JSON.
const maxResponse = 64 << 10

// newClient is an HTTP client for one push service: no redirects (no
// push service redirects, and a redirect must not carry a bearer token
// elsewhere), a timeout per request, TLS 1.2 or later. h2only refuses
// HTTP/1.1, as APNs does.
func newClient(base *tls.Config, timeout time.Duration, h2only bool) *http.Client {
	tc := &tls.Config{MinVersion: tls.VersionTLS12}
	if base != nil {
		tc = base.Clone()
		if tc.MinVersion < tls.VersionTLS12 {
			tc.MinVersion = tls.VersionTLS12
		}
	}
	dialer := &net.Dialer{Timeout: min(timeout, 5*time.Second), KeepAlive: 30 * time.Second}
	t := &http.Transport{
		Proxy:               http.ProxyFromEnvironment,
		DialContext:         dialer.DialContext,
		TLSClientConfig:     tc,
		TLSHandshakeTimeout: min(timeout, 5*time.Second),
		MaxIdleConnsPerHost: 4,
		IdleConnTimeout:     5 * time.Minute,
		ForceAttemptHTTP2:   true,
		// A connection idle for a minute is pinged before it is used
		// again, so a push never waits on one a NAT has silently dropped.
		HTTP2: &http.HTTP2Config{SendPingTimeout: time.Minute, PingTimeout: 5 * time.Second},
	}
	if h2only {
		var p http.Protocols
		p.SetHTTP2(true)
		t.Protocols = &p
	}
	return &http.Client{
		Transport:     t,
		Timeout:       timeout,
		CheckRedirect: func(*http.Request, []*http.Request) error { return http.ErrUseLastResponse },
	}
}

// readBody reads at most maxResponse bytes of resp's body and closes it.
func readBody(resp *http.Response) []byte {
	defer resp.Body.Close()
	b, _ := io.ReadAll(io.LimitReader(resp.Body, maxResponse))
	return b
}

// code keeps an error code from a response: letters, digits, '_', '.',
// '-', at most 64 of them; anything else makes it "". A response is the
// service's text, not ours, and it ends up in logs.
func code(s string) string {
	if len(s) > 64 {
		return ""
	}
	for i := 0; i < len(s); i++ {
		if c := s[i]; !('a' <= c && c <= 'z' || 'A' <= c && c <= 'Z' || '0' <= c && c <= '9' || c == '_' || c == '.' || c == '-') {
			return ""
		}
	}
	return s
}

// orStatus is reason, or the status's text when the service gave none.
func orStatus(reason string, status int) string {
	if reason != "" {
		return reason
	}
	if t := http.StatusText(status); t != "" {
		return strings.ReplaceAll(t, " ", "")
	}
	return "HTTP" + strconv.Itoa(status)
}

// retryAfter reads a Retry-After header: seconds or an HTTP date.
func retryAfter(h http.Header, now time.Time) time.Duration {
	v := h.Get("Retry-After")
	if v == "" {
		return 0
	}
	if s, err := strconv.Atoi(v); err == nil && s >= 0 {
		return time.Duration(min(s, 86400)) * time.Second
	}
	if t, err := http.ParseTime(v); err == nil && t.After(now) {
		return min(t.Sub(now), 24*time.Hour)
	}
	return 0
}

// classify is the class of an HTTP error status with no better clue.
func classify(status int) Class {
	switch {
	case status == http.StatusTooManyRequests || status == http.StatusRequestTimeout || status >= 500:
		return Retry
	case status == http.StatusGone:
		return Gone
	}
	return Refused
}

// clip keeps at most n bytes of valid UTF-8 of s, cut on a rune boundary.
func clip(s string, n int) string {
	s = strings.ToValidUTF8(s, "\uFFFD")
	if len(s) <= n {
		return s
	}
	for n > 0 && s[n]&0xC0 == 0x80 {
		n--
	}
	return s[:n]
}
