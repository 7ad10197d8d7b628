package pushtest_test

import (
	"crypto"
	"crypto/ecdsa"
	"crypto/rand"
	"crypto/rsa"
	"crypto/sha256"
	"encoding/base64"
	"encoding/json"
	"io"
	"net/http"
	"net/url"
	"strings"
	"testing"
	"time"

	"github.com/sipedge/sipedge/edge/push/pushtest"
)

// The stand-ins must refuse what the real services refuse, or a wrong
// client would pass against them. These requests are built by hand.

const token = "4e2f8a9b1c3d5e7f90a1b2c3d4e5f60718293a4b5c6d7e8f9012a3b4c5d6e7f8"

var b64 = base64.RawURLEncoding

func jwt(t *testing.T, header, claims map[string]any, sign func(digest []byte) []byte) string {
	t.Helper()
	h, _ := json.Marshal(header)
	c, _ := json.Marshal(claims)
	in := b64.EncodeToString(h) + "." + b64.EncodeToString(c)
	sum := sha256.Sum256([]byte(in))
	return in + "." + b64.EncodeToString(sign(sum[:]))
}

// es256 signs as JWS wants (R||S); asn1 as crypto/ecdsa does by default,
// which JWS does not accept.
func es256(t *testing.T, k *ecdsa.PrivateKey, asn1 bool) func([]byte) []byte {
	return func(d []byte) []byte {
		if asn1 {
			sig, err := ecdsa.SignASN1(rand.Reader, k, d)
			if err != nil {
				t.Fatal(err)
			}
			return sig
		}
		r, s, err := ecdsa.Sign(rand.Reader, k, d)
		if err != nil {
			t.Fatal(err)
		}
		out := make([]byte, 64)
		r.FillBytes(out[:32])
		s.FillBytes(out[32:])
		return out
	}
}

func rs256(t *testing.T, k *rsa.PrivateKey) func([]byte) []byte {
	return func(d []byte) []byte {
		sig, err := rsa.SignPKCS1v15(nil, k, crypto.SHA256, d)
		if err != nil {
			t.Fatal(err)
		}
		return sig
	}
}

func do(t *testing.T, c *http.Client, req *http.Request) (int, map[string]any) {
	t.Helper()
	resp, err := c.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	var body map[string]any
	data, _ := io.ReadAll(resp.Body)
	_ = json.Unmarshal(data, &body)
	return resp.StatusCode, body
}

func TestAPNsStandInChecks(t *testing.T) {
	a := pushtest.NewAPNs(t)
	now := time.Now()
	a.SetNow(func() time.Time { return now })
	c := a.Client() // HTTP/2, trusts the server
	good := jwt(t, map[string]any{"alg": "ES256", "kid": a.KeyID}, map[string]any{"iss": a.TeamID, "iat": now.Unix()}, es256(t, a.Key, false))
	req := func(edit func(r *http.Request)) *http.Request {
		r, _ := http.NewRequest(http.MethodPost, a.URL+"/3/device/"+token, strings.NewReader(`{"aps":{}}`))
		r.Header.Set("Authorization", "bearer "+good)
		r.Header.Set("Apns-Topic", a.Bundle+".voip")
		r.Header.Set("Apns-Push-Type", "voip")
		r.Header.Set("Apns-Priority", "10")
		if edit != nil {
			edit(r)
		}
		return r
	}
	if st, body := do(t, c, req(nil)); st != http.StatusOK {
		t.Fatalf("a good push: %d %v", st, body)
	}
	for _, tc := range []struct {
		name   string
		edit   func(*http.Request)
		status int
		reason string
	}{
		{"no token", func(r *http.Request) { r.Header.Del("Authorization") }, 403, "MissingProviderToken"},
		{"asn1 signature", func(r *http.Request) {
			r.Header.Set("Authorization", "bearer "+jwt(t, map[string]any{"alg": "ES256", "kid": a.KeyID}, map[string]any{"iss": a.TeamID, "iat": now.Unix()}, es256(t, a.Key, true)))
		}, 403, "InvalidProviderToken"},
		{"wrong kid", func(r *http.Request) {
			r.Header.Set("Authorization", "bearer "+jwt(t, map[string]any{"alg": "ES256", "kid": "OTHERKEY12"}, map[string]any{"iss": a.TeamID, "iat": now.Unix()}, es256(t, a.Key, false)))
		}, 403, "InvalidProviderToken"},
		{"old token", func(r *http.Request) {
			r.Header.Set("Authorization", "bearer "+jwt(t, map[string]any{"alg": "ES256", "kid": a.KeyID}, map[string]any{"iss": a.TeamID, "iat": now.Add(-2 * time.Hour).Unix()}, es256(t, a.Key, false)))
		}, 403, "ExpiredProviderToken"},
		{"renewed too soon", func(r *http.Request) {
			r.Header.Set("Authorization", "bearer "+jwt(t, map[string]any{"alg": "ES256", "kid": a.KeyID}, map[string]any{"iss": a.TeamID, "iat": now.Unix() - 60}, es256(t, a.Key, false)))
		}, 429, "TooManyProviderTokenUpdates"},
		{"alert push", func(r *http.Request) { r.Header.Set("Apns-Push-Type", "alert") }, 400, "InvalidPushType"},
		{"no topic", func(r *http.Request) { r.Header.Del("Apns-Topic") }, 400, "MissingTopic"},
		{"topic not voip", func(r *http.Request) { r.Header.Set("Apns-Topic", a.Bundle) }, 400, "BadTopic"},
		{"another app", func(r *http.Request) { r.Header.Set("Apns-Topic", "com.other.app.voip") }, 400, "DeviceTokenNotForTopic"},
		{"priority 5", func(r *http.Request) { r.Header.Set("Apns-Priority", "5") }, 400, "BadPriority"},
		{"expiration", func(r *http.Request) { r.Header.Set("Apns-Expiration", "soon") }, 400, "BadExpirationDate"},
		{"apns-id", func(r *http.Request) { r.Header.Set("Apns-Id", "push-1") }, 400, "BadMessageId"},
		{"not hex", func(r *http.Request) { r.URL.Path = "/3/device/xyz" }, 400, "BadDeviceToken"},
		{"path", func(r *http.Request) { r.URL.Path = "/3/devices/" + token }, 404, "BadPath"},
		{"method", func(r *http.Request) { r.Method = http.MethodGet }, 405, "MethodNotAllowed"},
		{"empty", func(r *http.Request) { r.Body = io.NopCloser(strings.NewReader("")); r.ContentLength = 0 }, 400, "PayloadEmpty"},
		{"too large", func(r *http.Request) {
			big := `{"aps":{},"x":"` + strings.Repeat("a", 5200) + `"}`
			r.Body, r.ContentLength = io.NopCloser(strings.NewReader(big)), int64(len(big))
		}, 413, "PayloadTooLarge"},
	} {
		st, body := do(t, c, req(tc.edit))
		if st != tc.status || body["reason"] != tc.reason {
			t.Errorf("%s: %d %v, want %d %s", tc.name, st, body, tc.status, tc.reason)
		}
	}
	a.Fail(token, http.StatusGone, "Unregistered")
	if st, body := do(t, c, req(nil)); st != 410 || body["reason"] != "Unregistered" || body["timestamp"] == nil {
		t.Errorf("marked token: %d %v", st, body)
	}
	if n := len(a.Received()); n != 1 {
		t.Errorf("%d pushes accepted, want 1", n)
	}
}

