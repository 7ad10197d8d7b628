package push

import (
	"bytes"
	"context"
	"crypto/rsa"
	"encoding/json"
	"errors"
	"fmt"
	"net/http"
	"net/url"
	"os"
	"strconv"
	"strings"
	"time"
)

// FCM, Google's push service, HTTP v1 API: a POST to
// /v1/projects/<project>/messages:send with an OAuth2 access token that
// the service account's key obtains (a JWT assertion signed RS256, posted
// to its token_uri). A high-priority data message, so the app's
// messaging service runs even in Doze. RFC 8599 §11: pn-provider "fcm",
// pn-param the project ID, pn-prid the registration token.

const (
	fcmScope     = "https://www.googleapis.com/auth/firebase.messaging"
	googleToken  = "https://oauth2.googleapis.com/token"
	jwtBearer    = "urn:ietf:params:oauth:grant-type:jwt-bearer"
	maxFCMToken  = 4096
	tokenSlack   = time.Minute // an access token is renewed this long before it expires
	assertionTTL = time.Hour   // the longest Google accepts
)

type fcmSender struct {
	client   *http.Client
	base     *url.URL
	projects map[string]bool
	project  string // for a push without pn-param
	ttl      time.Duration
	timeout  time.Duration
	tokens   *oauthSource
}

// serviceAccount is the JSON key file of a Google service account.
type serviceAccount struct {
	Type         string `json:"type"`
	ProjectID    string `json:"project_id"`
	PrivateKeyID string `json:"private_key_id"`
	PrivateKey   string `json:"private_key"`
	ClientEmail  string `json:"client_email"`
	TokenURI     string `json:"token_uri"`
}

func newFCM(cfg Config, o options) (*fcmSender, error) {
	file := cfg.FCMServiceAccountFile
	data, err := os.ReadFile(file)
	if err != nil {
		return nil, fmt.Errorf("push.fcm_service_account_file: %w", err)
	}
	var sa serviceAccount
	if json.Unmarshal(data, &sa) != nil { // its error may quote the file
		return nil, fmt.Errorf("push.fcm_service_account_file: %s: not a JSON object of a service account", file)
	}
	if sa.Type != "" && sa.Type != "service_account" {
		return nil, fmt.Errorf("push.fcm_service_account_file: %s: type is %q, not service_account", file, code(sa.Type))
	}
	if sa.ClientEmail == "" || sa.PrivateKey == "" {
		return nil, fmt.Errorf("push.fcm_service_account_file: %s: client_email or private_key missing", file)
	}
	k, err := parsePrivateKey([]byte(sa.PrivateKey))
	if err != nil {
		return nil, fmt.Errorf("push.fcm_service_account_file: %s: private_key: %v", file, err)
	}
	rk, ok := k.(*rsa.PrivateKey)
	if !ok {
		return nil, fmt.Errorf("push.fcm_service_account_file: %s: private_key is not an RSA key", file)
	}
	if sa.TokenURI == "" {
		sa.TokenURI = googleToken
	}
	tu, err := url.Parse(sa.TokenURI)
	if err != nil || tu.Scheme != "https" || tu.Host == "" || tu.User != nil {
		return nil, fmt.Errorf("push.fcm_service_account_file: %s: token_uri is not an https URL", file)
	}
	projects := cfg.FCMProjects
	if len(projects) == 0 {
		if !validProject(sa.ProjectID) {
			return nil, fmt.Errorf("push.fcm_service_account_file: %s: no valid project_id: set push.fcm_projects", file)
		}
		projects = []string{sa.ProjectID}
	}
	base, err := parseBase("fcm", o.fcm)
	if err != nil {
		return nil, err
	}
	client := newClient(o.tls, cfg.Timeout, false)
	f := &fcmSender{
		client: client, base: base, project: projects[0], projects: make(map[string]bool, len(projects)),
		ttl: cfg.TTL, timeout: cfg.Timeout,
		tokens: &oauthSource{client: client, key: rk, keyID: sa.PrivateKeyID, email: sa.ClientEmail,
			tokenURL: tu, now: o.now, lock: make(chan struct{}, 1)},
	}
	for _, p := range projects {
		f.projects[p] = true
	}
	return f, nil
}

