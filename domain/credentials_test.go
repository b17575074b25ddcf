package domain

import (
	"bytes"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"io"
	"strings"
	"testing"

	"github.com/google/uuid"
)

var testSecretKey = bytes.Repeat([]byte{0x42}, 32)

// mustToken makes a random token of the kind.
func mustToken(t testing.TB, kind TokenKind) string {
	t.Helper()
	tok, err := newToken(kind, (&secrets{}).source(""))
	if err != nil {
		t.Fatalf("newToken(%v): %v", kind, err)
	}
	return tok
}

// replaceAt returns s with the byte at i replaced by c.
func replaceAt(s string, i int, c byte) string {
	b := []byte(s)
	b[i] = c
	return string(b)
}

func TestParseTokenAcceptsNewTokens(t *testing.T) {
	t.Parallel()
	tests := []struct {
		kind   TokenKind
		prefix string
	}{
		{APIToken, "idt_"},
		{SessionToken, "ids_"},
	}
	for _, tc := range tests {
		t.Run(tc.kind.String(), func(t *testing.T) {
			t.Parallel()
			seen := map[string]bool{}
			for range 50 {
				tok := mustToken(t, tc.kind)
				if len(tok) != 40 || !strings.HasPrefix(tok, tc.prefix) {
					t.Fatalf("token %q: want %s prefix and 40 characters", tok, tc.prefix)
				}
				kind, digest, err := ParseToken(tok)
				if err != nil {
					t.Fatalf("ParseToken(%q): %v", tok, err)
				}
				if kind != tc.kind {
					t.Errorf("ParseToken(%q) kind = %v, want %v", tok, kind, tc.kind)
				}
				if digest != Digest(tok) {
					t.Errorf("ParseToken(%q) digest = %q, want Digest(token) %q", tok, digest, Digest(tok))
				}
				if seen[tok] {
					t.Fatalf("random token %q generated twice", tok)
				}
				seen[tok] = true
			}
		})
	}
}

func TestParseTokenRejectsMalformed(t *testing.T) {
	t.Parallel()
	api := mustToken(t, APIToken)
	sess := mustToken(t, SessionToken)
	// A different base62 character at position i.
	other := func(tok string, i int) byte {
		if tok[i] == 'A' {
			return 'B'
		}
		return 'A'
	}
	tests := []struct {
		name  string
		token string
	}{
		{"empty", ""},
		{"prefix only", "idt_"},
		{"wrong prefix", "idx_" + api[4:]},
		{"upper-case prefix", "IDT_" + api[4:]},
		{"prefix without underscore", "idtX" + api[4:]},
		{"one short", api[:39]},
		{"one long", api + "0"},
		{"leading space", " " + api[:39]},
		{"trailing newline", api[:39] + "\n"},
		{"dash in body", replaceAt(api, 10, '-')},
		{"underscore in body", replaceAt(api, 20, '_')},
		{"non-ASCII byte in body", replaceAt(api, 30, 0xc3)},
		{"NUL in checksum", replaceAt(api, 39, 0)},
		{"kind swapped api to session", "ids_" + api[4:]},
		{"kind swapped session to api", "idt_" + sess[4:]},
		{"two bodies swapped checksums", api[:34] + sess[34:]},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			kind, digest, err := ParseToken(tc.token)
			if !errors.Is(err, ErrMalformedToken) {
				t.Fatalf("ParseToken(%q) error = %v, want ErrMalformedToken", tc.token, err)
			}
			if kind != 0 || digest != "" {
				t.Errorf("ParseToken(%q) = (%v, %q), want zero values with the error", tc.token, kind, digest)
			}
		})
	}

	// CRC-32 detects every single-byte change, and the checksum encoding is injective, so any
	// one flipped character after the prefix must be refused.
	for _, tok := range []string{api, sess} {
		for i := 4; i < len(tok); i++ {
			bad := replaceAt(tok, i, other(tok, i))
			if _, _, err := ParseToken(bad); !errors.Is(err, ErrMalformedToken) {
				t.Errorf("ParseToken(%q) with position %d flipped: error = %v, want ErrMalformedToken", bad, i, err)
			}
		}
	}
}

// seqReader yields a fixed byte sequence, then EOF.
type seqReader struct{ b []byte }

func (r *seqReader) Read(p []byte) (int, error) {
	if len(r.b) == 0 {
		return 0, io.EOF
	}
	n := copy(p, r.b)
	r.b = r.b[n:]
	return n, nil
}

