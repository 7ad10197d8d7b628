package pushtest

import (
	"encoding/json"
	"io"
	"mime"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"testing"
)

// Gateway is a generic push gateway on plain HTTP at 127.0.0.1: it takes
// a JSON POST whose "prid" is a non-empty string, with "Authorization:
// Bearer <Token>", and answers 202, or the status and {"reason": ...} a
// test asked for, or 401 {"reason":"Unauthorized"} to a wrong token.
type Gateway struct {
	*httptest.Server
	recorder

	Token     string // the bearer token it expects
	TokenFile string // Token, written for the client to read
}

// NewGateway starts a gateway stand-in, stopped when t ends.
func NewGateway(t testing.TB) *Gateway {
	t.Helper()
	g := &Gateway{recorder: newRecorder(), Token: "gw-" + randomHex(16)}
	g.TokenFile = filepath.Join(t.TempDir(), "gateway.token")
	if err := os.WriteFile(g.TokenFile, []byte(g.Token+"\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	g.Server = start(t, http.HandlerFunc(g.serve), &g.recorder, false, false)
	return g
}

func (g *Gateway) serve(w http.ResponseWriter, r *http.Request) {
	fail := func(status int, reason string) { writeJSON(w, status, map[string]string{"reason": reason}) }
	if r.Method != http.MethodPost {
		fail(http.StatusMethodNotAllowed, "MethodNotAllowed")
		return
	}
	if r.Header.Get("Authorization") != "Bearer "+g.Token {
		fail(http.StatusUnauthorized, "Unauthorized")
		return
	}
	if mt, _, _ := mime.ParseMediaType(r.Header.Get("Content-Type")); mt != "application/json" {
		fail(http.StatusUnsupportedMediaType, "NotJSON")
		return
	}
	var body map[string]any
	data, _ := io.ReadAll(io.LimitReader(r.Body, 1<<20))
	if json.Unmarshal(data, &body) != nil {
		fail(http.StatusBadRequest, "BadJSON")
		return
	}
	prid, _ := body["prid"].(string)
	if prid == "" {
		fail(http.StatusBadRequest, "NoPRID")
		return
	}
	if f, failed := g.outcome(r, prid); failed {
		if f.RetryAfter != "" {
			w.Header().Set("Retry-After", f.RetryAfter)
		}
		fail(f.Status, f.Reason)
		return
	}
	g.record(Received{Token: prid, Header: r.Header.Clone(), Body: body})
	w.WriteHeader(http.StatusAccepted)
}
