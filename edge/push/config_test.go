package push_test

import (
	"crypto/rand"
	"crypto/rsa"
	"crypto/x509"
	"encoding/json"
	"encoding/pem"
	"os"
	"path/filepath"
	"regexp"
	"strings"
	"testing"
	"time"

	"github.com/BurntSushi/toml"
	"github.com/sipedge/sipedge/edge/push"
	"github.com/sipedge/sipedge/edge/push/pushtest"
)

func TestDefaultConfigIsValid(t *testing.T) {
	if err := push.DefaultConfig().Validate(); err != nil {
		t.Fatal(err)
	}
}

func TestValidateNamesBadKeys(t *testing.T) {
	apns := func(c *push.Config) { c.APNsKeyFile, c.APNsKeyID, c.APNsTeamID = "k.p8", "ABCDE12345", "TEAM123456" }
	for _, tc := range []struct {
		name string
		edit func(*push.Config)
		want []string // keys named; none: valid
	}{
		{"timeout", func(c *push.Config) { c.Timeout = 0 }, []string{"push.timeout"}},
		{"long timeout", func(c *push.Config) { c.Timeout = 2 * time.Minute }, []string{"push.timeout"}},
		{"ttl", func(c *push.Config) { c.TTL = -time.Second }, []string{"push.ttl"}},
		{"ttl zero", func(c *push.Config) { c.TTL = 0 }, nil},
		{"gateway https", func(c *push.Config) { c.GatewayURL = "https://gw.example.net/push" }, nil},
		{"gateway loopback http", func(c *push.Config) { c.GatewayURL = "http://127.0.0.1:8080/push" }, nil},
		{"gateway http", func(c *push.Config) { c.GatewayURL = "http://gw.example.net/push" }, []string{"push.gateway_url"}},
		{"gateway credentials", func(c *push.Config) { c.GatewayURL = "https://u:pw@gw.example.net/" }, []string{"push.gateway_url"}},
		{"gateway relative", func(c *push.Config) { c.GatewayURL = "/push" }, []string{"push.gateway_url"}},
		{"gateway scheme", func(c *push.Config) { c.GatewayURL = "ftp://gw.example.net/" }, []string{"push.gateway_url"}},
		{"token without gateway", func(c *push.Config) { c.GatewayTokenFile = "t" }, []string{"push.gateway_token_file"}},
		{"projects without fcm", func(c *push.Config) { c.FCMProjects = []string{"p"} }, []string{"push.fcm_projects"}},
		{"bad project", func(c *push.Config) { c.FCMServiceAccountFile = "sa.json"; c.FCMProjects = []string{"A/B"} }, []string{"push.fcm_projects"}},
		{"apns", apns, nil},
		{"apns without key", func(c *push.Config) { apns(c); c.APNsKeyFile = "" }, []string{"push.apns_key_file"}},
		{"apns key id", func(c *push.Config) { apns(c); c.APNsKeyID = "abc" }, []string{"push.apns_key_id"}},
		{"apns team only", func(c *push.Config) { c.APNsTeamID = "TEAM123456" }, []string{"push.apns_key_file", "push.apns_key_id"}},
		{"apns sandbox only", func(c *push.Config) { c.APNsSandbox = true }, []string{"push.apns_key_file", "push.apns_key_id", "push.apns_team_id"}},
		{"bundle with voip", func(c *push.Config) { apns(c); c.APNsBundleIDs = []string{"com.example.phone.voip"} }, []string{"push.apns_bundle_ids"}},
		{"bundle", func(c *push.Config) { apns(c); c.APNsBundleIDs = []string{"com.example/x"} }, []string{"push.apns_bundle_ids"}},
	} {
		cfg := push.DefaultConfig()
		tc.edit(&cfg)
		err := cfg.Validate()
		if len(tc.want) == 0 {
			if err != nil {
				t.Errorf("%s: %v", tc.name, err)
			}
			continue
		}
		if err == nil {
			t.Errorf("%s: valid", tc.name)
			continue
		}
		for _, k := range tc.want {
			if !strings.Contains(err.Error(), k+":") {
				t.Errorf("%s: %q does not name %s", tc.name, err, k)
			}
		}
		if _, err := push.New(cfg); err == nil {
			t.Errorf("%s: New accepted an invalid config", tc.name)
		}
	}
}

// TestREADMEExample decodes the README's [push] example strictly and
// validates it.
func TestREADMEExample(t *testing.T) {
	data, err := os.ReadFile("README.md")
	if err != nil {
		t.Fatal(err)
	}
	m := regexp.MustCompile("(?s)```toml\n(.*?)```").FindSubmatch(data)
	if m == nil {
		t.Fatal("README has no toml example")
	}
	var file struct {
		Push push.Config `toml:"push"`
	}
	file.Push = push.DefaultConfig()
	md, err := toml.Decode(string(m[1]), &file)
	if err != nil {
		t.Fatal(err)
	}
	if und := md.Undecoded(); len(und) > 0 {
		t.Fatalf("README example has unknown keys %v", und)
	}
	if err := file.Push.Validate(); err != nil {
		t.Fatal(err)
	}
	if !file.Push.APNs() || !file.Push.FCM() || !file.Push.Gateway() || file.Push.Timeout != 10*time.Second {
		t.Errorf("example decoded as %+v", file.Push)
	}
}