func TestNewTokenRejectionSampling(t *testing.T) {
	t.Parallel()
	// Bytes >= 248 must be skipped (they would bias c%62); the others map to base62[c%62].
	src := make([]byte, 0, 128)
	for i := range 64 {
		src = append(src, byte(248+i%8), byte(i))
	}
	tok, err := newToken(APIToken, &seqReader{b: src})
	if err != nil {
		t.Fatalf("newToken: %v", err)
	}
	want := "idt_" + base62[:30]
	if tok[:34] != want {
		t.Errorf("token body = %q, want %q", tok[:34], want)
	}
	if _, _, err := ParseToken(tok); err != nil {
		t.Errorf("ParseToken(%q): %v", tok, err)
	}
}

func TestNewTokenSourceError(t *testing.T) {
	t.Parallel()
	tests := []struct {
		name string
		src  io.Reader
	}{
		{"empty source", &seqReader{}},
		{"short source", &seqReader{b: make([]byte, 40)}},
		{"only rejected bytes then EOF", &seqReader{b: bytes.Repeat([]byte{0xff}, 64)}},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			tok, err := newToken(SessionToken, tc.src)
			if err == nil {
				t.Fatalf("newToken = %q, want an error from the exhausted source", tok)
			}
			if tok != "" {
				t.Errorf("newToken returned token %q with error %v", tok, err)
			}
		})
	}
}

func TestDigest(t *testing.T) {
	t.Parallel()
	tests := []struct {
		in, want string
	}{
		{"", "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855"},
		{"abc", "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"},
		{"idt_0123456789ABCDEFGHIJKLMNOPQRST000000", ""},
	}
	for _, tc := range tests {
		t.Run(tc.in, func(t *testing.T) {
			t.Parallel()
			want := tc.want
			if want == "" {
				sum := sha256.Sum256([]byte(tc.in))
				want = hex.EncodeToString(sum[:])
			}
			got := Digest(tc.in)
			if got != want {
				t.Errorf("Digest(%q) = %q, want %q", tc.in, got, want)
			}
			if again := Digest(tc.in); again != got {
				t.Errorf("Digest(%q) not stable: %q then %q", tc.in, got, again)
			}
			if len(got) != 64 || strings.ToLower(got) != got {
				t.Errorf("Digest(%q) = %q, want 64 lower-case hex digits", tc.in, got)
			}
		})
	}
	if Digest("a") == Digest("b") {
		t.Error("Digest(a) == Digest(b)")
	}
}

func TestTokenKindString(t *testing.T) {
	t.Parallel()
	tests := []struct {
		kind        TokenKind
		str, prefix string
	}{
		{APIToken, "token", "idt_"},
		{SessionToken, "session", "ids_"},
	}
	for _, tc := range tests {
		if got := tc.kind.String(); got != tc.str {
			t.Errorf("%d.String() = %q, want %q", tc.kind, got, tc.str)
		}
		if got := tc.kind.prefix(); got != tc.prefix {
			t.Errorf("%d.prefix() = %q, want %q", tc.kind, got, tc.prefix)
		}
	}
}

func TestSecretsDerivedIDs(t *testing.T) {
	t.Parallel()
	s := secrets{key: testSecretKey}
	other := secrets{key: bytes.Repeat([]byte{0x43}, 32)}
	base := s.id("scope-a", "user")
	tests := []struct {
		name string
		id   uuid.UUID
		same bool
	}{
		{"same scope and purpose", s.id("scope-a", "user"), true},
		{"different scope", s.id("scope-b", "user"), false},
		{"different purpose", s.id("scope-a", "session"), false},
		{"different key", other.id("scope-a", "user"), false},
		{"empty scope purpose swap", s.id("user", "scope-a"), false},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			if (tc.id == base) != tc.same {
				t.Errorf("id = %s, base = %s, want same=%v", tc.id, base, tc.same)
			}
			if tc.id.Version() != 8 {
				t.Errorf("derived id %s has version %d, want 8", tc.id, tc.id.Version())
			}
			if tc.id.Variant() != uuid.RFC4122 {
				t.Errorf("derived id %s has variant %v, want RFC 4122", tc.id, tc.id.Variant())
			}
		})
	}
}

func TestSecretsRandomIDs(t *testing.T) {
	t.Parallel()
	s := secrets{key: testSecretKey}
	seen := map[uuid.UUID]bool{}
	for range 100 {
		id := s.id("", "user")
		if id.Version() != 7 || id.Variant() != uuid.RFC4122 {
			t.Fatalf("random id %s: version %d variant %v, want v7 RFC 4122", id, id.Version(), id.Variant())
		}
		if seen[id] {
			t.Fatalf("random id %s generated twice", id)
		}
		seen[id] = true
	}
}

