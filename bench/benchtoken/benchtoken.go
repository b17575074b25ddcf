// Package benchtoken makes identityd-shaped tokens for the benchmark harness: bulk-seeded
// read-model rows and the CRUD baseline need tokens the service (and the baseline) accept.
// The format mirrors domain's: prefix + 30 base62 characters + a 6-character base62 CRC-32.
package benchtoken

import (
	"crypto/rand"
	"crypto/sha256"
	"encoding/hex"
	"hash/crc32"
	"strings"
)

const (
	randomLen   = 30
	checksumLen = 6
	base62      = "0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz"
)

// New returns a fresh token with the prefix ("idt_" for API tokens, "ids_" for sessions).
func New(prefix string) string {
	var b strings.Builder
	b.Grow(4 + randomLen + checksumLen)
	b.WriteString(prefix)
	buf := make([]byte, 64)
	for b.Len() < 4+randomLen {
		_, _ = rand.Read(buf)
		for _, c := range buf {
			if c < 248 && b.Len() < 4+randomLen {
				b.WriteByte(base62[c%62])
			}
		}
	}
	body := b.String()
	return body + checksum(body)
}

// Valid reports whether a token has the identityd shape and checksum.
func Valid(token string) bool {
	if len(token) != 4+randomLen+checksumLen || (token[:4] != "idt_" && token[:4] != "ids_") {
		return false
	}
	return checksum(token[:4+randomLen]) == token[4+randomLen:]
}

// Digest is the SHA-256 of a token, hex encoded: how identityd stores it.
func Digest(token string) string {
	sum := sha256.Sum256([]byte(token))
	return hex.EncodeToString(sum[:])
}

func checksum(body string) string {
	v := crc32.ChecksumIEEE([]byte(body))
	out := make([]byte, checksumLen)
	for i := checksumLen - 1; i >= 0; i-- {
		out[i] = base62[v%62]
		v /= 62
	}
	return string(out)
}
