package main

import (
	"bytes"
	"os"
	"path/filepath"
	"reflect"
	"strings"
	"testing"
	"time"
)

// Every shipped config must load: the examples in docs are tested.
func TestShippedConfigsLoad(t *testing.T) {
	files, err := filepath.Glob("../../configs/*.toml")
	if err != nil || len(files) == 0 {
		t.Fatalf("no configs found: %v", err)
	}
	for _, f := range files {
		if _, err := loadConfig(f); err != nil {
			t.Errorf("%s: %v", f, err)
		}
	}
}

// The annotated example must show every default, so a reader can trust it.
func TestAnnotatedConfigIsTheDefault(t *testing.T) {
	cfg, err := loadConfig("../../configs/sipedge.toml")
	if err != nil {
		t.Fatal(err)
	}
	def, err := loadConfig("")
	if err != nil {
		t.Fatal(err)
	}
	if got, want := cfg.Core, def.Core; !reflect.DeepEqual(got, want) {
		t.Errorf("configs/sipedge.toml [core] = %+v, defaults = %+v", got, want)
	}
	if got, want := cfg.RateLimit, def.RateLimit; !reflect.DeepEqual(got, want) {
		t.Errorf("configs/sipedge.toml [ratelimit] = %+v, defaults = %+v", got, want)
	}
	if got, want := cfg.Drain, def.Drain; got != want {
		t.Errorf("configs/sipedge.toml [drain] = %+v, defaults = %+v", got, want)
	}
	if got, want := cfg.State, def.State; !reflect.DeepEqual(got, want) {
		t.Errorf("configs/sipedge.toml [state] = %+v, defaults = %+v", got, want)
	}
	if got, want := cfg.Admin, def.Admin; got != want {
		t.Errorf("configs/sipedge.toml [admin] = %+v, defaults = %+v", got, want)
	}
	if got, want := cfg.Alerts, def.Alerts; got != want {
		t.Errorf("configs/sipedge.toml [alerts] = %+v, defaults = %+v", got, want)
	}
	if got, want := cfg.Audit, def.Audit; got != want {
		t.Errorf("configs/sipedge.toml [audit] = %+v, defaults = %+v", got, want)
	}
	if got, want := cfg.NAT, def.NAT; got != want {
		t.Errorf("configs/sipedge.toml [nat] = %+v, defaults = %+v", got, want)
	}
	if got, want := cfg.Registration, def.Registration; got.MinExpires != want.MinExpires ||
		got.MaxExpires != want.MaxExpires || got.MaxContacts != want.MaxContacts {
		t.Errorf("configs/sipedge.toml [registration] = %+v, defaults = %+v", got, want)
	}
}

func TestConfigErrors(t *testing.T) {
	cases := []struct {
		name, toml, want string
	}{
		{"unknown key", "[core]\nlisten = \"127.0.0.1:5062\"\nlistne = 1\n", "unknown key core.listne"},
		{"unknown section", "[cor]\nx = 1\n", "unknown key cor"},
		{"syntax error names line and column", "[core]\nlisten = \"127.0.0.1:5062\n", ":2:"},
		{"bad duration", "[core]\ntimeout = \"soon\"\n", "invalid duration"},
		{"bad mode", "[core]\nmode = \"magic\"\n", "core.mode"},
		{"timeout too long", "[core]\ntimeout = \"5m\"\n", "core.timeout"},
		{"bad listen", "[access]\nudp = [\"localhost\"]\n", "access.udp"},
		{"no listener", "[access]\nudp = []\ntcp = []\n", "access: no listener"},
		{"tls without cert", "[access]\ntls = [\"127.0.0.1:5061\"]\n", "access.tls_cert"},
		{"upstream with a bad host", "[core]\nupstreams = [\"sip:bad_host\"]\n", "core.upstreams"},
		{"upstream transport", "[core]\nupstreams = [\"sip:10.0.0.1;transport=sctp\"]\n", "core.upstreams"},
		{"min over max", "[registration]\nmin_expires = \"2h\"\n", "registration.max_expires"},
		{"contacts", "[registration]\nmax_contacts = 0\n", "registration.max_contacts"},
		{"log level", "[log]\nlevel = \"loud\"\n", "log.level"},
		{"log format", "[log]\nformat = \"xml\"\n", "log.format"},
		{"wildcard needs advertise", "[access]\nudp = [\"0.0.0.0:5060\"]\n", "access.advertise: required"},
		{"core listen wildcard", "[core]\nlisten = \"0.0.0.0:5062\"\n", "core.listen"},
		{"trusted", "[core]\ntrusted = [\"10.0.0.0/33\"]\n", "core.trusted"},
		{"keepalive mode", "[nat]\nkeepalive = \"ping\"\n", "nat.keepalive"},
		{"flow timer", "[nat]\nflow_timer = \"1500ms\"\n", "nat.flow_timer"},
		{"stream flow timer", "[nat]\nflow_timer_stream = \"20m\"\n", "nat.flow_timer_stream"},
		{"admin on the access side", "[access]\nudp = [\"192.0.2.1:5060\"]\ntcp = []\n[admin]\nlisten = \"192.0.2.1:8060\"\n", "admin.listen"},
		{"audit size", "[audit]\nmax_size_mb = 0\n", "audit.max_size_mb"},
		{"no core anywhere", "[core]\nupstreams = []\n", "core.upstreams: at least one"},
		{"tenant without cores", "[[tenant]]\nname = \"acme\"\ndomains = [\"a.test\"]\n", `tenant "acme": upstreams`},
		{"tenant key", "[[tenant]]\nname = \"acme\"\ndomain = [\"a.test\"]\n", "unknown key tenant.domain"},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			p := filepath.Join(t.TempDir(), "c.toml")
			if err := os.WriteFile(p, []byte(tc.toml), 0o600); err != nil {
				t.Fatal(err)
			}
			_, err := loadConfig(p)
			if err == nil || !strings.Contains(err.Error(), tc.want) {
				t.Fatalf("err = %v, want it to mention %q", err, tc.want)
			}
		})
	}
}

