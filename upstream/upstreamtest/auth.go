package upstreamtest

import (
	"crypto/hmac"
	"crypto/md5"
	"crypto/rand"
	"crypto/sha256"
	"crypto/subtle"
	"encoding/binary"
	"encoding/hex"
	"fmt"
	"strings"
	"time"

	"github.com/emiago/sipgo/sip"
	"github.com/icholy/digest"
)

// nonceTTL is how long a nonce stays fresh; an older one gets a new
// challenge with stale=true.
const nonceTTL = 5 * time.Minute

// nonceSigner issues stateless nonces: hex(issued-at | random | HMAC).
type nonceSigner struct {
	key [32]byte
}

func newNonceSigner() (*nonceSigner, error) {
	s := new(nonceSigner)
	if _, err := rand.Read(s.key[:]); err != nil {
		return nil, fmt.Errorf("nonce key: %w", err)
	}
	return s, nil
}

const (
	nonceBody = 8 + 8 // issued-at, random
	nonceMAC  = 16
)

func (s *nonceSigner) issue(now time.Time) string {
	var b [nonceBody + nonceMAC]byte
	binary.BigEndian.PutUint64(b[:8], uint64(now.UnixNano()))
	rand.Read(b[8:nonceBody])
	copy(b[nonceBody:], s.mac(b[:nonceBody]))
	return hex.EncodeToString(b[:])
}

// fresh reports whether nonce was issued by s less than nonceTTL ago.
func (s *nonceSigner) fresh(nonce string, now time.Time) bool {
	b, err := hex.DecodeString(nonce)
	if err != nil || len(b) != nonceBody+nonceMAC {
		return false
	}
	if !hmac.Equal(b[nonceBody:], s.mac(b[:nonceBody])) {
		return false
	}
	issued := time.Unix(0, int64(binary.BigEndian.Uint64(b[:8])))
	age := now.Sub(issued)
	return age >= 0 && age < nonceTTL
}

func (s *nonceSigner) mac(body []byte) []byte {
	m := hmac.New(sha256.New, s.key[:])
	m.Write(body)
	return m.Sum(nil)[:nonceMAC]
}

// authenticate checks the digest credentials of req (RFC 3261 §22, RFC 2617
// with MD5 and qop=auth or none). It returns nil when they are valid, else
// the response to send: 401 with a challenge when no credentials for our
// realm are present or the nonce is stale, 403 when they are wrong.
func (r *Registrar) authenticate(req *sip.Request) *sip.Response {
	var cred *digest.Credentials
	for _, h := range req.GetHeaders("Authorization") {
		if !digest.IsDigest(h.Value()) {
			continue
		}
		c, err := digest.ParseCredentials(h.Value())
		if err != nil {
			return r.forbidden(req)
		}
		if c.Realm == r.opts.Realm {
			cred = c
			break
		}
	}
	if cred == nil {
		return r.challenge(req, false)
	}

	password, ok := r.opts.Users[cred.Username]
	if !ok || cred.Userhash || (cred.Algorithm != "" && !strings.EqualFold(cred.Algorithm, "MD5")) {
		return r.forbidden(req)
	}
	ha1 := md5hex(cred.Username, r.opts.Realm, password)
	ha2 := md5hex(req.Method.String(), cred.URI) // uri as the client signed it, not the Request-URI
	var want string
	switch cred.QOP {
	case "":
		want = md5hex(ha1, cred.Nonce, ha2)
	case "auth":
		if cred.Cnonce == "" || cred.Nc == 0 {
			return r.forbidden(req)
		}
		want = md5hex(ha1, cred.Nonce, fmt.Sprintf("%08x", cred.Nc), cred.Cnonce, "auth", ha2)
	default:
		return r.forbidden(req)
	}
	if subtle.ConstantTimeCompare([]byte(want), []byte(strings.ToLower(cred.Response))) != 1 {
		return r.forbidden(req)
	}
	if !r.nonces.fresh(cred.Nonce, r.opts.Now()) {
		// Right password, but a nonce we did not issue or that is too old.
		return r.challenge(req, true)
	}
	return nil
}

func (r *Registrar) challenge(req *sip.Request, stale bool) *sip.Response {
	chal := digest.Challenge{
		Realm:     r.opts.Realm,
		Nonce:     r.nonces.issue(r.opts.Now()),
		Algorithm: "MD5",
		Stale:     stale,
	}
	if !r.opts.DigestNoQOP {
		chal.QOP = []string{"auth"}
	}
	res := sip.NewResponseFromRequest(req, sip.StatusUnauthorized, "Unauthorized", nil)
	res.AppendHeader(sip.NewHeader("WWW-Authenticate", chal.String()))
	return res
}

func (r *Registrar) forbidden(req *sip.Request) *sip.Response {
	return sip.NewResponseFromRequest(req, sip.StatusForbidden, "Forbidden", nil)
}

func md5hex(parts ...string) string {
	sum := md5.Sum([]byte(strings.Join(parts, ":")))
	return hex.EncodeToString(sum[:])
}
