package edge_test

import (
	"flag"
	"os"
	"path/filepath"
	"regexp"
	"strings"
	"testing"

	"github.com/sipedge/sipedge/edge/edgetest"
	"github.com/sipedge/sipedge/nat"
	"github.com/sipedge/sipedge/upstream"
	"github.com/sipedge/sipedge/upstream/upstreamtest"
)

var update = flag.Bool("update", false, "rewrite golden files under testdata/golden")

// TestGoldenRegister pins the exact REGISTER the core receives and the
// exact 200 the phone receives, with addresses, tokens, branches and tags
// replaced by names.
func TestGoldenRegister(t *testing.T) {
	for _, mode := range []upstream.Mode{upstream.ModePath, upstream.ModeRewrite} {
		t.Run(string(mode), func(t *testing.T) {
			core := upstreamtest.Start(t, upstreamtest.Options{})
			e := edgetest.Start(t, core.URI("udp"), func(c *edgetest.Config) { c.Core.Mode = mode })
			phone := edgetest.Dial(t, "udp", e.UDP)
			phone.Send(phone.Register(edgetest.Reg{User: "alice", CallID: "golden-1",
				Extra: "User-Agent: GoldenPhone/1.0\nSupported: outbound"}))
			got := nextRequest(t, core)
			res := phone.MustRecvResponse(wait)

			flow := mustFlow(t, e, phone)
			names := strings.NewReplacer(
				e.CoreAddr().String(), "EDGE_CORE",
				e.UDP.String(), "EDGE_ACCESS",
				core.Addr().String(), "CORE",
				phone.Local.String(), "PHONE",
				"rport="+itoa(phone.Local.Port()), "rport=PHONE_PORT",
			)
			normalize := func(s string) string {
				// Tokens are sealed: any user part that opens to the
				// phone's flow is its token.
				s = regexp.MustCompile(`sip:[A-Za-z0-9_-]{20,}@`).ReplaceAllStringFunc(s, func(u string) string {
					if tok, err := e.Signer.Decode(u[4 : len(u)-1]); err == nil && tok.Flow == flow {
						return "sip:TOKEN@"
					}
					return u
				})
				s = names.Replace(s)
				s = regexp.MustCompile(`branch=z9hG4bK[0-9A-Za-z.\-]{8,}`).ReplaceAllStringFunc(s, func(b string) string {
					if strings.Contains(b, "golden") {
						return b // the phone's own, deterministic
					}
					return "branch=EDGE_BRANCH"
				})
				s = regexp.MustCompile(`;tag=[0-9a-f-]{36}`).ReplaceAllString(s, ";tag=TO_TAG")
				s = regexp.MustCompile(`;ct=[0-9a-z]+`).ReplaceAllString(s, ";ct=CONTACT_HASH")
				return s
			}
			compareGolden(t, "register_"+string(mode)+"_at_core.sip", normalize(got.String()))
			compareGolden(t, "register_"+string(mode)+"_at_phone.sip", normalize(res.String()))
		})
	}
}

func mustFlow(t *testing.T, e *edgetest.Edge, p *edgetest.Phone) nat.FlowKey {
	t.Helper()
	bs := e.Bindings().All()
	if len(bs) != 1 {
		t.Fatalf("%d bindings, want 1", len(bs))
	}
	return bs[0].Flow
}

func compareGolden(t *testing.T, name, got string) {
	t.Helper()
	path := filepath.Join("..", "testdata", "golden", name)
	if *update {
		if err := os.WriteFile(path, []byte(got), 0o644); err != nil {
			t.Fatal(err)
		}
		return
	}
	want, err := os.ReadFile(path)
	if err != nil {
		t.Fatalf("%v (run go test ./edge -run Golden -update)", err)
	}
	if got != string(want) {
		t.Errorf("%s differs (go test ./edge -run Golden -update to accept):\n--- got\n%s\n--- want\n%s", name, got, want)
	}
}