func TestSecretsTokens(t *testing.T) {
	t.Parallel()
	s := secrets{key: testSecretKey}
	mk := func(kind TokenKind, scope string) string {
		t.Helper()
		tok, err := s.token(kind, scope)
		if err != nil {
			t.Fatalf("token(%v, %q): %v", kind, scope, err)
		}
		if k, _, err := ParseToken(tok); err != nil || k != kind {
			t.Fatalf("ParseToken(%q) = %v, %v; want kind %v", tok, k, err, kind)
		}
		return tok
	}
	base := mk(APIToken, "scope-a")
	tests := []struct {
		name string
		tok  string
		same bool
	}{
		{"same scope", mk(APIToken, "scope-a"), true},
		{"different scope", mk(APIToken, "scope-b"), false},
		{"different kind, same scope", mk(SessionToken, "scope-a"), false},
		{"no scope", mk(APIToken, ""), false},
		{"derived differs from id stream", mk(APIToken, "scope-a\x00id\x00"), false},
	}
	for _, tc := range tests {
		if (tc.tok[4:34] == base[4:34]) != tc.same { // the random part; the checksum covers the prefix
			t.Errorf("%s: token %q vs %q, want same=%v", tc.name, tc.tok, base, tc.same)
		}
	}
	if a, b := mk(SessionToken, ""), mk(SessionToken, ""); a == b {
		t.Errorf("two random session tokens are equal: %q", a)
	}
	if a, b := mk(SessionToken, "k"), mk(SessionToken, "k"); a != b {
		t.Errorf("derived session tokens differ: %q, %q", a, b)
	}
}

func TestDerivationStream(t *testing.T) {
	t.Parallel()
	// Reading in pieces must give the same stream as reading at once.
	whole := make([]byte, 100)
	if _, err := io.ReadFull(&derivation{key: testSecretKey, label: "x"}, whole); err != nil {
		t.Fatal(err)
	}
	d := &derivation{key: testSecretKey, label: "x"}
	var pieces []byte
	for _, n := range []int{1, 7, 32, 33, 27} {
		p := make([]byte, n)
		if _, err := io.ReadFull(d, p); err != nil {
			t.Fatal(err)
		}
		pieces = append(pieces, p...)
	}
	if !bytes.Equal(whole, pieces) {
		t.Errorf("piecewise read differs from whole read:\n%x\n%x", pieces, whole)
	}
	if bytes.Equal(whole[:32], whole[32:64]) {
		t.Error("derivation repeats its first block: the counter is not used")
	}
}

func FuzzParseToken(f *testing.F) {
	s := secrets{key: testSecretKey}
	for _, kind := range []TokenKind{APIToken, SessionToken} {
		tok, err := s.token(kind, "fuzz-seed")
		if err != nil {
			f.Fatal(err)
		}
		f.Add(tok)
		f.Add(tok[:39] + "!")
	}
	for _, g := range []string{"", "idt_", "ids_", "garbage", strings.Repeat("\xff", 40),
		"idt_000000000000000000000000000000000000", "ids_" + strings.Repeat("z", 36)} {
		f.Add(g)
	}
	f.Fuzz(func(t *testing.T, token string) {
		kind, digest, err := ParseToken(token)
		if err != nil {
			if !errors.Is(err, ErrMalformedToken) {
				t.Fatalf("ParseToken(%q) error %v does not wrap ErrMalformedToken", token, err)
			}
			return
		}
		if len(token) != 40 {
			t.Fatalf("accepted %q of length %d", token, len(token))
		}
		if !strings.HasPrefix(token, kind.prefix()) || (kind != APIToken && kind != SessionToken) {
			t.Fatalf("accepted %q as kind %v", token, kind)
		}
		if digest != Digest(token) {
			t.Fatalf("digest of %q = %q, want %q", token, digest, Digest(token))
		}
		if checksum(token[:34]) != token[34:] {
			t.Fatalf("accepted %q with a wrong checksum", token)
		}
		for i := 4; i < len(token); i++ {
			if !strings.Contains(base62, token[i:i+1]) {
				t.Fatalf("accepted %q with non-base62 byte at %d", token, i)
			}
		}
		k2, d2, err := ParseToken(token)
		if err != nil || k2 != kind || d2 != digest {
			t.Fatalf("re-parse of %q = (%v, %q, %v), want (%v, %q, nil)", token, k2, d2, err, kind, digest)
		}
	})
}
