package main

import (
	"bytes"
	"encoding/json"
	"flag"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"os"
	"strings"
	"text/tabwriter"
	"time"
	"unicode"

	"github.com/sipedge/sipedge/edge/admin"
)

const ctlUsage = `usage: sipedge ctl [-config FILE] [-admin URL] [-token-file FILE] [-json] COMMAND
  regs [AOR]          registrations (?aor= filter); -source, -ua, -transport, -tenant filter more
  bans                bans in force
  ban PREFIX [DUR]    ban an address or CIDR (DUR: a Go duration; default the escalated ban_time)
  unban PREFIX        lift a ban
  cores               the cores and their health
  reload              apply the config file again (as SIGHUP)
The admin address and token file come from -config's [admin] (default: the built-in one).
`

// ctl talks to a running sipedge's admin API.
func ctl(args []string, stdout, stderr io.Writer) int {
	fs := flag.NewFlagSet("ctl", flag.ContinueOnError)
	fs.SetOutput(stderr)
	fs.Usage = func() { fmt.Fprint(stderr, ctlUsage) }
	path := fs.String("config", "", "config file (TOML): where the admin API is")
	base := fs.String("admin", "", "admin API URL (default: http:// + admin.listen)")
	tokenFile := fs.String("token-file", "", "bearer token file (default: admin.token_file)")
	asJSON := fs.Bool("json", false, "print the API's JSON")
	source := fs.String("source", "", "regs: source address prefix")
	ua := fs.String("ua", "", "regs: user agent substring")
	transport := fs.String("transport", "", "regs: UDP, TCP, TLS, WS or WSS")
	tenant := fs.String("tenant", "", "regs: tenant")
	limit := fs.Int("limit", 1000, "regs: at most this many")
	if err := fs.Parse(args); err != nil || fs.NArg() == 0 {
		fs.Usage()
		return 2
	}
	cfg, err := loadConfig(*path)
	if err != nil {
		fmt.Fprintln(stderr, err)
		return 1
	}
	if *base == "" {
		if cfg.Admin.Listen == "" {
			fmt.Fprintln(stderr, "admin.listen is off in", *path)
			return 1
		}
		*base = "http://" + cfg.Admin.Listen
	}
	if *tokenFile == "" {
		*tokenFile = cfg.Admin.TokenFile
	}
	token, err := readToken(*tokenFile)
	if err != nil {
		fmt.Fprintln(stderr, "token:", err)
		return 1
	}
	c := &ctlClient{base: strings.TrimSuffix(*base, "/"), token: token, http: &http.Client{Timeout: 10 * time.Second}}
	cmd, rest := fs.Arg(0), fs.Args()[1:]
	var out any
	var method, path2 string
	var body any
	switch {
	case cmd == "regs" && len(rest) <= 1:
		q := url.Values{"limit": {fmt.Sprint(*limit)}}
		if len(rest) == 1 {
			q.Set("aor", rest[0])
		}
		for k, v := range map[string]string{"source": *source, "user_agent": *ua, "transport": *transport} {
			if v != "" {
				q.Set(k, v)
			}
		}
		if *tenant != "" {
			q.Set("tenant", *tenant)
		}
		method, path2, out = "GET", "/api/registrations?"+q.Encode(), &admin.Page[admin.Registration]{}
	case cmd == "bans" && len(rest) == 0:
		method, path2, out = "GET", "/api/bans?limit=10000", &admin.Page[admin.BanView]{}
	case cmd == "ban" && (len(rest) == 1 || len(rest) == 2):
		req := admin.BanRequest{Prefix: rest[0]}
		if len(rest) == 2 {
			req.Duration = rest[1]
		}
		method, path2, body, out = "POST", "/api/bans", req, &admin.BanView{}
	case cmd == "unban" && len(rest) == 1:
		method, path2, out = "DELETE", "/api/bans?"+url.Values{"prefix": {rest[0]}}.Encode(), &map[string]string{}
	case cmd == "cores" && len(rest) == 0:
		method, path2, out = "GET", "/api/cores?limit=10000", &admin.Page[admin.Core]{}
	case cmd == "reload" && len(rest) == 0:
		method, path2, out = "POST", "/api/reload", &map[string]string{}
	default:
		fs.Usage()
		return 2
	}
	raw, err := c.do(method, path2, body)
	if err != nil {
		fmt.Fprintln(stderr, err)
		return 1
	}
	if *asJSON {
		stdout.Write(raw)
		return 0
	}
	if err := json.Unmarshal(raw, out); err != nil {
		fmt.Fprintln(stderr, "unexpected answer:", err)
		return 1
	}
	printCtl(stdout, out)
	return 0
}

