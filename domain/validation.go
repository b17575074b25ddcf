package domain

import (
	"fmt"
	"slices"
	"strings"
	"time"
	"unicode"
	"unicode/utf8"

	"golang.org/x/net/idna"
	"golang.org/x/text/cases"
	"golang.org/x/text/unicode/norm"
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

// Limits of an address's parts, in octets (RFC 5321 section 4.5.3.1).
const (
	maxLocalPartLen = 64
	maxLabelLen     = 63
	// maxEmailInput bounds the work done on an address before its length can be measured in
	// its ASCII (A-label) form: four bytes per character of the longest address.
	maxEmailInput = 4 * MaxEmailLen
)

// emailIDNA maps and checks an address's domain: the UTS #46 lookup mapping (case, width
// and compatibility forms, NFC), non-transitional (ß and ς are not rewritten), STD3 rules
// (letters, digits and hyphens only), hyphen and joiner rules, the bidi rule, and DNS lengths.
var emailIDNA = idna.New(idna.MapForLookup(), idna.Transitional(false), idna.BidiRule(), idna.VerifyDNSLength(true))

// NormalizeEmail validates an address and returns its canonical form: the one text that the
// e-mail claim (uniqueness), log-in and every comparison use. Two addresses are the same
// account exactly when their canonical forms are equal. The rule:
//
//   - Surrounding white space is trimmed. Nothing else is removed: a space, control, format
//     (bidi, zero-width) or other invisible character anywhere refuses the address.
//   - The local part (before the single @) is ASCII only, an RFC 5322 dot-atom (letters,
//     digits, !#$%&'*+-/=?^_`{|}~ and single inner dots) of at most 64 characters, and is
//     lower-cased. Non-ASCII local parts are refused, as most providers do: it leaves no
//     look-alikes (U+017F ſ, U+212A K) to fold.
//   - The domain goes through IDNA (see emailIDNA) and is kept in its lower-case Unicode form
//     (U-labels), so "xn--bcher-kva.de" and "Bücher.de" are one domain and an ASCII address
//     stays byte-identical to its lower-cased form. It needs at least two labels, a last
//     label that starts with a letter (no bare IP address), no IP literal ("[…]"), no label
//     that starts or ends with a hyphen or has "--" in third and fourth place (reserved for
//     A-labels, checked on their decoded form), and no letter that case folding would still change
//     (the IDNA deviations ß and ς). All its letters, in every label, are of one script, or
//     of one of the Chinese, Japanese and Korean combinations with Latin that UTS #39 allows
//     ("highly restrictive"); Latin letters from the IPA and phonetic blocks (ɑ, ɡ, ᴏ) are
//     refused as look-alikes, as are a repeated accent and a dot above i or j.
//   - The whole address is at most 254 characters in its ASCII (A-label) form.
//
// The canonical form is a fixed point: NormalizeEmail(canonical) returns it unchanged.
func NormalizeEmail(email string) (string, error) {
	if !utf8.ValidString(email) {
		return "", badEmail("email must be valid UTF-8")
	}
	e := strings.TrimSpace(email)
	if e == "" {
		return "", badEmail("email is required")
	}
	if len(e) > maxEmailInput {
		return "", badEmail(fmt.Sprintf("email must be at most %d characters", MaxEmailLen))
	}
	if strings.IndexFunc(e, func(r rune) bool { return unicode.IsSpace(r) || invisible(r) }) >= 0 {
		return "", badEmail("email must not contain spaces, control, format or invisible characters")
	}
	at := strings.IndexByte(e, '@')
	if at < 0 || strings.Count(e, "@") != 1 {
		return "", badEmail("email must be a plain address such as ada@example.com")
	}
	local, domain := e[:at], e[at+1:]
	if err := checkLocalPart(local); err != nil {
		return "", err
	}
	unicodeForm, asciiForm, err := canonicalDomain(domain)
	if err != nil {
		return "", err
	}
	if len(local)+1+len(asciiForm) > MaxEmailLen {
		return "", badEmail(fmt.Sprintf("email must be at most %d characters", MaxEmailLen))
	}
	return strings.ToLower(local) + "@" + unicodeForm, nil
}

func badEmail(msg string) error { return invalid("email", "invalid_email", msg) }

// checkLocalPart accepts an RFC 5322 dot-atom of ASCII characters (no quoted strings).
func checkLocalPart(l string) error {
	if l == "" {
		return badEmail("email must be a plain address such as ada@example.com")
	}
	if len(l) > maxLocalPartLen {
		return badEmail(fmt.Sprintf("the part of an email before the @ must be at most %d characters", maxLocalPartLen))
	}
	for i := 0; i < len(l); i++ {
		if c := l[i]; c >= utf8.RuneSelf {
			return badEmail("the part of an email before the @ must be ASCII")
		} else if !isAtext(c) && c != '.' {
			return badEmail(fmt.Sprintf("the part of an email before the @ must not contain %q", c))
		}
	}
	if l[0] == '.' || l[len(l)-1] == '.' || strings.Contains(l, "..") {
		return badEmail("the part of an email before the @ must not start or end with a dot or have two in a row")
	}
	return nil
}

// isAtext reports the RFC 5322 atext characters: letters, digits and !#$%&'*+-/=?^_`{|}~.
func isAtext(c byte) bool {
	return 'a' <= c && c <= 'z' || 'A' <= c && c <= 'Z' || '0' <= c && c <= '9' ||
		strings.IndexByte("!#$%&'*+-/=?^_`{|}~", c) >= 0
}

// canonicalDomain returns a domain's canonical Unicode form and its ASCII (A-label) form, or
// the reason it is refused.
func canonicalDomain(d string) (unicodeForm, asciiForm string, err error) {
	if d == "" {
		return "", "", badEmail("email must be a plain address such as ada@example.com")
	}
	if strings.HasPrefix(d, "[") {
		return "", "", badEmail("the domain of an email must be a host name, not an IP address")
	}
	a, err := emailIDNA.ToASCII(d)
	if err != nil {
		return "", "", badEmail("the domain of an email must be a valid host name (letters, digits and inner hyphens)")
	}
	u, err := emailIDNA.ToUnicode(a)
	if err != nil {
		return "", "", badEmail("the domain of an email must be a valid host name (letters, digits and inner hyphens)")
	}
	labels := strings.Split(a, ".")
	if len(labels) < 2 {
		return "", "", badEmail("the domain of an email must have a dot, such as example.com")
	}
	for _, l := range labels {
		// The IDNA profile checks these too; this keeps the rule independent of its options.
		if l == "" || len(l) > maxLabelLen || l[0] == '-' || l[len(l)-1] == '-' {
			return "", "", badEmail(fmt.Sprintf("each part of an email's domain must be 1 to %d characters and not start or end with a hyphen", maxLabelLen))
		}
	}
	if tld := labels[len(labels)-1]; tld[0] < 'a' || tld[0] > 'z' {
		return "", "", badEmail("the domain of an email must be a host name, not an IP address")
	}
	if u != norm.NFC.String(cases.Fold().String(u)) || strings.IndexFunc(u, unicode.IsUpper) >= 0 {
		return "", "", badEmail("the domain of an email must not contain letters with several case-folded forms (such as ß or ς)")
	}
	if !singleScript(u) {
		return "", "", badEmail("the letters of an email's domain must all be of one script")
	}
	if hiddenMark(u) {
		return "", "", badEmail("the domain of an email must not repeat an accent or put a dot on i or j")
	}
	return u, a, nil
}

// hiddenMark reports the accents UTS #39 (section 5.4) names as invisible: a nonspacing mark
// right after the same mark, and a dot above (U+0307) on a letter that already has one (i, j).
func hiddenMark(s string) bool {
	var prev, base rune
	for _, r := range norm.NFD.String(s) {
		if unicode.Is(unicode.Mn, r) {
			if r == prev || r == '\u0307' && unicode.Is(unicode.Soft_Dotted, base) {
				return true
			}
		} else {
			base = r
		}
		prev = r
	}
	return false
}

// scriptTables lists unicode's script tables except Common and Inherited, which go with
// any script (digits, hyphens, combining marks); most used first.
var scriptTables = func() []scriptTable {
	first := []string{"Latin", "Cyrillic", "Greek", "Han", "Hiragana", "Katakana", "Hangul", "Arabic", "Hebrew"}
	out := make([]scriptTable, 0, len(unicode.Scripts))
	for _, n := range first {
		out = append(out, scriptTable{n, unicode.Scripts[n]})
	}
	rest := make([]string, 0, len(unicode.Scripts))
	for n := range unicode.Scripts {
		if n != "Common" && n != "Inherited" && !slices.Contains(first, n) {
			rest = append(rest, n)
		}
	}
	slices.Sort(rest)
	for _, n := range rest {
		out = append(out, scriptTable{n, unicode.Scripts[n]})
	}
	return out
}()

type scriptTable struct {
	name  string
	table *unicode.RangeTable
}

// highlyRestrictive are the sets of scripts UTS #39 lets one identifier mix.
var highlyRestrictive = [][]string{
	{"Latin", "Han", "Hiragana", "Katakana"},
	{"Latin", "Han", "Bopomofo"},
	{"Latin", "Han", "Hangul"},
}

// singleScript reports whether every letter of s is of one script, or all of them are within
// one of the highlyRestrictive sets, and no Latin letter comes from the IPA or phonetic
// blocks (whose letters pass for ASCII ones).
func singleScript(s string) bool {
	var seen []string
	for _, r := range s {
		if r < utf8.RuneSelf {
			if 'a' <= r && r <= 'z' && !slices.Contains(seen, "Latin") {
				seen = append(seen, "Latin")
			}
			continue
		}
		for _, st := range scriptTables {
			if !unicode.Is(st.table, r) {
				continue
			}
			if st.name == "Latin" && r >= 0x250 && (r < 0x1E00 || r > 0x1EFF) {
				return false
			}
			if !slices.Contains(seen, st.name) {
				seen = append(seen, st.name)
			}
			break
		}
	}
	if len(seen) <= 1 {
		return true
	}
	for _, set := range highlyRestrictive {
		if !slices.ContainsFunc(seen, func(n string) bool { return !slices.Contains(set, n) }) {
			return true
		}
	}
	return false
}

// invisible reports characters that show as nothing or change how the text around them is
// shown: controls (Cc), format characters (Cf: the bidi controls U+061C, U+200E/F,
// U+202A–202E and U+2066–2069, zero-width space and joiners U+200B–200D, word joiner U+2060,
// BOM U+FEFF, soft hyphen, tag characters), line and paragraph separators, variation
// selectors and the other default-ignorable code points (Hangul fillers, combining grapheme
// joiner), and the blank braille pattern.
func invisible(r rune) bool {
	return unicode.In(r, unicode.Cc, unicode.Cf, unicode.Zl, unicode.Zp, unicode.Variation_Selector,
		unicode.Other_Default_Ignorable_Code_Point) || r == '\u2800'
}

// Characters that free text (names, descriptions) may hold only inside an emoji sequence.
const (
	zeroWidthJoiner = '\u200D'
	textStyle       = '\uFE0E' // VS15
	emojiStyle      = '\uFE0F' // VS16
)

// hiddenRune returns the first invisible character of s, if any. The zero-width joiner and
// the two emoji variation selectors are allowed where they only join or style emoji: VS15
// and VS16 right after a symbol, the joiner between two symbols (the first possibly styled or
// skin-toned), as in 👩‍💻 or ❤️‍🔥.
func hiddenRune(s string) (rune, bool) {
	rs := []rune(s)
	for i, r := range rs {
		switch {
		case r == textStyle || r == emojiStyle:
			if i == 0 || !unicode.Is(unicode.So, rs[i-1]) {
				return r, true
			}
		case r == zeroWidthJoiner:
			if i == 0 || i+1 == len(rs) || !unicode.Is(unicode.So, rs[i+1]) {
				return r, true
			}
			if p := rs[i-1]; !unicode.Is(unicode.So, p) && p != emojiStyle && (p < 0x1F3FB || p > 0x1F3FF) {
				return r, true // not after a symbol, a styled symbol or a skin tone
			}
		case invisible(r):
			return r, true
		}
	}
	return 0, false
}

// normalizeName trims a display name, puts it in Unicode NFC and checks it: 1 to 100
// characters, none of them invisible (see hiddenRune), so what is shown is what is stored.
func normalizeName(name string) (string, error) {
	if !utf8.ValidString(name) {
		return "", invalid("name", "invalid_name", "name must be valid UTF-8")
	}
	n := norm.NFC.String(strings.TrimSpace(name))
	if n == "" {
		return "", invalid("name", "invalid_name", "name must not be empty")
	}
	if utf8.RuneCountInString(n) > MaxNameLen {
		return "", invalid("name", "invalid_name", fmt.Sprintf("name must be at most %d characters", MaxNameLen))
	}
	if r, bad := hiddenRune(n); bad {
		return "", invalid("name", "invalid_name", fmt.Sprintf("name must not contain control, format or invisible characters (U+%04X)", r))
	}
	return n, nil
}

func checkDescription(d string) error {
	if !utf8.ValidString(d) {
		return invalid("description", "invalid_description", "description must be valid text without control characters")
	}
	if r, bad := hiddenRune(d); bad {
		return invalid("description", "invalid_description", fmt.Sprintf("description must not contain control, format or invisible characters (U+%04X)", r))
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
