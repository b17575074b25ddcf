package domain

import (
	"errors"
	"regexp"
	"strings"
	"testing"
	"time"
)

// wantValidation fails unless err is a *ValidationError with the field and code.
func wantValidation(t *testing.T, err error, field, code string) {
	t.Helper()
	var ve *ValidationError
	if !errors.As(err, &ve) {
		t.Fatalf("error = %v (%T), want *ValidationError %s", err, err, code)
	}
	if ve.Field != field || ve.Code != code || ve.Message == "" || ve.Error() != ve.Message {
		t.Errorf("ValidationError = %+v, want Field %q, Code %q and a message", *ve, field, code)
	}
}

func TestNormalizeEmail(t *testing.T) {
	t.Parallel()
	// 64 + 1 + 189 = 254 characters: the longest accepted address.
	longDomain := strings.Repeat("d", 59) + "." + strings.Repeat("e", 60) + "." + strings.Repeat("f", 60) + ".example"
	longest := strings.Repeat("l", 64) + "@" + longDomain
	if len(longest) != 254 {
		t.Fatalf("test setup: len(longest) = %d", len(longest))
	}
	tests := []struct {
		in   string
		want string // "" means invalid
	}{
		{"ada@example.com", "ada@example.com"},
		{"Ada@Example.COM", "ada@example.com"},
		{"  ada@example.com\t\n", "ada@example.com"},
		{"ada.lovelace+tag@mail.example.co.uk", "ada.lovelace+tag@mail.example.co.uk"},
		{longest, longest},
		{strings.ToUpper(longest), longest},
		{"", ""},
		{"   ", ""},
		{"ada", ""},
		{"ada@", ""},
		{"@example.com", ""},
		{"Ada <ada@x.io>", ""},
		{"<ada@x.io>", ""},
		{"ada@x.io (Ada)", ""},
		{"a@b", ""},
		{"ada@localhost", ""},
		{"ada@@x.io", ""},
		{"ada@x.io, bob@x.io", ""},
		{"ada lovelace@x.io", ""},
		{"ada@x.io\x00", ""},
		{"ada\xff@x.io", ""},
		{"l" + longest, ""}, // 255 characters
	}
	for _, tc := range tests {
		t.Run(tc.in, func(t *testing.T) {
			t.Parallel()
			got, err := NormalizeEmail(tc.in)
			if tc.want == "" {
				if got != "" {
					t.Errorf("NormalizeEmail(%q) = %q, want an error", tc.in, got)
				}
				wantValidation(t, err, "email", "invalid_email")
				return
			}
			if err != nil || got != tc.want {
				t.Fatalf("NormalizeEmail(%q) = %q, %v; want %q", tc.in, got, err, tc.want)
			}
			if again, err := NormalizeEmail(got); err != nil || again != got {
				t.Errorf("NormalizeEmail not idempotent: %q -> %q, %v", got, again, err)
			}
		})
	}
}

func TestNormalizeName(t *testing.T) {
	t.Parallel()
	hundred := strings.Repeat("é", 50) + strings.Repeat("日", 50)
	tests := []struct {
		name, in string
		want     string
		valid    bool
	}{
		{"plain", "Ada Lovelace", "Ada Lovelace", true},
		{"trimmed", "  Ada Lovelace \t\n", "Ada Lovelace", true},
		{"unicode spaces trimmed", "\u00a0\u2003Ada\u3000", "Ada", true},
		{"inner spaces kept", "Ada  Lovelace", "Ada  Lovelace", true},
		{"one character", "A", "A", true},
		{"100 multi-byte runes", hundred, hundred, true},
		{"100 runes after trimming", "  " + hundred + "  ", hundred, true},
		{"emoji", "Ada 👩‍💻", "Ada 👩‍💻", true},
		{"empty", "", "", false},
		{"whitespace only", " \t\n\u00a0", "", false},
		{"101 runes", hundred + "x", "", false},
		{"NUL", "Ada\x00Lovelace", "", false},
		{"inner newline", "Ada\nLovelace", "", false},
		{"escape", "Ada\x1b[31m", "", false},
		{"DEL", "Ada\x7f", "", false},
		{"C1 control", "Ada\u0085Lovelace", "", false},
		{"invalid UTF-8", "Ada\xff", "", false},
		{"truncated UTF-8", "Ad\xc3", "", false},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			got, err := normalizeName(tc.in)
			if !tc.valid {
				if got != "" {
					t.Errorf("normalizeName(%q) = %q, want an error", tc.in, got)
				}
				wantValidation(t, err, "name", "invalid_name")
				return
			}
			if err != nil || got != tc.want {
				t.Errorf("normalizeName(%q) = %q, %v; want %q", tc.in, got, err, tc.want)
			}
		})
	}
}

