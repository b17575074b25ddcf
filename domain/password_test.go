package domain

import (
	"errors"
	"strings"
	"testing"
)

// fastPW keeps argon2id cheap so the race build stays fast.
var fastPW = PasswordParams{MemoryKiB: 64, Time: 1, Threads: 1}

func mustHash(t testing.TB, pw string, p PasswordParams) string {
	t.Helper()
	h, err := hashPassword(pw, p)
	if err != nil {
		t.Fatalf("hashPassword: %v", err)
	}
	return h
}

func TestHashPasswordFormat(t *testing.T) {
	t.Parallel()
	tests := []struct {
		name   string
		params PasswordParams
		prefix string
	}{
		{"fast", fastPW, "$argon2id$v=19$m=64,t=1,p=1$"},
		{"two passes two lanes", PasswordParams{MemoryKiB: 128, Time: 2, Threads: 2}, "$argon2id$v=19$m=128,t=2,p=2$"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			h1 := mustHash(t, "correct horse", tc.params)
			h2 := mustHash(t, "correct horse", tc.params)
			if !strings.HasPrefix(h1, tc.prefix) {
				t.Errorf("hash %q, want prefix %q", h1, tc.prefix)
			}
			if parts := strings.Split(h1, "$"); len(parts) != 6 || len(parts[4]) != 22 || len(parts[5]) != 43 {
				t.Errorf("hash %q: want 6 parts, a 16-byte salt and a 32-byte key (raw base64)", h1)
			}
			if h1 == h2 {
				t.Errorf("two hashes of one password are equal (%q): salt not random", h1)
			}
			if strings.Contains(h1, "correct horse") {
				t.Errorf("hash %q contains the password", h1)
			}
		})
	}
}

func TestVerifyPassword(t *testing.T) {
	t.Parallel()
	const pw = "correct horse battery staple"
	hash := mustHash(t, pw, fastPW)
	// A hash made with other parameters still verifies: they are read from the PHC string.
	slow := mustHash(t, pw, PasswordParams{MemoryKiB: 128, Time: 2, Threads: 2})
	unicode := mustHash(t, "pässwörd-日本語", fastPW)
	tests := []struct {
		name, hash, pw string
		want           bool
	}{
		{"right password", hash, pw, true},
		{"hash with other params", slow, pw, true},
		{"unicode password", unicode, "pässwörd-日本語", true},
		{"wrong password", hash, "correct horse battery stapler", false},
		{"case differs", hash, strings.ToUpper(pw), false},
		{"empty password", hash, "", false},
		{"prefix of password", hash, pw[:8], false},
		{"unicode, decomposed form", unicode, "pa\u0308sswo\u0308rd-日本語", false},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			ok, err := verifyPassword(tc.hash, tc.pw)
			if err != nil {
				t.Fatalf("verifyPassword: %v", err)
			}
			if ok != tc.want {
				t.Errorf("verifyPassword(%q) = %v, want %v", tc.pw, ok, tc.want)
			}
		})
	}
}

func TestVerifyPasswordMalformedHash(t *testing.T) {
	t.Parallel()
	good := mustHash(t, "password1", fastPW)
	parts := strings.Split(good, "$") // "", argon2id, v=19, m=..., salt, key
	with := func(i int, v string) string {
		p := append([]string(nil), parts...)
		p[i] = v
		return strings.Join(p, "$")
	}
	tests := []struct {
		name, hash string
	}{
		{name: "empty", hash: ""},
		{name: "plain text", hash: "password1"},
		{name: "bcrypt", hash: "$2b$10$abcdefghijklmnopqrstuuABCDEFGHIJKLMNOPQRSTUVWXYZ01234"},
		{name: "argon2i", hash: with(1, "argon2i")},
		{name: "too few parts", hash: strings.Join(parts[:5], "$")},
		{name: "too many parts", hash: good + "$extra"},
		{name: "params not numbers", hash: with(3, "m=x,t=1,p=1")},
		{name: "params missing", hash: with(3, "")},
		{name: "threads overflow uint8", hash: with(3, "m=64,t=1,p=256")},
		{name: "negative memory", hash: with(3, "m=-64,t=1,p=1")},
		{name: "salt not base64", hash: with(4, "!!!")},
		{name: "padded salt", hash: with(4, parts[4]+"==")},
		{name: "key not base64", hash: with(5, "***")},
		{name: "empty key", hash: with(5, "")},
		{name: "zero passes", hash: with(3, "m=64,t=0,p=1")},
		{name: "zero lanes", hash: with(3, "m=64,t=1,p=0")},
		{name: "huge memory", hash: with(3, "m=4000000000,t=1,p=1")},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			ok, err := verifyPassword(tc.hash, "password1")
			if !errors.Is(err, errBadHash) {
				t.Errorf("verifyPassword(%q) error = %v, want errBadHash", tc.hash, err)
			}
			if ok {
				t.Errorf("verifyPassword(%q) = true for a malformed hash", tc.hash)
			}
		})
	}
}

func TestCheckPassword(t *testing.T) {
	t.Parallel()
	tests := []struct {
		name  string
		pw    string
		valid bool
	}{
		{"empty", "", false},
		{"7 chars", "abcdefg", false},
		{"8 chars", "abcdefgh", true},
		{"8 spaces", "        ", true},
		{"7 multi-byte runes (21 bytes)", "日本語日本語日", false},
		{"8 multi-byte runes", "日本語日本語日本", true},
		{"256 chars", strings.Repeat("a", 256), true},
		{"256 four-byte runes", strings.Repeat("🔑", 256), true},
		{"257 chars", strings.Repeat("a", 257), false},
		{"invalid UTF-8", "abcdefg\xff", false},
		{"invalid UTF-8, long enough", "abcdefgh\xc3", false},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			err := checkPassword(tc.pw)
			if tc.valid {
				if err != nil {
					t.Errorf("checkPassword: %v, want ok", err)
				}
				return
			}
			var ve *ValidationError
			if !errors.As(err, &ve) {
				t.Fatalf("checkPassword error = %v (%T), want *ValidationError", err, err)
			}
			if ve.Code != "invalid_password" || ve.Field != "password" || ve.Message == "" {
				t.Errorf("ValidationError = %+v, want Field password, Code invalid_password and a message", *ve)
			}
		})
	}
}
