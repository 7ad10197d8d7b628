package push

import (
	"errors"
	"fmt"
	"net"
	"net/url"
	"strings"
	"time"
)

// Config is this package's part of the [push] section: which services
// pushes go through and their credentials. Credentials are named by file,
// never written in the config: the files are read once, by New.
type Config struct {
	// Timeout bounds one push: the request to the service, and the
	// access-token request before it when one is due.
	Timeout time.Duration `toml:"timeout"`
	// TTL is how long the push service may keep a push for a phone that
	// is offline (apns-expiration, FCM android.ttl); 0 means now or never.
	// Longer than the edge holds a request, a push is only a late ring.
	TTL time.Duration `toml:"ttl"`

	// GatewayURL receives each push as a JSON POST: for pn-providers
	// without their own sender here (and for all, when none is
	// configured). https, or http to a loopback address (a local relay).
	GatewayURL string `toml:"gateway_url"`
	// GatewayTokenFile holds a bearer token sent to the gateway.
	GatewayTokenFile string `toml:"gateway_token_file"`

	// FCMServiceAccountFile is a Google service-account key (JSON, as the
	// Firebase console downloads it), allowed to send FCM messages.
	FCMServiceAccountFile string `toml:"fcm_service_account_file"`
	// FCMProjects are the projects (pn-param) pushes may go to; empty
	// means the service account's own project.
	FCMProjects []string `toml:"fcm_projects"`

	// APNsKeyFile is the token-signing key Apple issued (.p8), APNsKeyID
	// its 10-character key ID, APNsTeamID the team's 10-character ID.
	APNsKeyFile string `toml:"apns_key_file"`
	APNsKeyID   string `toml:"apns_key_id"`
	APNsTeamID  string `toml:"apns_team_id"`
	// APNsSandbox sends every push to Apple's development server (apps
	// built by Xcode for debugging); otherwise only pn-provider
	// "apns.dev" (a Flexisip convention) goes there.
	APNsSandbox bool `toml:"apns_sandbox"`
	// APNsBundleIDs, if set, are the apps (bundle IDs) pushes may go to;
	// empty means any app of the team.
	APNsBundleIDs []string `toml:"apns_bundle_ids"`
}

// DefaultConfig pushes through nothing; a push times out after 10 s and
// lives 30 s at the service.
func DefaultConfig() Config {
	return Config{Timeout: 10 * time.Second, TTL: 30 * time.Second}
}

// APNs reports whether pushes go straight to Apple.
func (c Config) APNs() bool { return c.APNsKeyFile != "" }

// FCM reports whether pushes go straight to Google.
func (c Config) FCM() bool { return c.FCMServiceAccountFile != "" }

// Gateway reports whether a push gateway is configured.
func (c Config) Gateway() bool { return c.GatewayURL != "" }

// Validate names every invalid key and why. It reads no file: New does.
func (c Config) Validate() error {
	var errs []error
	bad := func(key, format string, args ...any) {
		errs = append(errs, fmt.Errorf("push.%s: "+format, append([]any{key}, args...)...))
	}
	if c.Timeout < time.Second || c.Timeout > time.Minute {
		bad("timeout", "%s is outside 1s..1m", c.Timeout)
	}
	if c.TTL < 0 || c.TTL > time.Hour {
		bad("ttl", "%s is outside 0s..1h", c.TTL)
	}

	if c.GatewayURL != "" {
		if err := checkGatewayURL(c.GatewayURL); err != nil {
			bad("gateway_url", "%v", err)
		}
	} else if c.GatewayTokenFile != "" {
		bad("gateway_token_file", "is set but push.gateway_url is not")
	}

	if !c.FCM() && len(c.FCMProjects) > 0 {
		bad("fcm_projects", "is set but push.fcm_service_account_file is not")
	}
	for _, p := range c.FCMProjects {
		if !validProject(p) {
			bad("fcm_projects", "%q is not a project ID or number", p)
		}
	}

	apnsSet := c.APNsKeyFile != "" || c.APNsKeyID != "" || c.APNsTeamID != "" || c.APNsSandbox || len(c.APNsBundleIDs) > 0
	if apnsSet {
		if c.APNsKeyFile == "" {
			bad("apns_key_file", "is required with the other apns_ keys")
		}
		if !appleID(c.APNsKeyID) {
			bad("apns_key_id", "%q is not a 10-character Apple key ID", c.APNsKeyID)
		}
		if !appleID(c.APNsTeamID) {
			bad("apns_team_id", "%q is not a 10-character Apple team ID", c.APNsTeamID)
		}
	}
	for _, b := range c.APNsBundleIDs {
		if !validBundle(b) || strings.HasSuffix(b, ".voip") {
			bad("apns_bundle_ids", "%q is not a bundle ID (without .voip)", b)
		}
	}
	return errors.Join(errs...)
}

// checkGatewayURL wants https, or http to a loopback host, and no
// credentials in the URL (they belong in gateway_token_file).
func checkGatewayURL(s string) error {
	u, err := url.Parse(s)
	if err != nil {
		return errors.New("not a URL")
	}
	if u.Host == "" || u.Opaque != "" {
		return errors.New("not an absolute http(s) URL")
	}
	if u.User != nil {
		return errors.New("carries credentials: put a token in push.gateway_token_file")
	}
	switch u.Scheme {
	case "https":
	case "http":
		if !loopbackHost(u.Hostname()) {
			return errors.New("plain http is allowed only to a loopback address")
		}
	default:
		return fmt.Errorf("scheme %q is not https", u.Scheme)
	}
	return nil
}

func loopbackHost(h string) bool {
	if h == "localhost" {
		return true
	}
	ip := net.ParseIP(h)
	return ip != nil && ip.IsLoopback()
}

// appleID is Apple's 10-character key or team identifier.
func appleID(s string) bool {
	if len(s) != 10 {
		return false
	}
	for i := 0; i < len(s); i++ {
		if c := s[i]; !('A' <= c && c <= 'Z' || '0' <= c && c <= '9') {
			return false
		}
	}
	return true
}

// validBundle is a bundle ID: reverse-DNS letters, digits, '-' and '.'.
func validBundle(s string) bool {
	if s == "" || len(s) > 155 || s[0] == '.' || s[len(s)-1] == '.' || strings.Contains(s, "..") {
		return false
	}
	for i := 0; i < len(s); i++ {
		if c := s[i]; !('a' <= c && c <= 'z' || 'A' <= c && c <= 'Z' || '0' <= c && c <= '9' || c == '-' || c == '.') {
			return false
		}
	}
	return true
}

// validProject is a Google Cloud project ID (lower case letters, digits
// and hyphens) or project number: it goes into the request path.
func validProject(s string) bool {
	if s == "" || len(s) > 63 {
		return false
	}
	for i := 0; i < len(s); i++ {
		if c := s[i]; !('a' <= c && c <= 'z' || '0' <= c && c <= '9' || c == '-') {
			return false
		}
	}
	return true
}
