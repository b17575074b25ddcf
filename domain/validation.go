package domain

import (
	"fmt"
	"net/mail"
	"strings"
	"time"
	"unicode"
	"unicode/utf8"
)

// ValidationError is a command refused for one bad field. Code is a stable machine-readable
// reason (e.g. "invalid_name") for API clients.
type ValidationError struct {
	Field   string
	Code    string
	Message string
}

func (e *ValidationError) Error() string { return e.Message }

func invalid(field, code, msg string) error {
	return &ValidationError{Field: field, Code: code, Message: msg}
}

// Limits on user-supplied text, in characters.
const (
	MaxNameLen        = 100
	MaxDescriptionLen = 200
	MaxEmailLen       = 254
)

// MaxTokenLifetime bounds expires_at, so a typo cannot make a token live for centuries.
const MaxTokenLifetime = 10 * 366 * 24 * time.Hour

// NormalizeEmail validates an address and returns its canonical (lower-case) form.
func NormalizeEmail(email string) (string, error) {
	e := strings.TrimSpace(email)
	if e == "" {
		return "", invalid("email", "invalid_email", "email is required")
	}
	if len(e) > MaxEmailLen || !utf8.ValidString(e) {
		return "", invalid("email", "invalid_email", fmt.Sprintf("email must be at most %d characters", MaxEmailLen))
	}
	a, err := mail.ParseAddress(e)
	if err != nil || a.Address != e || a.Name != "" {
		return "", invalid("email", "invalid_email", "email must be a plain address such as ada@example.com")
	}
	at := strings.LastIndexByte(e, '@')
	if at < 1 || !strings.Contains(e[at+1:], ".") {
		return "", invalid("email", "invalid_email", "email must be a plain address such as ada@example.com")
	}
	return strings.ToLower(e), nil
}

// normalizeName trims a display name and checks it.
func normalizeName(name string) (string, error) {
	if !utf8.ValidString(name) {
		return "", invalid("name", "invalid_name", "name must be valid UTF-8")
	}
	n := strings.TrimSpace(name)
	if n == "" {
		return "", invalid("name", "invalid_name", "name must not be empty")
	}
	if utf8.RuneCountInString(n) > MaxNameLen {
		return "", invalid("name", "invalid_name", fmt.Sprintf("name must be at most %d characters", MaxNameLen))
	}
	if strings.IndexFunc(n, unicode.IsControl) >= 0 {
		return "", invalid("name", "invalid_name", "name must not contain control characters")
	}
	return n, nil
}

func checkDescription(d string) error {
	if !utf8.ValidString(d) || strings.IndexFunc(d, unicode.IsControl) >= 0 {
		return invalid("description", "invalid_description", "description must be valid text without control characters")
	}
	if utf8.RuneCountInString(d) > MaxDescriptionLen {
		return invalid("description", "invalid_description", fmt.Sprintf("description must be at most %d characters", MaxDescriptionLen))
	}
	return nil
}

func checkExpiry(exp *time.Time, now time.Time) error {
	if exp == nil {
		return nil
	}
	if !exp.After(now) {
		return invalid("expires_at", "invalid_expires_at", "expires_at must be in the future")
	}
	if exp.Sub(now) > MaxTokenLifetime {
		return invalid("expires_at", "invalid_expires_at", "expires_at must be within 10 years")
	}
	return nil
}

// slugify turns a display name into the readable part of a personal organization slug.
func slugify(name string) string {
	var b strings.Builder
	dash := false
	for _, r := range strings.ToLower(name) {
		switch {
		case r >= 'a' && r <= 'z', r >= '0' && r <= '9':
			b.WriteRune(r)
			dash = false
		case b.Len() > 0 && !dash:
			b.WriteByte('-')
			dash = true
		}
		if b.Len() >= 30 {
			break
		}
	}
	s := strings.Trim(b.String(), "-")
	if s == "" {
		return "user"
	}
	return s
}
