package pushtest

import (
	"crypto"
	"crypto/rand"
	"crypto/rsa"
	"crypto/sha256"
	"crypto/tls"
	"crypto/x509"
	"encoding/hex"
	"encoding/json"
	"encoding/pem"
	"fmt"
	"io"
	"mime"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"regexp"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"
)

// FCM is a stand-in for Firebase Cloud Messaging's HTTP v1 API and the
// Google OAuth2 token endpoint a service account uses.
//
// POST /token takes grant_type=urn:ietf:params:oauth:grant-type:jwt-bearer
// and an assertion: a JWT signed RS256 by the service account's key, with
// iss its client_email, aud its token_uri, scope including
// https://www.googleapis.com/auth/firebase.messaging, exp after now and at
// most an hour after iat. It answers {"access_token","expires_in",
// "token_type":"Bearer"}, or 400 {"error":"invalid_grant"} as Google does.
//
// POST /v1/projects/<Project>/messages:send wants "Authorization: Bearer"
// with a token it issued that has not expired, and a body {"message":{...}} whose fields are
// those of FCM's Message (unknown ones are refused, as the proto's JSON
// mapping does), exactly one target, data values that are strings and
// keys that are not FCM's own, android.priority NORMAL or HIGH, android.ttl
// a duration ("30s"). It answers {"name":"projects/<p>/messages/0:<n>"},
// or an error in Google's form: {"error":{"code","message","status",
// "details":[{"@type":"type.googleapis.com/google.firebase.fcm.v1.FcmError",
// "errorCode":...}]}}.
type FCM struct {
	*httptest.Server
	recorder

	Key     *rsa.PrivateKey
	File    string // the service-account JSON, token_uri pointing here
	Project string
	Email   string
	KeyID   string

	mu        sync.Mutex
	now       func() time.Time
	expiresIn int
	issued    map[string]time.Time // access token → when it expires
	fetches   int
	sent      int
}

// NewFCM starts an FCM stand-in with a new service account, stopped
// when t ends.
func NewFCM(t testing.TB) *FCM {
	t.Helper()
	key, err := rsa.GenerateKey(rand.Reader, 2048)
	if err != nil {
		t.Fatal(err)
	}
	f := &FCM{recorder: newRecorder(), Key: key, Project: "sipedge-test", Email: "pusher@sipedge-test.iam.gserviceaccount.com",
		KeyID: randomHex(20), now: time.Now, expiresIn: 3599, issued: map[string]time.Time{}}
	f.Server = start(t, http.HandlerFunc(f.serve), &f.recorder, false, true)

	der, err := x509.MarshalPKCS8PrivateKey(key)
	if err != nil {
		t.Fatal(err)
	}
	sa := map[string]string{
		"type":                        "service_account",
		"project_id":                  f.Project,
		"private_key_id":              f.KeyID,
		"private_key":                 string(pem.EncodeToMemory(&pem.Block{Type: "PRIVATE KEY", Bytes: der})),
		"client_email":                f.Email,
		"client_id":                   "100000000000000000001",
		"auth_uri":                    "https://accounts.google.com/o/oauth2/auth",
		"token_uri":                   f.TokenURI(),
		"auth_provider_x509_cert_url": "https://www.googleapis.com/oauth2/v1/certs",
	}
	data, err := json.MarshalIndent(sa, "", "  ")
	if err != nil {
		t.Fatal(err)
	}
	f.File = filepath.Join(t.TempDir(), "service-account.json")
	if err := os.WriteFile(f.File, data, 0o600); err != nil {
		t.Fatal(err)
	}
	return f
}

// TokenURI is the service account's token_uri.
func (f *FCM) TokenURI() string { return f.URL + "/token" }

// TLSConfig is a client's TLS config for this server.
func (f *FCM) TLSConfig() *tls.Config { return ClientTLS(f.Server) }

// SetNow sets the server's clock (the test's fake clock).
func (f *FCM) SetNow(now func() time.Time) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.now = now
}

// SetExpiresIn sets the lifetime of access tokens issued from now on.
func (f *FCM) SetExpiresIn(seconds int) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.expiresIn = seconds
}

// TokenRequests is how many access tokens were issued.
func (f *FCM) TokenRequests() int {
	f.mu.Lock()
	defer f.mu.Unlock()
	return f.fetches
}

// Revoke invalidates every access token issued so far: the next send
// with one is answered 401 UNAUTHENTICATED.
func (f *FCM) Revoke() {
	f.mu.Lock()
	defer f.mu.Unlock()
	clear(f.issued)
}