func TestCheckDescription(t *testing.T) {
	t.Parallel()
	tests := []struct {
		name, in string
		valid    bool
	}{
		{"empty", "", true},
		{"plain", "CI deploy key", true},
		{"200 multi-byte runes", strings.Repeat("ü", 200), true},
		{"201 runes", strings.Repeat("a", 201), false},
		{"tab", "deploy\tkey", false},
		{"newline", "deploy key\n", false},
		{"NUL", "\x00", false},
		{"invalid UTF-8", "key\xfe", false},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			err := checkDescription(tc.in)
			if tc.valid {
				if err != nil {
					t.Errorf("checkDescription(%q): %v", tc.in, err)
				}
				return
			}
			wantValidation(t, err, "description", "invalid_description")
		})
	}
}

func TestCheckExpiry(t *testing.T) {
	t.Parallel()
	now := time.Date(2025, 6, 1, 12, 0, 0, 0, time.UTC)
	at := func(d time.Duration) *time.Time { v := now.Add(d); return &v }
	tests := []struct {
		name  string
		exp   *time.Time
		valid bool
	}{
		{"none", nil, true},
		{"one nanosecond ahead", at(time.Nanosecond), true},
		{"in a day", at(24 * time.Hour), true},
		{"exactly the max lifetime", at(MaxTokenLifetime), true},
		{"in another time zone", func() *time.Time { v := now.Add(time.Hour).In(time.FixedZone("X", -7*3600)); return &v }(), true},
		{"now", at(0), false},
		{"in the past", at(-time.Hour), false},
		{"zero time", &time.Time{}, false},
		{"just over the max lifetime", at(MaxTokenLifetime + time.Nanosecond), false},
		{"in 11 years", at(11 * 366 * 24 * time.Hour), false},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			err := checkExpiry(tc.exp, now)
			if tc.valid {
				if err != nil {
					t.Errorf("checkExpiry: %v", err)
				}
				return
			}
			wantValidation(t, err, "expires_at", "invalid_expires_at")
		})
	}
}

var slugPart = regexp.MustCompile(`^[a-z0-9]+(-[a-z0-9]+)*$`)

func TestSlugify(t *testing.T) {
	t.Parallel()
	tests := []struct {
		in, want string // want "" only checks the shape
	}{
		{"Ada Lovelace", "ada-lovelace"},
		{"  ---  ", "user"},
		{"", "user"},
		{"日本語", "user"},
		{"Ünïcode Name!", "n-code-name"},
		{"Grace   Hopper", "grace-hopper"},
		{"--Grace--Hopper--", "grace-hopper"},
		{"R2-D2", "r2-d2"},
		{"ADA_LOVELACE.1815", "ada-lovelace-1815"},
		{strings.Repeat("a", 50), strings.Repeat("a", 30)},
		{strings.Repeat("a", 29) + " bcd", strings.Repeat("a", 29)},
		{strings.Repeat("ab ", 20), ""},
		{"Mr. Ünïcødé ÑAME with a long tail of words that goes on", ""},
	}
	for _, tc := range tests {
		t.Run(tc.in, func(t *testing.T) {
			t.Parallel()
			got := slugify(tc.in)
			if tc.want != "" && got != tc.want {
				t.Errorf("slugify(%q) = %q, want %q", tc.in, got, tc.want)
			}
			if !slugPart.MatchString(got) || len(got) > 30 {
				t.Errorf("slugify(%q) = %q: want 1 to 30 of [a-z0-9-], no leading, trailing or double dash", tc.in, got)
			}
		})
	}
}
