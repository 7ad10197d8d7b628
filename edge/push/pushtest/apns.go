package pushtest

import (
	"bytes"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/sha256"
	"crypto/tls"
	"crypto/x509"
	"encoding/hex"
	"encoding/json"
	"encoding/pem"
	"fmt"
	"io"
	"math/big"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"
)

// APNs is a stand-in for Apple's push service: api.push.apple.com's
// HTTP/2 API, token-based authentication, VoIP pushes.
//
// It speaks HTTP/2 only (ALPN "h2"; an HTTP/1.1 client fails the TLS
// handshake) and checks, as APNs does: POST /3/device/<hex token>; an
// "authorization: bearer <JWT>" whose header is {"alg":"ES256","kid":KeyID}
// and claims {"iss":TeamID,"iat":...}, signed by Key, not older than an
// hour, not renewed more often than every 20 minutes; apns-push-type
// "voip" with apns-topic Bundle+".voip" and apns-priority 10;
// apns-expiration an integer; apns-id a UUID; a JSON body of at most
// 5120 bytes (Apple's VoIP limit). It answers 200 with apns-id, or the
// status and {"reason": ...} Apple documents.
type APNs struct {
	*httptest.Server
	recorder

	Key     *ecdsa.PrivateKey
	KeyFile string // Key as Apple issues it: PKCS#8 PEM, a .p8 file
	KeyID   string
	TeamID  string
	Bundle  string

	mu     sync.Mutex
	now    func() time.Time
	tokens []ProviderToken
}

// ProviderToken is one distinct provider token the server accepted.
type ProviderToken struct {
	Issued time.Time // its iat
	First  time.Time // when it was first used
}

// NewAPNs starts an APNs stand-in with a new key, stopped when t ends.
func NewAPNs(t testing.TB) *APNs {
	t.Helper()
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	der, err := x509.MarshalPKCS8PrivateKey(key)
	if err != nil {
		t.Fatal(err)
	}
	file := filepath.Join(t.TempDir(), "AuthKey_KEYID12345.p8")
	if err := os.WriteFile(file, pem.EncodeToMemory(&pem.Block{Type: "PRIVATE KEY", Bytes: der}), 0o600); err != nil {
		t.Fatal(err)
	}
	a := &APNs{recorder: newRecorder(), Key: key, KeyFile: file, KeyID: "KEYID12345", TeamID: "TEAM123456",
		Bundle: "com.example.phone", now: time.Now}
	a.Server = start(t, http.HandlerFunc(a.serve), &a.recorder, true, true)
	return a
}

// Param is the pn-param an app of this team and bundle registers with.
func (a *APNs) Param() string { return a.TeamID + "." + a.Bundle + ".voip" }

// SetNow sets the server's clock (a test's fake clock, shared with the
// client, so token ages agree).
func (a *APNs) SetNow(now func() time.Time) {
	a.mu.Lock()
	defer a.mu.Unlock()
	a.now = now
}

// ProviderTokens are the distinct provider tokens used so far, in order.
func (a *APNs) ProviderTokens() []ProviderToken {
	a.mu.Lock()
	defer a.mu.Unlock()
	return append([]ProviderToken(nil), a.tokens...)
}

// TLSConfig is a client's TLS config for this server.
func (a *APNs) TLSConfig() *tls.Config { return ClientTLS(a.Server) }

// apnsMaxPayload is Apple's limit for a VoIP push.
const apnsMaxPayload = 5120

