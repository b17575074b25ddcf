package domain

import (
	"context"
	"errors"
	"regexp"
	"strings"
	"testing"
	"time"
	"unicode"
	"unicode/utf8"

	"github.com/google/uuid"
	"golang.org/x/net/idna"
	"golang.org/x/text/cases"
	"golang.org/x/text/language"
	"golang.org/x/text/unicode/norm"
	"golang.org/x/text/width"
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

// longest is the longest accepted address: 64 + 1 + 189 = 254 characters.
var longest = strings.Repeat("l", 64) + "@" + strings.Repeat("d", 59) + "." + strings.Repeat("e", 60) + "." +
	strings.Repeat("f", 60) + ".example"

// emailCases are addresses and their canonical form; want "" means refused. FuzzNormalizeEmail
// starts from them too.
var emailCases = []struct {
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
	{strings.Repeat("l", 65) + "@example.com", ""}, // local part over 64

	// Look-alikes in the local part: non-ASCII local parts are refused, not folded.
	{"opſ@example.com", ""},       // U+017F LATIN SMALL LETTER LONG S
	{"OPſ@EXAMPLE.COM", ""},       // and upper-cased around it
	{"\u212Aate@example.com", ""}, // U+212A KELVIN SIGN
	{"ｏｐｓ@example.com", ""},       // fullwidth
	{"оps@example.com", ""},       // Cyrillic о
	{"josé@example.com", ""},      // any non-ASCII local part
	{"\"ada\"@example.com", ""},   // quoted local part
	{".ada@example.com", ""},      // dots: not first, last or doubled
	{"ada.@example.com", ""},
	{"a..da@example.com", ""},
	{"a(b)@example.com", ""},
	{"o'brien+tag@example.com", "o'brien+tag@example.com"},
	{"-ada-@example.com", "-ada-@example.com"},

	// Domains: IDNA, one canonical Unicode form, no IP addresses, LDH labels.
	{"ada@Bücher.DE", "ada@bücher.de"},
	{"ada@xn--bcher-kva.de", "ada@bücher.de"}, // the A-label and the U-label are one domain
	{"ada@XN--BCHER-KVA.de", "ada@bücher.de"},
	{"ada@bu\u0308cher.de", "ada@bücher.de"},    // decomposed ü: NFC
	{"ada@ｅｘａｍｐｌｅ.com", "ada@example.com"},      // fullwidth domain: mapped by IDNA
	{"ada@example\u3002com", "ada@example.com"}, // ideographic full stop separates labels
	{"ada@пример.рф", "ada@пример.рф"},          // one script: Cyrillic
	{"ada@παράδειγμα.ελ", "ada@παράδειγμα.ελ"},  // one script: Greek
	{"ada@例え.jp", "ada@例え.jp"},                  // Han + Hiragana + Latin: UTS #39 highly restrictive
	{"ada@한국.com", "ada@한국.com"},                // Hangul + Latin
	{"ada@a1-b2.example", "ada@a1-b2.example"},
	{"ops@exаmple.com", ""},        // Cyrillic а in a Latin label
	{"ops@xn--exmple-4nf.com", ""}, // the same as an A-label
	{"ops@xn--80ak6aa92e.com", ""}, // аррӏе.com: a Cyrillic label next to a Latin one
	{"ops@аррӏе.com", ""},          // the same in Unicode
	{"ops@пример.com", ""},         // Cyrillic under a Latin TLD (the price of the rule above)
	{"ops@exɑmple.com", ""},        // U+0251 LATIN SMALL LETTER ALPHA (IPA block)
	{"ops@exampleᴏ.com", ""},       // U+1D0F small capital O (phonetic block)
	{"ops@ex\u0430mple.com", ""},   // Cyrillic а, escaped
	{"ops@straße.de", ""},          // IDNA deviation: ß and ss would be two accounts
	{"ops@ςοφία.gr", ""},           // IDNA deviation: final sigma
	{"ops@ᏣᎳᎩ.example", ""},        // Cherokee: its case folding goes to upper case
	{"a@[127.0.0.1]", ""},
	{"a@[IPv6:::1]", ""},
	{"a@127.0.0.1", ""},
	{"a@1.2.3.04", ""},
	{"a@example.123", ""},
	{"a@::1", ""},
	{"a@-bad.com", ""},
	{"a@bad-.com", ""},
	{"a@bad.-com", ""},
	{"a@ab--cd.com", ""},  // "--" in positions 3-4 is reserved for A-labels
	{"a@xn--abc.com", ""}, // not valid punycode
	{"a@xn--ada-.com", ""},
	{"a@ex_ample.com", ""},
	{"a@example..com", ""},
	{"a@.example.com", ""},
	{"a@example.com.", ""},
	{"a@example", ""},
	{"a@" + strings.Repeat("d", 64) + ".com", ""}, // label over 63
	{"a@" + strings.Repeat("d", 63) + ".com", "a@" + strings.Repeat("d", 63) + ".com"},

	// Invisible, control and format characters anywhere.
	{"ada@exa\u00ADmple.com", ""},     // soft hyphen (IDNA would drop it)
	{"ada@exa\u200Bmple.com", ""},     // zero-width space
	{"ada@example.com\u200D", ""},     // zero-width joiner
	{"\uFEFFada@example.com", ""},     // BOM
	{"ada@\u202Emoc.elpmaxe", ""},     // right-to-left override
	{"ada@exa\uFE0Fmple.com", ""},     // variation selector (IDNA would drop it)
	{"ada@exa\u034Fmple.com", ""},     // combining grapheme joiner
	{"ada@exa\u3164mple.com", ""},     // Hangul filler
	{"ada@example.com\U000E0041", ""}, // tag character
	{"ada@exam ple.com", ""},
	{"ada@exam\u00A0ple.com", ""},
}

func TestNormalizeEmail(t *testing.T) {
	t.Parallel()
	if len(longest) != 254 {
		t.Fatalf("test setup: len(longest) = %d", len(longest))
	}
	tests := emailCases
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
		{"emoji with skin tone", "Ada 👩🏽‍💻", "Ada 👩🏽‍💻", true},
		{"emoji with presentation selector", "Ada ❤️‍🔥", "Ada ❤️‍🔥", true},
		{"decomposed is composed (NFC)", "Ade\u0300le", "Adèle", true},
		{"right-to-left text", "עדה לאבלייס", "עדה לאבלייס", true},
		{"RLO override", "\u202Eevil", "", false},
		{"LRO override", "a\u202Db", "", false},
		{"LRE embedding", "a\u202Ab", "", false},
		{"PDF", "a\u202Cb", "", false},
		{"RLI isolate", "\u2067evil\u2069", "", false},
		{"FSI isolate", "a\u2068b", "", false},
		{"LRM", "Ada\u200E", "", false},
		{"RLM", "\u200FAda", "", false},
		{"Arabic letter mark", "Ada\u061C", "", false},
		{"zero-width space", "ad\u200Ba", "", false},
		{"zero-width non-joiner", "ad\u200Ca", "", false},
		{"zero-width joiner between letters", "ad\u200Da", "", false},
		{"zero-width joiner at the end", "Ada 👩\u200D", "", false},
		{"zero-width joiner after a space", "Ada \u200D💻", "", false},
		{"word joiner", "Ada\u2060", "", false},
		{"BOM", "\uFEFFAda", "", false},
		{"soft hyphen", "Ad\u00ADa", "", false},
		{"tag characters", "Ada\U000E0069\U000E0067", "", false},
		{"Hangul filler", "\u3164", "", false},
		{"combining grapheme joiner", "Ad\u034Fa", "", false},
		{"variation selector after a letter", "Ada\uFE0F", "", false},
		{"variation selector first", "\uFE0FAda", "", false},
		{"line separator", "Ada\u2028Lovelace", "", false},
		{"paragraph separator", "Ada\u2029Lovelace", "", false},
		{"blank braille pattern", "\u2800", "", false},
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
		{"emoji", "deploy 🚀", true},
		{"RLO override", "deploy\u202Eyek", false},
		{"zero-width space", "de\u200Bploy", false},
		{"BOM", "\uFEFFdeploy", false},
		{"tag characters", "deploy\U000E0041", false},
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

// TestEmailSpellingsOfOneAddress: spellings of one address give one canonical form (so one
// claim, one account), and look-alikes of it are refused rather than given another.
func TestEmailSpellingsOfOneAddress(t *testing.T) {
	t.Parallel()
	groups := []struct {
		canonical string
		same      []string // each gives canonical
		refused   []string // each is refused
	}{
		{"ops@example.com",
			[]string{"OPS@EXAMPLE.COM", " Ops@Example.Com ", "ops@ＥＸＡＭＰＬＥ.com", "ops@example\uFF0Ecom"},
			[]string{"opſ@example.com", "OPſ@example.com", "ops@exаmple.com", "ops@xn--exmple-4nf.com", "ops@examp\u04CFe.com",
				"ops@exa\u00ADmple.com", "ops@example.com\u200B", "ops@ex\uFE00ample.com", "ops@e\u034Fxample.com", "ops@exampl\u0435.com"}},
		{"kate@bücher.de",
			[]string{"KATE@BÜCHER.DE", "kate@bu\u0308cher.de", "kate@xn--bcher-kva.de", "Kate@XN--BCHER-KVA.DE"},
			[]string{"\u212Aate@bücher.de", "kate@bücher.de\u200D", "kate@bu\u0308\u0308cher.de"}},
		{"ada@istanbul.example",
			[]string{"ADA@ISTANBUL.EXAMPLE"},
			[]string{"ada@İstanbul.example", "ada@i\u0307stanbul.example", "ada@іstanbul.example"}},
	}
	for _, g := range groups {
		for _, in := range append([]string{g.canonical}, g.same...) {
			if got, err := NormalizeEmail(in); err != nil || got != g.canonical {
				t.Errorf("NormalizeEmail(%q) = %q, %v; want %q", in, got, err, g.canonical)
			}
		}
		for _, in := range g.refused {
			got, err := NormalizeEmail(in)
			if err == nil {
				t.Errorf("NormalizeEmail(%q) = %q, want it refused as a look-alike of %q", in, got, g.canonical)
				continue
			}
			wantValidation(t, err, "email", "invalid_email")
		}
	}
}

// foldKey is what two spellings of one address have in common: compatibility forms, case
// (full Unicode folding, so ß = ss and ſ = s) and composition folded away.
func foldKey(s string) string {
	return norm.NFC.String(cases.Fold().String(norm.NFKC.String(s)))
}

// emailVariants are other spellings of in: case, width, Unicode normalization, ſ for s,
// K (Kelvin) for k, surrounding space, and the domain in A-labels or U-labels.
func emailVariants(in string) map[string]string {
	v := map[string]string{
		"strings.ToUpper": strings.ToUpper(in), "strings.ToLower": strings.ToLower(in),
		"cases.Upper": cases.Upper(language.Und).String(in), "cases.Lower": cases.Lower(language.Und).String(in),
		"cases.Fold": cases.Fold().String(in), "NFC": norm.NFC.String(in), "NFD": norm.NFD.String(in),
		"NFKC": norm.NFKC.String(in), "NFKD": norm.NFKD.String(in),
		"width.Widen": width.Widen.String(in), "width.Fold": width.Fold.String(in), "width.Narrow": width.Narrow.String(in),
		"long s": strings.ReplaceAll(in, "s", "ſ"), "Kelvin": strings.ReplaceAll(in, "k", "\u212A"),
		"spaces": " \t" + in + "\n",
	}
	if at := strings.LastIndexByte(in, '@'); at >= 0 {
		if a, err := idna.Punycode.ToASCII(in[at+1:]); err == nil {
			v["A-labels"] = in[:at+1] + a
		}
		if u, err := idna.Punycode.ToUnicode(in[at+1:]); err == nil {
			v["U-labels"] = in[:at+1] + u
		}
		v["upper domain"] = in[:at+1] + strings.ToUpper(in[at+1:])
	}
	return v
}

// FuzzNormalizeEmail checks the canonical form: a refusal is always an invalid_email
// ValidationError; an accepted address normalizes to itself again, has no upper-case letter,
// no ſ or K, nothing invisible, an ASCII local part, is already case-folded (so two canonical
// forms that fold alike are equal), and every spelling of it that folds alike either gives
// the same canonical form or is refused.
func FuzzNormalizeEmail(f *testing.F) {
	for _, c := range emailCases {
		f.Add(c.in)
	}
	f.Fuzz(func(t *testing.T, in string) {
		got, err := NormalizeEmail(in)
		if err != nil {
			var ve *ValidationError
			if !errors.As(err, &ve) || ve.Field != "email" || ve.Code != "invalid_email" || ve.Message == "" || got != "" {
				t.Fatalf("NormalizeEmail(%q) = %q, %v (%T); want an invalid_email ValidationError", in, got, err, err)
			}
			return
		}
		if again, err := NormalizeEmail(got); err != nil || again != got {
			t.Fatalf("not idempotent: %q -> %q -> %q, %v", in, got, again, err)
		}
		at := strings.IndexByte(got, '@')
		if at < 1 || strings.Count(got, "@") != 1 || !utf8.ValidString(got) || utf8.RuneCountInString(got) > MaxEmailLen {
			t.Fatalf("NormalizeEmail(%q) = %q: not one plain address", in, got)
		}
		for i, r := range got {
			if unicode.IsUpper(r) || unicode.IsTitle(r) || r == 'ſ' || r == '\u212A' || unicode.IsSpace(r) || invisible(r) ||
				(i < at && r >= utf8.RuneSelf) {
				t.Fatalf("NormalizeEmail(%q) = %q holds %U", in, got, r)
			}
		}
		if k := foldKey(got); k != got {
			t.Fatalf("NormalizeEmail(%q) = %q is not case-folded: %q", in, got, k)
		}
		for name, v := range emailVariants(in) {
			if foldKey(v) != foldKey(in) && !strings.EqualFold(v, in) {
				continue // not a spelling of the same address (e.g. upper-casing ı gives I)
			}
			if vg, err := NormalizeEmail(v); err == nil && vg != got {
				t.Fatalf("%s spelling %q of %q gives %q, the original gives %q", name, v, in, vg, got)
			}
		}
	})
}

// TestLogInUsesCanonicalEmail: log-in looks the address up in its canonical form, so another
// spelling reaches the account and a look-alike (refused at sign-up) reaches none.
func TestLogInUsesCanonicalEmail(t *testing.T) {
	t.Parallel()
	s := newTestService(t, newMemStore())
	ctx := context.Background()
	ops := signUp(t, s, SignUp{Email: "ops@example.com", Name: "Ops", Password: "correct horse"})
	kate := signUp(t, s, SignUp{Email: "kate@Bücher.de", Name: "Kate", Password: "correct horse"})
	if kate.User.Email != "kate@bücher.de" {
		t.Fatalf("stored email %q", kate.User.Email)
	}
	for email, want := range map[string]uuid.UUID{
		"OPS@Example.COM":       ops.User.ID,
		"ops@ＥＸＡＭＰＬＥ.com":       ops.User.ID,
		"kate@xn--bcher-kva.de": kate.User.ID,
		"KATE@bu\u0308cher.DE":  kate.User.ID,
	} {
		out, err := s.LogIn(ctx, testMeta, LogIn{Email: email, Password: "correct horse"})
		if err != nil || out.UserID != want {
			t.Errorf("LogIn(%q) = %s, %v; want user %s", email, out.UserID, err, want)
		}
	}
	for _, email := range []string{"opſ@example.com", "ops@exаmple.com", "ops@example.com\u200B", "\u212Aate@bücher.de", "kate@bücher.de\u200D"} {
		if _, err := s.SignUp(ctx, testMeta, SignUp{Email: email, Name: "Mallory", Password: "correct horse"}); err == nil {
			t.Errorf("SignUp(%q) succeeded", email)
		} else {
			wantValidation(t, err, "email", "invalid_email")
		}
		if out, err := s.LogIn(ctx, testMeta, LogIn{Email: email, Password: "correct horse"}); !errors.Is(err, ErrInvalidCredentials) {
			t.Errorf("LogIn(%q) = %+v, %v; want ErrInvalidCredentials", email, out, err)
		}
	}
}

// FuzzNormalizeName checks that an accepted name is a fixed point, in NFC, of 1 to 100
// characters, and holds no control, bidi or zero-width character outside an emoji sequence;
// a refusal is always an invalid_name ValidationError.
func FuzzNormalizeName(f *testing.F) {
	for _, s := range []string{"Ada Lovelace", "Ada 👩🏽‍💻", "\u202Eevil", "ad\u200Ba", "Ade\u0300le", "❤️‍🔥", "\u200D💻", "a\uFE0F"} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, in string) {
		got, err := normalizeName(in)
		if err != nil {
			var ve *ValidationError
			if !errors.As(err, &ve) || ve.Field != "name" || ve.Code != "invalid_name" || got != "" {
				t.Fatalf("normalizeName(%q) = %q, %v; want an invalid_name ValidationError", in, got, err)
			}
			return
		}
		if again, err := normalizeName(got); err != nil || again != got {
			t.Fatalf("not idempotent: %q -> %q -> %q, %v", in, got, again, err)
		}
		if n := utf8.RuneCountInString(got); n < 1 || n > MaxNameLen || !norm.NFC.IsNormalString(got) {
			t.Fatalf("normalizeName(%q) = %q: %d characters or not NFC", in, got, n)
		}
		for _, r := range got {
			if unicode.In(r, unicode.Cc, unicode.Bidi_Control) || r == '\u200B' || r == '\u200C' || r == '\u2060' || r == '\uFEFF' ||
				(invisible(r) && r != zeroWidthJoiner && r != emojiStyle && r != textStyle) {
				t.Fatalf("normalizeName(%q) = %q holds %U", in, got, r)
			}
		}
	})
}
