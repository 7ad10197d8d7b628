package push

import (
	"crypto"
	"crypto/ecdsa"
	"crypto/rand"
	"crypto/rsa"
	"crypto/sha256"
	"crypto/x509"
	"encoding/base64"
	"encoding/json"
	"encoding/pem"
	"errors"
	"fmt"
)

// JSON Web Tokens (RFC 7519), compact form, signed ES256 (APNs provider
// tokens) or RS256 (Google's OAuth2 assertions): just what the two
// services need.

var b64 = base64.RawURLEncoding

// signJWT returns header.claims.signature for key: an *ecdsa.PrivateKey
// on P-256 (ES256) or an *rsa.PrivateKey (RS256). header's "alg" is set.
func signJWT(key crypto.Signer, header map[string]string, claims any) (string, error) {
	h := map[string]string{}
	for k, v := range header {
		h[k] = v
	}
	switch key.(type) {
	case *ecdsa.PrivateKey:
		h["alg"] = "ES256"
	case *rsa.PrivateKey:
		h["alg"] = "RS256"
	default:
		return "", errors.New("unsupported key type")
	}
	hj, err := json.Marshal(h)
	if err != nil {
		return "", err
	}
	cj, err := json.Marshal(claims)
	if err != nil {
		return "", err
	}
	input := b64.EncodeToString(hj) + "." + b64.EncodeToString(cj)
	sum := sha256.Sum256([]byte(input))
	var sig []byte
	switch k := key.(type) {
	case *ecdsa.PrivateKey:
		// JWS ES256 is R || S, each 32 bytes big-endian (RFC 7518
		// §3.4), not the ASN.1 form crypto/ecdsa.SignASN1 makes.
		r, s, err := ecdsa.Sign(rand.Reader, k, sum[:])
		if err != nil {
			return "", err
		}
		sig = make([]byte, 64)
		r.FillBytes(sig[:32])
		s.FillBytes(sig[32:])
	case *rsa.PrivateKey:
		sig, err = rsa.SignPKCS1v15(nil, k, crypto.SHA256, sum[:])
		if err != nil {
			return "", err
		}
	}
	return input + "." + b64.EncodeToString(sig), nil
}

// parsePrivateKey reads one PEM private key (PKCS#8, as Apple's .p8 files
// and Google's service-account keys are; PKCS#1 and SEC 1 accepted too).
// Its errors never quote the input.
func parsePrivateKey(data []byte) (crypto.Signer, error) {
	block, _ := pem.Decode(data)
	if block == nil {
		return nil, errors.New("no PEM block")
	}
	var (
		key any
		err error
	)
	switch block.Type {
	case "PRIVATE KEY":
		key, err = x509.ParsePKCS8PrivateKey(block.Bytes)
	case "EC PRIVATE KEY":
		key, err = x509.ParseECPrivateKey(block.Bytes)
	case "RSA PRIVATE KEY":
		key, err = x509.ParsePKCS1PrivateKey(block.Bytes)
	default:
		return nil, fmt.Errorf("PEM block is %q, not a private key", block.Type)
	}
	if err != nil {
		return nil, errors.New("PEM block is not a valid private key")
	}
	s, ok := key.(crypto.Signer)
	if !ok {
		return nil, errors.New("unsupported private key type")
	}
	return s, nil
}