// fcmRequest is the body of messages:send.
type fcmRequest struct {
	Message fcmMessage `json:"message"`
}

type fcmMessage struct {
	Token   string            `json:"token"`
	Data    map[string]string `json:"data"`
	Android fcmAndroid        `json:"android"`
}

type fcmAndroid struct {
	Priority string `json:"priority"`
	TTL      string `json:"ttl"`
}

// fcmError is the body of an error response (google.rpc.Status with
// FcmError details).
type fcmError struct {
	Error struct {
		Code    int    `json:"code"`
		Status  string `json:"status"`
		Details []struct {
			Type      string `json:"@type"`
			ErrorCode string `json:"errorCode"`
		} `json:"details"`
	} `json:"error"`
}

func (f *fcmSender) Send(ctx context.Context, p Push) error {
	project := p.Param
	if project == "" {
		project = f.project
	}
	if !validProject(project) || !f.projects[project] {
		return badParams("fcm", "pn-param names a project this edge does not push for")
	}
	if len(p.PRID) > maxFCMToken || strings.ContainsFunc(p.PRID, func(r rune) bool { return r <= ' ' || r > 0x7e }) {
		return badParams("fcm", "pn-prid is not a registration token")
	}
	ctx, cancel := context.WithTimeout(ctx, f.timeout)
	defer cancel()
	// Data keys: "from", "message_type" and "google…"/"gcm…" are
	// FCM's own, so the caller goes as "caller".
	data := map[string]string{"id": p.ID, "method": clip(p.Method, 32), "call-id": clip(p.CallID, 256), "caller": clip(p.From, 1024)}
	for k, v := range data {
		if v == "" {
			delete(data, k)
		}
	}
	body, err := json.Marshal(fcmRequest{Message: fcmMessage{Token: p.PRID, Data: data,
		Android: fcmAndroid{Priority: "HIGH", TTL: strconv.FormatInt(int64(f.ttl/time.Second), 10) + "s"}}})
	if err != nil {
		return err
	}
	u := f.base.JoinPath("v1", "projects", project, "messages:send")
	for attempt := 0; ; attempt++ {
		access, err := f.tokens.get(ctx)
		if err != nil {
			return err
		}
		req, err := http.NewRequestWithContext(ctx, http.MethodPost, u.String(), bytes.NewReader(body))
		if err != nil {
			return errors.New("push: fcm: cannot build the request") // err would quote the URL
		}
		req.Header.Set("Authorization", "Bearer "+access)
		req.Header.Set("Content-Type", "application/json; charset=utf-8")
		resp, err := f.client.Do(req)
		if err != nil {
			return unreachable("fcm", u, err)
		}
		raw := readBody(resp)
		if resp.StatusCode == http.StatusOK {
			return nil
		}
		var e fcmError
		_ = json.Unmarshal(raw, &e)
		reason := code(e.Error.Status)
		for _, d := range e.Error.Details {
			if strings.HasSuffix(d.Type, "google.firebase.fcm.v1.FcmError") && code(d.ErrorCode) != "" {
				reason = d.ErrorCode
			}
		}
		if resp.StatusCode == http.StatusUnauthorized && reason != "THIRD_PARTY_AUTH_ERROR" && attempt == 0 {
			f.tokens.drop(ctx, access) // revoked or expired early: fetch another, once
			continue
		}
		return &Rejected{Provider: "fcm", Status: resp.StatusCode, Reason: orStatus(reason, resp.StatusCode),
			Class: fcmClass(resp.StatusCode, reason), RetryAfter: retryAfter(resp.Header, f.tokens.now())}
	}
}

// fcmClass classifies an FCM error (FCM v1 ErrorCode): UNREGISTERED is a
// dead token, SENDER_ID_MISMATCH another project's; both are gone.
func fcmClass(status int, reason string) Class {
	switch reason {
	case "UNREGISTERED", "SENDER_ID_MISMATCH":
		return Gone
	case "QUOTA_EXCEEDED", "UNAVAILABLE", "INTERNAL":
		return Retry
	case "INVALID_ARGUMENT", "THIRD_PARTY_AUTH_ERROR", "PERMISSION_DENIED":
		return Refused
	}
	if status == http.StatusNotFound || status == http.StatusGone {
		return Refused // a project or API not found: ours to fix
	}
	return classify(status)
}

