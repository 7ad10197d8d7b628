package ratelimit

import (
	"errors"
	"fmt"
	"math"
	"net/netip"
	"strings"
	"time"
)

// Budget is a token bucket: Burst at once, refilled at Rate per second.
type Budget struct {
	Rate  float64 `toml:"rate"`
	Burst int     `toml:"burst"`
}

// Config is the [ratelimit] section. Every per-source budget is what a
// source with no registered bindings gets; see BindingWeight for how
// bindings enlarge it. README.md documents each key.
type Config struct {
	// Allow lists CIDRs (or single addresses) that are never limited and
	// never banned.
	Allow []string `toml:"allow"`

	// MaxSources caps the sources tracked individually. Beyond it, new
	// sources share one overflow budget (OverflowShare). Sources holding
	// bindings are always tracked and do not count against the cap.
	MaxSources int `toml:"max_sources"`
	// MaxAORs caps the addresses-of-record tracked for register_rate and
	// aor_auth_failures. Beyond it, untracked AORs are not AOR-limited
	// (the per-source limits still apply).
	MaxAORs int `toml:"max_aors"`
	// MaxBans caps automatic ban records, active or kept for escalation.
	// At the cap a new offender is dropped but not banned.
	MaxBans int `toml:"max_bans"`

	// BindingWeight: a source holding n bindings gets every per-source
	// budget (rates, bursts, max_conns, auth_failures) multiplied by
	// 1 + binding_weight*min(n, max_bindings).
	BindingWeight float64 `toml:"binding_weight"`
	// MaxBindings caps the n used above.
	MaxBindings int `toml:"max_bindings"`
	// OverflowShare sizes the one budget that untracked sources share, as
	// a multiple of one unknown source's budget.
	OverflowShare float64 `toml:"overflow_share"`

	// Before parsing (UDP): datagrams and bytes per source.
	PacketRate  float64 `toml:"packet_rate"`
	PacketBurst int     `toml:"packet_burst"`
	ByteRate    float64 `toml:"byte_rate"`
	ByteBurst   int     `toml:"byte_burst"`
	// UnprovenRate caps the datagrams per second, over all sources,
	// taken from sources that proved nothing yet (no registered flow):
	// a spoofed flood from many addresses, each under its own budget,
	// cannot hand the parser more than this. Registered phones never
	// compete for it; new registrations do, during such a flood.
	UnprovenRate  float64 `toml:"unproven_rate"`
	UnprovenBurst int     `toml:"unproven_burst"`

	// Before parsing (TCP, TLS, WS): new connections per source, and how
	// many it may hold open at once.
	ConnRate  float64 `toml:"conn_rate"`
	ConnBurst int     `toml:"conn_burst"`
	MaxConns  int     `toml:"max_conns"`

	// After parsing: requests of any method per source.
	RequestRate  float64 `toml:"request_rate"`
	RequestBurst int     `toml:"request_burst"`
	// Each method named in Methods has its own per-source budget; all
	// other non-REGISTER methods share MethodRate/MethodBurst.
	MethodRate  float64           `toml:"method_rate"`
	MethodBurst int               `toml:"method_burst"`
	Methods     map[string]Budget `toml:"methods"`
	// REGISTERs per address-of-record, whatever the source (not scaled by
	// bindings).
	RegisterRate  float64 `toml:"register_rate"`
	RegisterBurst int     `toml:"register_burst"`

	// Over a limit, a request is answered 503 while the source's reply
	// budget lasts, and dropped silently after that.
	ReplyRate  float64 `toml:"reply_rate"`
	ReplyBurst int     `toml:"reply_burst"`
	// RetryAfter goes in those 503s, randomised by ±RetryJitter (a
	// fraction) so that rejected clients do not return together.
	RetryAfter  time.Duration `toml:"retry_after"`
	RetryJitter float64       `toml:"retry_jitter"`

	// MaxInflight caps requests forwarded to the core and not yet
	// answered. InflightTime raises that cap to as many as the core
	// answered in so long at its recent pace, when that is more (at
	// most ten times MaxInflight; 0: MaxInflight only).
	MaxInflight  int           `toml:"max_inflight"`
	InflightTime time.Duration `toml:"inflight_time"`

	// FloodWindow: a proven source over any per-source limit, without a
	// pause of a second or more, for this long is banned.
	FloodWindow time.Duration `toml:"flood_window"`

	// Bans last BanTime * 2^(n-1) for the n-th ban of the same source, at
	// most BanMax. A source's ban count is forgotten BanForget after its
	// last ban ends.
	BanTime   time.Duration `toml:"ban_time"`
	BanMax    time.Duration `toml:"ban_max"`
	BanForget time.Duration `toml:"ban_forget"`
	// BanBound allows automatic bans of sources that hold bindings. Off,
	// such sources are only limited: a spoofed flood or one misconfigured
	// phone must not lock a whole office out.
	BanBound bool `toml:"ban_bound"`

	// AuthFailures failed authentications by one source within AuthWindow
	// ban it; AORAuthFailures on one address-of-record, from any sources,
	// ban each further source that fails on it.
	AuthFailures    int           `toml:"auth_failures"`
	AORAuthFailures int           `toml:"aor_auth_failures"`
	AuthWindow      time.Duration `toml:"auth_window"`

	// MalformedLimit unparsable messages from one proven source within
	// MalformedWindow ban it (an unproven source's are not counted).
	MalformedLimit  int           `toml:"malformed_limit"`
	MalformedWindow time.Duration `toml:"malformed_window"`

	// ScannerUserAgents are matched case-insensitively as whole words in
	// the User-Agent; a match drops the request and bans the source if it
	// is proven.
	ScannerUserAgents []string `toml:"scanner_user_agents"`
}