func TestFCMStandInChecks(t *testing.T) {
	f := pushtest.NewFCM(t)
	c := f.Client()
	now := time.Now()
	claims := func(edit func(map[string]any)) map[string]any {
		m := map[string]any{"iss": f.Email, "scope": "https://www.googleapis.com/auth/firebase.messaging",
			"aud": f.TokenURI(), "iat": now.Unix(), "exp": now.Add(time.Hour).Unix()}
		if edit != nil {
			edit(m)
		}
		return m
	}
	tokenReq := func(grant, assertion string) *http.Request {
		form := url.Values{"grant_type": {grant}, "assertion": {assertion}}
		r, _ := http.NewRequest(http.MethodPost, f.TokenURI(), strings.NewReader(form.Encode()))
		r.Header.Set("Content-Type", "application/x-www-form-urlencoded")
		return r
	}
	const grant = "urn:ietf:params:oauth:grant-type:jwt-bearer"
	hdr := map[string]any{"alg": "RS256", "typ": "JWT", "kid": f.KeyID}
	for _, tc := range []struct {
		name      string
		grant     string
		assertion string
		error     string
	}{
		{"grant", "client_credentials", jwt(t, hdr, claims(nil), rs256(t, f.Key)), "unsupported_grant_type"},
		{"scope", grant, jwt(t, hdr, claims(func(m map[string]any) { m["scope"] = "https://www.googleapis.com/auth/cloud-platform.read-only" }), rs256(t, f.Key)), "invalid_scope"},
		{"aud", grant, jwt(t, hdr, claims(func(m map[string]any) { m["aud"] = "https://oauth2.googleapis.com/token" }), rs256(t, f.Key)), "invalid_grant"},
		{"too long", grant, jwt(t, hdr, claims(func(m map[string]any) { m["exp"] = now.Add(2 * time.Hour).Unix() }), rs256(t, f.Key)), "invalid_grant"},
		{"expired", grant, jwt(t, hdr, claims(func(m map[string]any) { m["iat"], m["exp"] = now.Add(-2*time.Hour).Unix(), now.Add(-time.Hour).Unix() }), rs256(t, f.Key)), "invalid_grant"},
		{"alg", grant, jwt(t, map[string]any{"alg": "HS256"}, claims(nil), rs256(t, f.Key)), "invalid_grant"},
	} {
		st, body := do(t, c, tokenReq(tc.grant, tc.assertion))
		if st != 400 || body["error"] != tc.error {
			t.Errorf("%s: %d %v, want 400 %s", tc.name, st, body, tc.error)
		}
	}
	other, _ := rsa.GenerateKey(rand.Reader, 2048)
	if st, body := do(t, c, tokenReq(grant, jwt(t, hdr, claims(nil), rs256(t, other)))); st != 400 || body["error"] != "invalid_grant" {
		t.Errorf("another key: %d %v", st, body)
	}
	st, body := do(t, c, tokenReq(grant, jwt(t, hdr, claims(nil), rs256(t, f.Key))))
	access, _ := body["access_token"].(string)
	if st != 200 || access == "" || body["token_type"] != "Bearer" || body["expires_in"] != float64(3599) {
		t.Fatalf("a good assertion: %d %v", st, body)
	}

	send := func(project, auth, body string) (int, map[string]any) {
		r, _ := http.NewRequest(http.MethodPost, f.URL+"/v1/projects/"+project+"/messages:send", strings.NewReader(body))
		r.Header.Set("Authorization", auth)
		r.Header.Set("Content-Type", "application/json")
		return do(t, c, r)
	}
	good := `{"message":{"token":"t1","data":{"k":"v"},"android":{"priority":"high","ttl":"30s"}}}`
	if st, body := send(f.Project, "Bearer "+access, good); st != 200 || !strings.HasPrefix(body["name"].(string), "projects/"+f.Project+"/messages/") {
		t.Fatalf("a good message: %d %v", st, body)
	}
	for _, tc := range []struct {
		name, project, auth, body string
		status                    int
		rpc                       string
	}{
		{"no token", f.Project, "", good, 401, "UNAUTHENTICATED"},
		{"other project", "another", "Bearer " + access, good, 403, "PERMISSION_DENIED"},
		{"reserved key", f.Project, "Bearer " + access, `{"message":{"token":"t1","data":{"from":"x"}}}`, 400, "INVALID_ARGUMENT"},
		{"google key", f.Project, "Bearer " + access, `{"message":{"token":"t1","data":{"google.x":"x"}}}`, 400, "INVALID_ARGUMENT"},
		{"number value", f.Project, "Bearer " + access, `{"message":{"token":"t1","data":{"n":1}}}`, 400, "INVALID_ARGUMENT"},
		{"unknown field", f.Project, "Bearer " + access, `{"message":{"token":"t1","priority":"high"}}`, 400, "INVALID_ARGUMENT"},
		{"no target", f.Project, "Bearer " + access, `{"message":{"data":{"k":"v"}}}`, 400, "INVALID_ARGUMENT"},
		{"two targets", f.Project, "Bearer " + access, `{"message":{"token":"t1","topic":"x"}}`, 400, "INVALID_ARGUMENT"},
		{"priority", f.Project, "Bearer " + access, `{"message":{"token":"t1","android":{"priority":"urgent"}}}`, 400, "INVALID_ARGUMENT"},
		{"ttl", f.Project, "Bearer " + access, `{"message":{"token":"t1","android":{"ttl":30}}}`, 400, "INVALID_ARGUMENT"},
		{"legacy body", f.Project, "Bearer " + access, `{"to":"t1","priority":"high"}`, 400, "INVALID_ARGUMENT"},
	} {
		st, body := send(tc.project, tc.auth, tc.body)
		e, _ := body["error"].(map[string]any)
		if st != tc.status || e["status"] != tc.rpc {
			t.Errorf("%s: %d %v, want %d %s", tc.name, st, body, tc.status, tc.rpc)
		}
	}
	f.Fail("t1", 404, "UNREGISTERED")
	st, body = send(f.Project, "Bearer "+access, good)
	e, _ := body["error"].(map[string]any)
	details, _ := e["details"].([]any)
	if st != 404 || e["status"] != "NOT_FOUND" || len(details) != 1 || details[0].(map[string]any)["errorCode"] != "UNREGISTERED" {
		t.Errorf("marked token: %d %v", st, body)
	}
}

func TestGatewayStandInChecks(t *testing.T) {
	g := pushtest.NewGateway(t)
	post := func(auth, ct, body string) int {
		r, _ := http.NewRequest(http.MethodPost, g.URL, strings.NewReader(body))
		r.Header.Set("Authorization", auth)
		r.Header.Set("Content-Type", ct)
		st, _ := do(t, g.Client(), r)
		return st
	}
	for _, tc := range []struct {
		auth, ct, body string
		status         int
	}{
		{"Bearer " + g.Token, "application/json", `{"prid":"p"}`, 202},
		{"Bearer nope", "application/json", `{"prid":"p"}`, 401},
		{"Bearer " + g.Token, "text/plain", `{"prid":"p"}`, 415},
		{"Bearer " + g.Token, "application/json", `{"provider":"x"}`, 400},
	} {
		if st := post(tc.auth, tc.ct, tc.body); st != tc.status {
			t.Errorf("%+v: %d", tc, st)
		}
	}
}