// oauthSource obtains and caches the service account's access token.
// One request at a time fetches it; the others wait for it (or for their
// own context).
type oauthSource struct {
	client   *http.Client
	key      *rsa.PrivateKey
	keyID    string
	email    string
	tokenURL *url.URL
	now      func() time.Time

	lock   chan struct{} // held while reading, or fetching, the token
	token  string
	expiry time.Time
}

func (o *oauthSource) get(ctx context.Context) (string, error) {
	select {
	case o.lock <- struct{}{}:
	case <-ctx.Done():
		return "", fmt.Errorf("push: fcm: waiting for the access token: %w", ctx.Err())
	}
	defer func() { <-o.lock }()
	if o.token != "" && o.now().Before(o.expiry) {
		return o.token, nil
	}
	tok, life, err := o.fetch(ctx)
	if err != nil {
		return "", err
	}
	o.token, o.expiry = tok, o.now().Add(life-min(tokenSlack, life/2))
	return tok, nil
}

// drop forgets the token the service refused, unless already replaced.
func (o *oauthSource) drop(ctx context.Context, refused string) {
	select {
	case o.lock <- struct{}{}:
	case <-ctx.Done():
		return
	}
	if o.token == refused {
		o.token = ""
	}
	<-o.lock
}

// oauthResponse is the token endpoint's answer, success or error.
type oauthResponse struct {
	AccessToken string `json:"access_token"`
	ExpiresIn   int64  `json:"expires_in"`
	TokenType   string `json:"token_type"`
	Error       string `json:"error"`
}

// fetch trades a fresh JWT assertion for an access token (RFC 7523).
func (o *oauthSource) fetch(ctx context.Context) (string, time.Duration, error) {
	now := o.now()
	header := map[string]string{"typ": "JWT"}
	if o.keyID != "" {
		header["kid"] = o.keyID
	}
	assertion, err := signJWT(o.key, header, struct {
		Iss   string `json:"iss"`
		Scope string `json:"scope"`
		Aud   string `json:"aud"`
		Iat   int64  `json:"iat"`
		Exp   int64  `json:"exp"`
	}{o.email, fcmScope, o.tokenURL.String(), now.Unix(), now.Add(assertionTTL).Unix()})
	if err != nil {
		return "", 0, fmt.Errorf("push: fcm: signing the token request: %v", err)
	}
	form := url.Values{"grant_type": {jwtBearer}, "assertion": {assertion}}
	req, err := http.NewRequestWithContext(ctx, http.MethodPost, o.tokenURL.String(), strings.NewReader(form.Encode()))
	if err != nil {
		return "", 0, errors.New("push: fcm: cannot build the token request")
	}
	req.Header.Set("Content-Type", "application/x-www-form-urlencoded")
	resp, err := o.client.Do(req)
	if err != nil {
		return "", 0, unreachable("fcm", o.tokenURL, err)
	}
	raw := readBody(resp)
	var r oauthResponse
	_ = json.Unmarshal(raw, &r)
	if resp.StatusCode != http.StatusOK {
		reason := "oauth"
		if c := code(r.Error); c != "" {
			reason += ":" + c
		}
		return "", 0, &Rejected{Provider: "fcm", Status: resp.StatusCode, Reason: reason,
			Class: classify(resp.StatusCode), RetryAfter: retryAfter(resp.Header, now)}
	}
	if r.AccessToken == "" || (r.TokenType != "" && !strings.EqualFold(r.TokenType, "Bearer")) ||
		strings.ContainsFunc(r.AccessToken, func(c rune) bool { return c <= ' ' || c > 0x7e }) {
		return "", 0, &Rejected{Provider: "fcm", Status: resp.StatusCode, Reason: "oauth:bad_token_response", Class: Retry}
	}
	return r.AccessToken, time.Duration(min(max(r.ExpiresIn, 0), 86400)) * time.Second, nil
}