// DefaultScannerUserAgents are the User-Agents of well-known SIP scanning
// and cracking tools. Real phones, PBXs and SDKs are deliberately absent
// (Cisco-SIPGateway, for one, is Cisco IOS voice gateways).
func DefaultScannerUserAgents() []string {
	return []string{
		"friendly-scanner", // SIPVicious svmap/svwar default
		"sipvicious",
		"sipcli",
		"sip-scan",
		"sundayddr",
		"iWar",
		"VaxSIPUserAgent",
		"pplsip",
		"siparmyknife",
		"SIPScan",
		"smap",
	}
}

// DefaultConfig is sized for one unknown phone per source, with bindings
// scaling budgets up for NATed sites. README.md explains each value.
func DefaultConfig() Config {
	return Config{
		Allow:         []string{},
		MaxSources:    100000,
		MaxAORs:       100000,
		MaxBans:       50000,
		BindingWeight: 0.5,
		MaxBindings:   1000,
		OverflowShare: 20,

		PacketRate:    50,
		PacketBurst:   200,
		UnprovenRate:  5000,
		UnprovenBurst: 1000,
		ByteRate:      64 << 10,
		ByteBurst:     256 << 10,

		ConnRate:  5,
		ConnBurst: 20,
		MaxConns:  20,

		RequestRate:  20,
		RequestBurst: 100,
		MethodRate:   5,
		MethodBurst:  20,
		Methods: map[string]Budget{
			"INVITE":    {Rate: 2, Burst: 10},
			"OPTIONS":   {Rate: 5, Burst: 20},
			"SUBSCRIBE": {Rate: 5, Burst: 100},
		},
		RegisterRate:  1,
		RegisterBurst: 20,

		ReplyRate:   1,
		ReplyBurst:  10,
		RetryAfter:  20 * time.Second,
		RetryJitter: 0.25,

		MaxInflight:  1000,
		InflightTime: time.Second,

		FloodWindow: 10 * time.Second,

		BanTime:   5 * time.Minute,
		BanMax:    24 * time.Hour,
		BanForget: 24 * time.Hour,

		AuthFailures:    10,
		AORAuthFailures: 20,
		AuthWindow:      time.Minute,

		MalformedLimit:  10,
		MalformedWindow: time.Minute,

		ScannerUserAgents: DefaultScannerUserAgents(),
	}
}

// maxNamedMethods is how many methods Config.Methods may name.
const maxNamedMethods = methodSlots - 1

// maxUDPPayload is the largest datagram: byte_burst must pass it.
const maxUDPPayload = 65535

// Validate reports every invalid key, each named "ratelimit.<key>".
func (c Config) Validate() error {
	v := &validator{}
	c.validateSources(v)
	c.validateBudgets(v)
	c.validateBans(v)
	return errors.Join(v.errs...)
}

// validator collects what is wrong with a config, each error naming its
// key.
type validator struct{ errs []error }

func (v *validator) bad(key, format string, a ...any) {
	v.errs = append(v.errs, fmt.Errorf("ratelimit.%s: %s", key, fmt.Sprintf(format, a...)))
}

func (v *validator) pos(key string, f float64) {
	if !(f > 0) || math.IsInf(f, 0) {
		v.bad(key, "must be > 0")
	}
}

func (v *validator) atLeast(key string, n, min int) {
	if n < min {
		v.bad(key, "must be >= %d", min)
	}
}

func (v *validator) dur(key string, d, min time.Duration) {
	if d < min {
		v.bad(key, "must be >= %s", min)
	}
}

// validateSources checks what bounds the tracked sources.
func (c Config) validateSources(v *validator) {
	for _, s := range c.Allow {
		if _, err := ParsePrefix(s); err != nil {
			v.bad("allow", "%q is not an address or CIDR", s)
		}
	}
	v.atLeast("max_sources", c.MaxSources, 1)
	v.atLeast("max_aors", c.MaxAORs, 1)
	v.atLeast("max_bans", c.MaxBans, 1)
	if !(c.BindingWeight >= 0) || math.IsInf(c.BindingWeight, 0) {
		v.bad("binding_weight", "must be >= 0")
	}
	v.atLeast("max_bindings", c.MaxBindings, 0)
	if !(c.OverflowShare >= 1) || math.IsInf(c.OverflowShare, 0) {
		v.bad("overflow_share", "must be >= 1")
	}
}

