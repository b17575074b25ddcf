package domain

import (
	"crypto/hmac"
	"crypto/rand"
	"crypto/sha256"
	"encoding/binary"
	"encoding/hex"
	"errors"
	"hash/crc32"
	"io"
	"strings"

	"github.com/google/uuid"
)

// TokenKind tells a session token from a personal API token; the kind is visible in the token's
// prefix so a leaked token is recognizable (and secret scanners can match it).
type TokenKind int

// The token kinds.
const (
	// APIToken is a personal API token, prefix "idt_".
	APIToken TokenKind = iota + 1
	// SessionToken is a log-in session token, prefix "ids_".
	SessionToken
)

const (
	apiTokenPrefix     = "idt_"
	sessionTokenPrefix = "ids_"
	tokenRandomLen     = 30 // base62 characters: ~178 bits of entropy
	tokenChecksumLen   = 6  // base62 CRC-32 of prefix+random
	tokenLen           = 4 + tokenRandomLen + tokenChecksumLen
	base62             = "0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz"
)

// ErrMalformedToken is returned by ParseToken for a string that cannot be an identityd token:
// wrong prefix, length, alphabet or checksum. It is decided without any lookup.
var ErrMalformedToken = errors.New("malformed token")

func (k TokenKind) prefix() string {
	if k == SessionToken {
		return sessionTokenPrefix
	}
	return apiTokenPrefix
}

// String names the kind for logs and actors.
func (k TokenKind) String() string {
	if k == SessionToken {
		return "session"
	}
	return "token"
}

// Digest is the SHA-256 of a token, hex encoded: the only form in which a token is stored.
func Digest(token string) string {
	sum := sha256.Sum256([]byte(token))
	return hex.EncodeToString(sum[:])
}

// ParseToken checks a presented token's shape and checksum and returns its kind and digest.
func ParseToken(token string) (TokenKind, string, error) {
	if len(token) != tokenLen {
		return 0, "", ErrMalformedToken
	}
	var kind TokenKind
	switch token[:4] {
	case apiTokenPrefix:
		kind = APIToken
	case sessionTokenPrefix:
		kind = SessionToken
	default:
		return 0, "", ErrMalformedToken
	}
	for i := 4; i < len(token); i++ {
		if strings.IndexByte(base62, token[i]) < 0 {
			return 0, "", ErrMalformedToken
		}
	}
	body := token[:4+tokenRandomLen]
	if checksum(body) != token[4+tokenRandomLen:] {
		return 0, "", ErrMalformedToken
	}
	return kind, Digest(token), nil
}

// newToken builds a token of the kind from a source of random bytes.
func newToken(kind TokenKind, src io.Reader) (string, error) {
	var b strings.Builder
	b.Grow(tokenLen)
	b.WriteString(kind.prefix())
	buf := make([]byte, 64)
	for b.Len() < 4+tokenRandomLen {
		if _, err := io.ReadFull(src, buf); err != nil {
			return "", err
		}
		for _, c := range buf {
			if c < 248 && b.Len() < 4+tokenRandomLen { // 248 = 4*62: rejection keeps it unbiased
				b.WriteByte(base62[c%62])
			}
		}
	}
	body := b.String()
	return body + checksum(body), nil
}

func checksum(body string) string {
	v := crc32.ChecksumIEEE([]byte(body))
	out := make([]byte, tokenChecksumLen)
	for i := tokenChecksumLen - 1; i >= 0; i-- {
		out[i] = base62[v%62]
		v /= 62
	}
	return string(out)
}

// secrets makes the ids and secrets of new tokens, sessions and users. With an idempotency key
// they are derived (HMAC) from a server key and the key's scope, so that a retried create
// produces the very same id and secret and can return the first answer without the secret ever
// being stored; without one they are random.
type secrets struct {
	key []byte
}

// derivation is a deterministic byte stream: HMAC-SHA256(key, label || counter).
type derivation struct {
	key   []byte
	label string
	n     uint32
	buf   []byte
}

func (d *derivation) Read(p []byte) (int, error) {
	for len(d.buf) < len(p) {
		m := hmac.New(sha256.New, d.key)
		m.Write([]byte(d.label))
		var c [4]byte
		binary.BigEndian.PutUint32(c[:], d.n)
		m.Write(c[:])
		d.n++
		d.buf = m.Sum(d.buf)
	}
	n := copy(p, d.buf)
	d.buf = d.buf[n:]
	return n, nil
}

func (s secrets) source(scope string) io.Reader {
	if scope == "" {
		return rand.Reader
	}
	return &derivation{key: s.key, label: scope}
}

// id returns a new id: random (v7, time-ordered) without a scope, derived with one.
func (s secrets) id(scope, purpose string) uuid.UUID {
	if scope == "" {
		return uuid.Must(uuid.NewV7())
	}
	var b [16]byte
	_, _ = io.ReadFull(s.source(scope+"\x00id\x00"+purpose), b[:])
	b[6] = (b[6] & 0x0f) | 0x80 // version 8: custom
	b[8] = (b[8] & 0x3f) | 0x80 // RFC 4122 variant
	return uuid.UUID(b)
}

// token returns a new token of the kind: random without a scope, derived with one.
func (s secrets) token(kind TokenKind, scope string) (string, error) {
	src := s.source(scope)
	if scope != "" {
		src = s.source(scope + "\x00secret\x00" + kind.prefix())
	}
	return newToken(kind, src)
}