func (a *APNs) serve(w http.ResponseWriter, r *http.Request) {
	fail := func(status int, reason string) {
		w.Header().Set("Apns-Id", newUUID())
		body := map[string]any{"reason": reason}
		if status == http.StatusGone {
			body["timestamp"] = time.Now().UnixMilli()
		}
		writeJSON(w, status, body)
	}
	if r.ProtoMajor != 2 {
		fail(http.StatusHTTPVersionNotSupported, "HTTP2Required") // unreachable: ALPN offers h2 only
		return
	}
	if r.Method != http.MethodPost {
		fail(http.StatusMethodNotAllowed, "MethodNotAllowed")
		return
	}
	token, ok := strings.CutPrefix(r.URL.Path, "/3/device/")
	if !ok {
		fail(http.StatusNotFound, "BadPath")
		return
	}
	if token == "" {
		fail(http.StatusBadRequest, "MissingDeviceToken")
		return
	}
	if _, err := hex.DecodeString(token); err != nil {
		fail(http.StatusBadRequest, "BadDeviceToken")
		return
	}
	for _, h := range []string{"Authorization", "Apns-Topic", "Apns-Push-Type", "Apns-Priority", "Apns-Expiration", "Apns-Id"} {
		if len(r.Header.Values(h)) > 1 {
			fail(http.StatusBadRequest, "DuplicateHeaders")
			return
		}
	}
	if status, reason := a.authorize(r.Header.Get("Authorization")); status != 0 {
		fail(status, reason)
		return
	}
	if r.Header.Get("Apns-Push-Type") != "voip" {
		fail(http.StatusBadRequest, "InvalidPushType")
		return
	}
	topic := r.Header.Get("Apns-Topic")
	switch {
	case topic == "":
		fail(http.StatusBadRequest, "MissingTopic")
		return
	case !strings.HasSuffix(topic, ".voip"): // a VoIP push's topic
		fail(http.StatusBadRequest, "BadTopic")
		return
	case topic != a.Bundle+".voip":
		fail(http.StatusBadRequest, "DeviceTokenNotForTopic")
		return
	}
	if p := r.Header.Get("Apns-Priority"); p != "" && p != "10" { // VoIP: 10 only
		fail(http.StatusBadRequest, "BadPriority")
		return
	}
	if e := r.Header.Get("Apns-Expiration"); e != "" {
		if n, err := strconv.ParseInt(e, 10, 64); err != nil || n < 0 {
			fail(http.StatusBadRequest, "BadExpirationDate")
			return
		}
	}
	id := r.Header.Get("Apns-Id")
	if id != "" && !isUUID(id) {
		fail(http.StatusBadRequest, "BadMessageId")
		return
	}
	body, _ := io.ReadAll(io.LimitReader(r.Body, apnsMaxPayload+1))
	var payload map[string]any
	switch {
	case len(bytes.TrimSpace(body)) == 0:
		fail(http.StatusBadRequest, "PayloadEmpty")
		return
	case len(body) > apnsMaxPayload:
		fail(http.StatusRequestEntityTooLarge, "PayloadTooLarge")
		return
	case json.Unmarshal(body, &payload) != nil:
		fail(http.StatusBadRequest, "BadRequest") // Apple's code for malformed JSON is undocumented
		return
	}
	if f, failed := a.outcome(r, token); failed {
		if f.RetryAfter != "" {
			w.Header().Set("Retry-After", f.RetryAfter)
		}
		fail(f.Status, f.Reason)
		return
	}
	if id == "" {
		id = newUUID()
	}
	a.record(Received{Token: token, Topic: topic, Header: r.Header.Clone(), Body: payload})
	w.Header().Set("Apns-Id", id)
	w.WriteHeader(http.StatusOK)
}

// authorize checks a provider token; status 0 is valid.
func (a *APNs) authorize(auth string) (int, string) {
	if auth == "" {
		return http.StatusForbidden, "MissingProviderToken"
	}
	scheme, jwt, ok := strings.Cut(auth, " ")
	if !ok || !strings.EqualFold(scheme, "bearer") {
		return http.StatusForbidden, "InvalidProviderToken"
	}
	var header struct{ Alg, Kid, Typ string }
	var claims struct {
		Iss string
		Iat *int64
	}
	sig, ok := splitJWT(jwt, &header, &claims)
	if !ok || header.Alg != "ES256" || header.Kid != a.KeyID || claims.Iss != a.TeamID || claims.Iat == nil || len(sig) != 64 {
		return http.StatusForbidden, "InvalidProviderToken"
	}
	sum := sha256.Sum256([]byte(jwt[:strings.LastIndexByte(jwt, '.')]))
	rr, ss := new(big.Int).SetBytes(sig[:32]), new(big.Int).SetBytes(sig[32:])
	if !ecdsa.Verify(&a.Key.PublicKey, sum[:], rr, ss) {
		return http.StatusForbidden, "InvalidProviderToken"
	}
	a.mu.Lock()
	defer a.mu.Unlock()
	now := a.now()
	iat := time.Unix(*claims.Iat, 0)
	if now.Sub(iat) > time.Hour {
		return http.StatusForbidden, "ExpiredProviderToken"
	}
	if iat.Sub(now) > time.Minute {
		return http.StatusForbidden, "InvalidProviderToken" // issued in the future
	}
	if n := len(a.tokens); n == 0 || !a.tokens[n-1].Issued.Equal(iat) {
		if n > 0 && now.Sub(a.tokens[n-1].First) < 20*time.Minute {
			return http.StatusTooManyRequests, "TooManyProviderTokenUpdates"
		}
		a.tokens = append(a.tokens, ProviderToken{Issued: iat, First: now})
	}
	return 0, ""
}

// splitJWT decodes a compact JWS's header and claims into h and c, and
// returns its signature.
func splitJWT(jwt string, h, c any) ([]byte, bool) {
	parts := strings.Split(jwt, ".")
	if len(parts) != 3 {
		return nil, false
	}
	hj, err1 := b64.DecodeString(parts[0])
	cj, err2 := b64.DecodeString(parts[1])
	sig, err3 := b64.DecodeString(parts[2])
	if err1 != nil || err2 != nil || err3 != nil || json.Unmarshal(hj, h) != nil || json.Unmarshal(cj, c) != nil {
		return nil, false
	}
	return sig, true
}

func newUUID() string {
	var b [16]byte
	_, _ = rand.Read(b[:])
	b[6] = b[6]&0x0f | 0x40
	b[8] = b[8]&0x3f | 0x80
	return fmt.Sprintf("%x-%x-%x-%x-%x", b[0:4], b[4:6], b[6:8], b[8:10], b[10:16])
}

func isUUID(s string) bool {
	if len(s) != 36 || s[8] != '-' || s[13] != '-' || s[18] != '-' || s[23] != '-' {
		return false
	}
	_, err := hex.DecodeString(strings.ReplaceAll(s, "-", ""))
	return err == nil
}