// validateBudgets checks the per-source rates and bursts.
func (c Config) validateBudgets(v *validator) {
	v.pos("packet_rate", c.PacketRate)
	v.atLeast("packet_burst", c.PacketBurst, 1)
	v.pos("unproven_rate", c.UnprovenRate)
	v.atLeast("unproven_burst", c.UnprovenBurst, 1)
	v.pos("byte_rate", c.ByteRate)
	v.atLeast("byte_burst", c.ByteBurst, maxUDPPayload) // one datagram of any size must fit
	v.pos("conn_rate", c.ConnRate)
	v.atLeast("conn_burst", c.ConnBurst, 1)
	v.atLeast("max_conns", c.MaxConns, 1)
	v.pos("request_rate", c.RequestRate)
	v.atLeast("request_burst", c.RequestBurst, 1)
	v.pos("method_rate", c.MethodRate)
	v.atLeast("method_burst", c.MethodBurst, 1)
	if len(c.Methods) > maxNamedMethods {
		v.bad("methods", "names %d methods, at most %d", len(c.Methods), maxNamedMethods)
	}
	for m, b := range c.Methods {
		switch {
		case !isToken(m):
			v.bad("methods", "%q is not a SIP method name", m)
		case m == "REGISTER":
			v.bad("methods.REGISTER", "REGISTER is limited by request_rate and register_rate")
		default:
			v.pos("methods."+m+".rate", b.Rate)
			v.atLeast("methods."+m+".burst", b.Burst, 1)
		}
	}
}

// validateBans checks the AOR, reply, ban and scoring settings.
func (c Config) validateBans(v *validator) {
	v.pos("register_rate", c.RegisterRate)
	v.atLeast("register_burst", c.RegisterBurst, 1)
	v.pos("reply_rate", c.ReplyRate)
	v.atLeast("reply_burst", c.ReplyBurst, 0)
	v.dur("retry_after", c.RetryAfter, time.Second)
	if !(c.RetryJitter >= 0 && c.RetryJitter < 1) {
		v.bad("retry_jitter", "must be in [0, 1)")
	}
	v.atLeast("max_inflight", c.MaxInflight, 1)
	v.dur("inflight_time", c.InflightTime, 0)
	v.dur("flood_window", c.FloodWindow, time.Second)
	v.dur("ban_time", c.BanTime, time.Second)
	if c.BanMax < c.BanTime {
		v.bad("ban_max", "must be >= ban_time (%s)", c.BanTime)
	}
	v.dur("ban_forget", c.BanForget, 0)
	v.atLeast("auth_failures", c.AuthFailures, 1)
	v.atLeast("aor_auth_failures", c.AORAuthFailures, 1)
	v.dur("auth_window", c.AuthWindow, time.Second)
	v.atLeast("malformed_limit", c.MalformedLimit, 1)
	v.dur("malformed_window", c.MalformedWindow, time.Second)
	for _, s := range c.ScannerUserAgents {
		if strings.TrimSpace(s) == "" {
			v.bad("scanner_user_agents", "empty pattern")
		} else if len(s) > maxPatternLen {
			v.bad("scanner_user_agents", "%q is longer than %d bytes", s, maxPatternLen)
		}
	}
}

// ParsePrefix parses a CIDR ("10.0.0.0/8", host bits masked off) or a bare
// address (a single host, any zone dropped), as in the allow list. An
// IPv4-mapped IPv6 address, or a mapped prefix of /96 or longer, becomes
// IPv4, as sources are compared unmapped ("::ffff:10.0.0.0/104" is
// 10.0.0.0/8).
func ParsePrefix(s string) (netip.Prefix, error) {
	if strings.Contains(s, "/") {
		p, err := netip.ParsePrefix(s)
		if err != nil {
			return netip.Prefix{}, err
		}
		return normPrefix(p), nil
	}
	a, err := netip.ParseAddr(s)
	if err != nil {
		return netip.Prefix{}, err
	}
	return normPrefix(netip.PrefixFrom(a, a.BitLen())), nil
}

// normPrefix masks p and turns an IPv4-mapped prefix into IPv4, so that it
// matches unmapped sources.
func normPrefix(p netip.Prefix) netip.Prefix {
	a := p.Addr().WithZone("")
	if a.Is4In6() && p.Bits() >= 96 {
		return netip.PrefixFrom(a.Unmap(), p.Bits()-96).Masked()
	}
	return netip.PrefixFrom(a, p.Bits()).Masked()
}

// isToken reports whether s is a SIP token (RFC 3261 §25.1), as method
// names are.
func isToken(s string) bool {
	if s == "" {
		return false
	}
	for i := 0; i < len(s); i++ {
		c := s[i]
		switch {
		case 'a' <= c && c <= 'z', 'A' <= c && c <= 'Z', '0' <= c && c <= '9':
		case strings.IndexByte("-.!%*_+`'~", c) >= 0:
		default:
			return false
		}
	}
	return true
}