func (f *FCM) serve(w http.ResponseWriter, r *http.Request) {
	if r.URL.Path == "/token" {
		f.token(w, r)
		return
	}
	rest, ok := strings.CutPrefix(r.URL.Path, "/v1/projects/")
	project, ok2 := strings.CutSuffix(rest, "/messages:send")
	if !ok || !ok2 || project == "" || strings.Contains(project, "/") {
		fcmFail(w, http.StatusNotFound, "", "Requested entity was not found.")
		return
	}
	if r.Method != http.MethodPost {
		fcmFail(w, http.StatusMethodNotAllowed, "", "Method not allowed.")
		return
	}
	scheme, tok, _ := strings.Cut(r.Header.Get("Authorization"), " ")
	f.mu.Lock()
	expiry, issued := f.issued[tok]
	valid := strings.EqualFold(scheme, "Bearer") && issued && f.now().Before(expiry)
	f.mu.Unlock()
	if !valid {
		fcmFail(w, http.StatusUnauthorized, "", "Request had invalid authentication credentials. Expected OAuth 2 access token, login cookie or other valid authentication credential.")
		return
	}
	if project != f.Project {
		fcmFail(w, http.StatusForbidden, "", "Permission 'cloudmessaging.messages.create' denied on resource.")
		return
	}
	if mt, _, _ := mime.ParseMediaType(r.Header.Get("Content-Type")); mt != "application/json" {
		fcmFail(w, http.StatusBadRequest, "INVALID_ARGUMENT", "Invalid JSON payload received: the body is not JSON.")
		return
	}
	body, _ := io.ReadAll(io.LimitReader(r.Body, 1<<20))
	msg, token, problem := checkMessage(body)
	if problem != "" {
		fcmFail(w, http.StatusBadRequest, "INVALID_ARGUMENT", problem)
		return
	}
	if fl, failed := f.outcome(r, token); failed {
		if fl.RetryAfter != "" {
			w.Header().Set("Retry-After", fl.RetryAfter)
		}
		fcmFail(w, fl.Status, fl.Reason, "push failed as the test asked")
		return
	}
	f.mu.Lock()
	f.sent++
	n := f.sent
	f.mu.Unlock()
	f.record(Received{Token: token, Topic: project, Header: r.Header.Clone(), Body: msg})
	writeJSON(w, http.StatusOK, map[string]string{"name": fmt.Sprintf("projects/%s/messages/0:%d%%%s", project, n, randomHex(8))})
}

// The fields of FCM v1's Message and AndroidConfig; the JSON mapping of
// protocol buffers takes each in snake_case or lowerCamelCase.
var (
	messageFields = fields("name", "data", "notification", "android", "webpush", "apns", "fcm_options", "token", "topic", "condition")
	androidFields = fields("collapse_key", "priority", "ttl", "restricted_package_name", "data", "notification", "fcm_options", "direct_boot_ok", "bandwidth_constrained_ok", "restricted_satellite_ok")
	protoDuration = regexp.MustCompile(`^[0-9]+(\.[0-9]{1,9})?s$`)
)

func fields(names ...string) map[string]bool {
	m := map[string]bool{}
	for _, n := range names {
		m[n] = true
		parts := strings.Split(n, "_")
		for i := 1; i < len(parts); i++ {
			parts[i] = strings.ToUpper(parts[i][:1]) + parts[i][1:]
		}
		m[strings.Join(parts, "")] = true
	}
	return m
}

// checkMessage checks a messages:send body as FCM would, returning the
// message and its token, or what is wrong.
func checkMessage(body []byte) (map[string]any, string, string) {
	var req map[string]json.RawMessage
	if json.Unmarshal(body, &req) != nil {
		return nil, "", "Invalid JSON payload received."
	}
	for k := range req {
		if k != "message" && k != "validate_only" && k != "validateOnly" {
			return nil, "", fmt.Sprintf("Invalid JSON payload received. Unknown name %q: Cannot find field.", k)
		}
	}
	var msg map[string]any
	if json.Unmarshal(req["message"], &msg) != nil || msg == nil {
		return nil, "", "Invalid JSON payload received. message is not an object."
	}
	targets := 0
	for k, v := range msg {
		if !messageFields[k] {
			return nil, "", fmt.Sprintf("Invalid JSON payload received. Unknown name %q at 'message': Cannot find field.", k)
		}
		if k == "token" || k == "topic" || k == "condition" {
			if s, ok := v.(string); !ok || s == "" {
				return nil, "", fmt.Sprintf("Invalid value at 'message.%s'.", k)
			}
			targets++
		}
	}
	if targets != 1 {
		return nil, "", "Exactly one of message.token, message.topic or message.condition must be set."
	}
	token, _ := msg["token"].(string)
	if p := checkData(msg["data"], "message.data"); p != "" {
		return nil, "", p
	}
	if a, ok := msg["android"]; ok {
		android, ok := a.(map[string]any)
		if !ok {
			return nil, "", "Invalid value at 'message.android'."
		}
		for k, v := range android {
			if !androidFields[k] {
				return nil, "", fmt.Sprintf("Invalid JSON payload received. Unknown name %q at 'message.android': Cannot find field.", k)
			}
			switch k {
			case "priority":
				if s, _ := v.(string); !slices.Contains([]string{"NORMAL", "HIGH", "normal", "high"}, s) {
					return nil, "", fmt.Sprintf("Invalid value at 'message.android.priority' (%v).", v)
				}
			case "ttl":
				if s, _ := v.(string); !protoDuration.MatchString(s) {
					return nil, "", "Invalid value at 'message.android.ttl' (type.googleapis.com/google.protobuf.Duration)."
				}
			case "data":
				if p := checkData(v, "message.android.data"); p != "" {
					return nil, "", p
				}
			}
		}
	}
	return msg, token, ""
}