type ctlClient struct {
	base, token string
	http        *http.Client
}

// do sends one request and returns the body of a 2xx; anything else is
// an error with the API's message.
func (c *ctlClient) do(method, path string, body any) ([]byte, error) {
	var rd io.Reader
	if body != nil {
		b, err := json.Marshal(body)
		if err != nil {
			return nil, err
		}
		rd = bytes.NewReader(b)
	}
	req, err := http.NewRequest(method, c.base+path, rd)
	if err != nil {
		return nil, err
	}
	req.Header.Set("Authorization", "Bearer "+c.token)
	if body != nil {
		req.Header.Set("Content-Type", "application/json")
	}
	res, err := c.http.Do(req)
	if err != nil {
		return nil, err
	}
	defer res.Body.Close()
	raw, err := io.ReadAll(io.LimitReader(res.Body, 64<<20))
	if err != nil {
		return nil, err
	}
	if res.StatusCode/100 != 2 {
		var e struct{ Error string }
		if json.Unmarshal(raw, &e) == nil && e.Error != "" {
			return nil, fmt.Errorf("%s: %s", res.Status, e.Error)
		}
		return nil, fmt.Errorf("%s", res.Status)
	}
	return raw, nil
}

func printCtl(w io.Writer, v any) {
	tw := tabwriter.NewWriter(w, 2, 4, 2, ' ', 0)
	defer tw.Flush()
	ago := func(t time.Time) string { return time.Until(t).Round(time.Second).String() }
	switch v := v.(type) {
	case *admin.Page[admin.Registration]:
		fmt.Fprintln(tw, "AOR\tTENANT\tCONTACT\tTRANSPORT\tSOURCE\tNAT\tUSER AGENT\tEXPIRES IN")
		for _, r := range v.Items {
			fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\n", printable(r.AOR), printable(r.Tenant), printable(r.Contact),
				r.Transport, r.Source, r.NAT, printable(r.UserAgent), ago(r.Expires))
		}
		fmt.Fprintf(tw, "(%d of %d)\n", len(v.Items), v.Total)
	case *admin.Page[admin.BanView]:
		fmt.Fprintln(tw, "PREFIX\tREASON\tCOUNT\tENDS IN")
		for _, b := range v.Items {
			fmt.Fprintf(tw, "%s\t%s\t%d\t%s\n", b.Prefix, b.Reason, b.Count, ago(b.Until))
		}
	case *admin.BanView:
		fmt.Fprintf(tw, "banned %s (%s) for %s\n", v.Prefix, v.Reason, ago(v.Until))
	case *admin.Page[admin.Core]:
		fmt.Fprintln(tw, "TENANT\tCORE\tSTATE")
		for _, c := range v.Items {
			t := c.Tenant
			if t == "" {
				t = "default"
			}
			fmt.Fprintf(tw, "%s\t%s\t%s\n", t, c.Target, c.State)
		}
	case *map[string]string:
		for k, s := range *v {
			fmt.Fprintf(tw, "%s: %s\n", k, s)
		}
	}
}

// readToken reads a token file as admin writes it.
func readToken(path string) (string, error) {
	b, err := os.ReadFile(path)
	if err != nil {
		return "", err
	}
	return strings.TrimSpace(string(b)), nil
}

// printable replaces control characters (a phone's User-Agent may carry
// terminal escapes) and tabs, which would break the table.
func printable(s string) string {
	return strings.Map(func(r rune) rune {
		if unicode.IsControl(r) {
			return '?'
		}
		return r
	}, s)
}
