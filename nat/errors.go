package nat

import "errors"

// ErrBadToken is returned, wrapped with the reason, by [Signer.Decode] for
// any token it did not issue: malformed, truncated, of another version or
// sealed with a key it does not hold. Callers should treat every such token alike and
// test with errors.Is.
var ErrBadToken = errors.New("nat: bad flow token")