// checkData checks a data map: string values, no key FCM keeps for itself.
func checkData(v any, where string) string {
	if v == nil {
		return ""
	}
	data, ok := v.(map[string]any)
	if !ok {
		return fmt.Sprintf("Invalid value at '%s'.", where)
	}
	for k, val := range data {
		if _, ok := val.(string); !ok {
			return fmt.Sprintf("Invalid value at '%s[%s]' (TYPE_STRING).", where, k)
		}
		lk := strings.ToLower(k)
		if lk == "from" || lk == "message_type" || strings.HasPrefix(lk, "google") || strings.HasPrefix(lk, "gcm") {
			return fmt.Sprintf("Invalid data payload key: %s", k)
		}
	}
	return ""
}

// fcmFail answers in Google's error form; errorCode "" leaves no details.
func fcmFail(w http.ResponseWriter, status int, errorCode, message string) {
	e := map[string]any{"code": status, "message": message, "status": rpcStatus(status)}
	if errorCode != "" {
		e["details"] = []map[string]string{{"@type": "type.googleapis.com/google.firebase.fcm.v1.FcmError", "errorCode": errorCode}}
	}
	writeJSON(w, status, map[string]any{"error": e})
}

func rpcStatus(status int) string {
	switch status {
	case 400:
		return "INVALID_ARGUMENT"
	case 401:
		return "UNAUTHENTICATED"
	case 403:
		return "PERMISSION_DENIED"
	case 404:
		return "NOT_FOUND"
	case 429:
		return "RESOURCE_EXHAUSTED"
	case 503:
		return "UNAVAILABLE"
	}
	return "INTERNAL"
}

// token is the OAuth2 token endpoint (RFC 7523 JWT bearer grant).
func (f *FCM) token(w http.ResponseWriter, r *http.Request) {
	oauthFail := func(status int, code, desc string) {
		writeJSON(w, status, map[string]string{"error": code, "error_description": desc})
	}
	if r.Method != http.MethodPost {
		oauthFail(http.StatusMethodNotAllowed, "invalid_request", "POST only")
		return
	}
	if mt, _, _ := mime.ParseMediaType(r.Header.Get("Content-Type")); mt != "application/x-www-form-urlencoded" {
		oauthFail(http.StatusBadRequest, "invalid_request", "form body expected")
		return
	}
	if err := r.ParseForm(); err != nil {
		oauthFail(http.StatusBadRequest, "invalid_request", "bad form")
		return
	}
	if r.PostForm.Get("grant_type") != "urn:ietf:params:oauth:grant-type:jwt-bearer" {
		oauthFail(http.StatusBadRequest, "unsupported_grant_type", "Invalid grant_type: "+r.PostForm.Get("grant_type"))
		return
	}
	jwt := r.PostForm.Get("assertion")
	var header struct{ Alg, Typ, Kid string }
	var claims struct {
		Iss, Scope, Aud, Sub string
		Iat, Exp             *int64
	}
	sig, ok := splitJWT(jwt, &header, &claims)
	if !ok || header.Alg != "RS256" || (header.Kid != "" && header.Kid != f.KeyID) {
		oauthFail(http.StatusBadRequest, "invalid_grant", "Invalid JWT: malformed or wrong alg/kid.")
		return
	}
	sum := sha256.Sum256([]byte(jwt[:strings.LastIndexByte(jwt, '.')]))
	if rsa.VerifyPKCS1v15(&f.Key.PublicKey, crypto.SHA256, sum[:], sig) != nil {
		oauthFail(http.StatusBadRequest, "invalid_grant", "Invalid JWT Signature.")
		return
	}
	if claims.Iss != f.Email || claims.Aud != f.TokenURI() {
		oauthFail(http.StatusBadRequest, "invalid_grant", "Invalid JWT: iss or aud.")
		return
	}
	if !slices.Contains(strings.Fields(claims.Scope), "https://www.googleapis.com/auth/firebase.messaging") {
		oauthFail(http.StatusBadRequest, "invalid_scope", "firebase.messaging scope missing.")
		return
	}
	f.mu.Lock()
	defer f.mu.Unlock()
	now := f.now().Unix()
	if claims.Iat == nil || claims.Exp == nil || *claims.Exp <= now || *claims.Exp-*claims.Iat > 3600 || *claims.Iat > now+300 {
		oauthFail(http.StatusBadRequest, "invalid_grant", "Invalid JWT: Token must be a short-lived token (60 minutes) and in a reasonable timeframe.")
		return
	}
	tok := "ya29.test-" + randomHex(24)
	f.issued[tok] = f.now().Add(time.Duration(f.expiresIn) * time.Second)
	f.fetches++
	writeJSON(w, http.StatusOK, map[string]any{"access_token": tok, "expires_in": f.expiresIn, "token_type": "Bearer"})
}

func randomHex(n int) string {
	b := make([]byte, n)
	_, _ = rand.Read(b)
	return hex.EncodeToString(b)
}