// [[tenant]] blocks load, each over [core] and [registration].
func TestTenantConfig(t *testing.T) {
	p := filepath.Join(t.TempDir(), "c.toml")
	text := `[core]
upstreams = []
[registration]
max_contacts = 3
[[tenant]]
name = "acme"
domains = ["acme.test"]
upstreams = ["sip:192.0.2.1:5060"]
[[tenant]]
name = "bolt"
domains = ["bolt.test", "bolt.example"]
upstreams = ["sip:192.0.2.2:5060"]
mode = "rewrite"
max_contacts = 1
`
	if err := os.WriteFile(p, []byte(text), 0o600); err != nil {
		t.Fatal(err)
	}
	cfg, err := loadConfig(p)
	if err != nil {
		t.Fatal(err)
	}
	if len(cfg.Tenants) != 2 || cfg.Tenants[1].Registration(cfg.Registration).MaxContacts != 1 ||
		cfg.Tenants[0].Registration(cfg.Registration).MaxContacts != 3 || cfg.Tenants[1].Core(cfg.Core).Mode != "rewrite" {
		t.Errorf("tenants = %+v", cfg.Tenants)
	}
}

func TestCLI(t *testing.T) {
	var out, errb bytes.Buffer
	if code := run([]string{"version"}, &out, &errb); code != 0 || !strings.HasPrefix(out.String(), "sipedge ") {
		t.Errorf("version: code %d, out %q", code, out.String())
	}
	out.Reset()
	if code := run([]string{"check-config", "../../configs/sipedge.toml"}, &out, &errb); code != 0 {
		t.Errorf("check-config of the shipped file: code %d, %s", code, errb.String())
	}
	errb.Reset()
	p := filepath.Join(t.TempDir(), "bad.toml")
	os.WriteFile(p, []byte("[core]\nbogus = true\n"), 0o600)
	if code := run([]string{"check-config", p}, &out, &errb); code != 1 || !strings.Contains(errb.String(), "core.bogus") {
		t.Errorf("check-config of a bad file: code %d, stderr %q", code, errb.String())
	}
	errb.Reset()
	if code := run([]string{"run", "/etc/sipedge.toml"}, &out, &errb); code != 2 || !strings.Contains(errb.String(), "-config") {
		t.Errorf("run with a bare file: code %d, stderr %q", code, errb.String())
	}
	if code := run([]string{"frobnicate"}, &out, &errb); code != 2 {
		t.Errorf("unknown command: code %d", code)
	}
	if code := run(nil, &out, &errb); code != 2 {
		t.Errorf("no command: code %d", code)
	}
}

// The shipped systemd unit runs the edge the way the README says: state
// directory, reload by SIGHUP, restart on failure, sandboxed, low ports
// only, and a stop timeout above the drain's grace.
func TestServiceUnit(t *testing.T) {
	b, err := os.ReadFile("../../configs/sipedge.service")
	if err != nil {
		t.Fatal(err)
	}
	unit := string(b)
	for _, want := range []string{
		"ExecStart=/usr/local/bin/sipedge run -config /etc/sipedge/sipedge.toml",
		"ExecReload=/bin/kill -HUP $MAINPID", "Restart=on-failure", "StateDirectory=sipedge",
		"NoNewPrivileges=yes", "ProtectSystem=strict", "CapabilityBoundingSet=CAP_NET_BIND_SERVICE",
		"AmbientCapabilities=CAP_NET_BIND_SERVICE", "TimeoutStopSec=30s",
	} {
		if !strings.Contains(unit, want) {
			t.Errorf("configs/sipedge.service lacks %q", want)
		}
	}
	if def := defaultConfig().Drain.Grace; def >= 30*time.Second {
		t.Errorf("drain grace %v is not below the unit's stop timeout", def)
	}
	min, err := loadConfig("../../configs/minimal.toml")
	if err != nil {
		t.Fatal(err)
	}
	if !strings.HasPrefix(min.Core.KeyFile, "/var/lib/sipedge/") || min.State.Dir != "/var/lib/sipedge" {
		t.Errorf("minimal.toml keeps the key (%s) or state (%s) outside the unit's StateDirectory", min.Core.KeyFile, min.State.Dir)
	}
}