// write puts data in a file of t's temporary directory.
func write(t *testing.T, name, data string) string {
	t.Helper()
	p := filepath.Join(t.TempDir(), name)
	if err := os.WriteFile(p, []byte(data), 0o600); err != nil {
		t.Fatal(err)
	}
	return p
}

func TestNewNamesBadCredentialFiles(t *testing.T) {
	rsaKey, err := rsa.GenerateKey(rand.Reader, 2048)
	if err != nil {
		t.Fatal(err)
	}
	der, _ := x509.MarshalPKCS8PrivateKey(rsaKey)
	rsaPEM := string(pem.EncodeToMemory(&pem.Block{Type: "PRIVATE KEY", Bytes: der}))
	rsaBody := strings.Split(rsaPEM, "\n")[1] // a line of key material
	garbled := "-----BEGIN PRIVATE KEY-----\nTUlJQ2VRSUJBREFOQmdrcWhraUc5dzBCQVFFRkFBU0NBbU13Z2dKZkFnRUFBb0dCQUxv\n-----END PRIVATE KEY-----\n"
	sa := func(mod func(map[string]string)) string {
		m := map[string]string{"type": "service_account", "project_id": "p-1", "private_key": rsaPEM,
			"client_email": "a@p-1.iam.gserviceaccount.com", "token_uri": "https://oauth2.googleapis.com/token"}
		mod(m)
		b, _ := json.Marshal(m)
		return string(b)
	}
	apns := func(file string) push.Config {
		c := push.DefaultConfig()
		c.APNsKeyFile, c.APNsKeyID, c.APNsTeamID = file, "ABCDE12345", "TEAM123456"
		return c
	}
	fcm := func(file string) push.Config {
		c := push.DefaultConfig()
		c.FCMServiceAccountFile = file
		return c
	}
	gw := func(file string) push.Config {
		c := push.DefaultConfig()
		c.GatewayURL, c.GatewayTokenFile = "https://gw.example.net/", file
		return c
	}
	for _, tc := range []struct {
		name, key string
		cfg       push.Config
	}{
		{"apns missing", "push.apns_key_file", apns(filepath.Join(t.TempDir(), "none.p8"))},
		{"apns not pem", "push.apns_key_file", apns(write(t, "a.p8", "MIGTAgEAMBMGByqGSM49AgEGCCqGSM49AwEHBHkwdwIBAQQg"))},
		{"apns garbled", "push.apns_key_file", apns(write(t, "a.p8", garbled))},
		{"apns rsa", "push.apns_key_file", apns(write(t, "a.p8", rsaPEM))},
		{"fcm missing", "push.fcm_service_account_file", fcm(filepath.Join(t.TempDir(), "none.json"))},
		{"fcm not json", "push.fcm_service_account_file", fcm(write(t, "sa.json", rsaPEM))},
		{"fcm no key", "push.fcm_service_account_file", fcm(write(t, "sa.json", sa(func(m map[string]string) { delete(m, "private_key") })))},
		{"fcm bad key", "push.fcm_service_account_file", fcm(write(t, "sa.json", sa(func(m map[string]string) { m["private_key"] = garbled })))},
		{"fcm http token_uri", "push.fcm_service_account_file", fcm(write(t, "sa.json", sa(func(m map[string]string) { m["token_uri"] = "http://oauth2.example/token" })))},
		{"fcm no project", "push.fcm_service_account_file", fcm(write(t, "sa.json", sa(func(m map[string]string) { delete(m, "project_id") })))},
		{"fcm other type", "push.fcm_service_account_file", fcm(write(t, "sa.json", sa(func(m map[string]string) { m["type"] = "authorized_user" })))},
		{"gateway token missing", "push.gateway_token_file", gw(filepath.Join(t.TempDir(), "none"))},
		{"gateway token empty", "push.gateway_token_file", gw(write(t, "tok", "\n"))},
		{"gateway token lines", "push.gateway_token_file", gw(write(t, "tok", "s3cr3t-one\ns3cr3t-two\n"))},
	} {
		_, err := push.New(tc.cfg)
		if err == nil {
			t.Errorf("%s: no error", tc.name)
			continue
		}
		msg := err.Error()
		if !strings.HasPrefix(msg, tc.key+": ") {
			t.Errorf("%s: %q does not start with %s", tc.name, msg, tc.key)
		}
		file := tc.cfg.APNsKeyFile + tc.cfg.FCMServiceAccountFile + tc.cfg.GatewayTokenFile
		if !strings.Contains(msg, file) {
			t.Errorf("%s: %q does not name the file", tc.name, msg)
		}
		noSecret(t, err, rsaBody, "TUlJQ2VRSUJBREFO", "MIGTAgEAMBMG", "s3cr3t-one")
	}
}

func TestNewReadsTheStandInsCredentials(t *testing.T) {
	a, f, g := pushtest.NewAPNs(t), pushtest.NewFCM(t), pushtest.NewGateway(t)
	cfg := push.DefaultConfig()
	cfg.APNsKeyFile, cfg.APNsKeyID, cfg.APNsTeamID = a.KeyFile, a.KeyID, a.TeamID
	cfg.FCMServiceAccountFile = f.File
	cfg.GatewayURL, cfg.GatewayTokenFile = g.URL, g.TokenFile
	s := newSenders(t, cfg)
	for _, p := range []string{"apns", "apns.dev", "fcm", "webpush"} {
		if !s.Supports(p) {
			t.Errorf("%s unsupported", p)
		}
	}
}
