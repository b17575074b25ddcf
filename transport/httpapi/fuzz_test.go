package httpapi

import (
	"bytes"
	"encoding/json"
	"mime"
	"net/http"
	"net/http/httptest"
	"reflect"
	"strconv"
	"strings"
	"testing"
	"unicode"
	"unicode/utf8"

	"github.com/gin-gonic/gin"
)

// decodeTargets are the real request structs decodeJSON fills, with the allowEmpty each
// handler passes.
var decodeTargets = []struct {
	name       string
	new        func() any
	allowEmpty bool
}{
	{"signUpRequest", func() any { return new(signUpRequest) }, false},
	{"updateUserRequest", func() any { return new(updateUserRequest) }, false},
	{"createTokenRequest", func() any { return new(createTokenRequest) }, true},
	{"logInRequest", func() any { return new(logInRequest) }, false},
}

// testContext is a gin context for a POST with this body and Content-Type ("" sends none).
func testContext(body []byte, contentType string) *gin.Context {
	gin.SetMode(gin.ReleaseMode)
	c, _ := gin.CreateTestContext(httptest.NewRecorder())
	c.Request = httptest.NewRequest(http.MethodPost, "/api/v0/users", bytes.NewReader(body))
	if contentType != "" {
		c.Request.Header["Content-Type"] = []string{contentType}
	}
	return c
}

// checkAPIError fails unless err is one of our own errors, in the catalog, with a 4xx status.
func checkAPIError(t *testing.T, err error) *apiError {
	t.Helper()
	ae, ok := err.(*apiError) //nolint:errorlint // decodeJSON returns our own type, never wrapped
	if !ok {
		t.Fatalf("error %T %v is not an *apiError", err, err)
	}
	entry, ok := codes[ae.code]
	if !ok {
		t.Fatalf("code %q is not in the catalog", ae.code)
	}
	if entry.Status < 400 || entry.Status > 499 {
		t.Fatalf("code %q has status %d, want 4xx", ae.code, entry.Status)
	}
	if ae.message == "" {
		t.Fatalf("code %q without a message", ae.code)
	}
	return ae
}

func FuzzDecodeJSON(f *testing.F) {
	seeds := []struct {
		body, ct string
	}{
		{`{"email":"ada@example.com","name":"Ada","password":"correct horse"}`, "application/json"},
		{`{"name":"Ada King"}`, "application/json; charset=utf-8"},
		{`{"description":"laptop","expires_at":"2030-01-01T00:00:00Z"}`, "application/vnd.api+json"},
		{`{"expires_at":null}`, ""},
		{`{"name":"a"}`, "text/plain;charset=UTF-8"},
		{`{"name":"a"}`, "application/json; charset=latin1"},
		{`{"name":"a"}`, "Application/JSON; Charset=\"UTF-8\""},
		{``, ""},
		{``, "application/json"},
		{`   `, "application/json"},
		{`{}`, "text/plain"},
		{`{}`, "application/json; charset"},
		{`{"name":"a"}{"name":"b"}`, "application/json"},
		{`{"name":"a","name":"b"}`, "application/json"},
		{`{"name":1e999}`, "application/json"},
		{`{"expires_at":1e999}`, "application/json"},
		{`{"expires_at":"not a time"}`, "application/json"},
		{`{"__proto__":{"admin":true}}`, "application/json"},
		{`{"name":"'; DROP TABLE users_v1; --"}`, "application/json"},
		{"{\"name\":\"\xff\xfe\"}", "application/json"},
		{"{\"name\":\"a\x00b\"}", "application/json"},
		{`{"name":"\u0000"}`, "application/json"},
		{`[[[[[[[[[[]]]]]]]]]]`, "application/json"},
		{`null`, "application/json"},
		{`"x"`, "application/json"},
		{`{"name":`, "application/json"},
		{`{"name":"a"} trailing`, "application/json"},
		{strings.Repeat("[", 20000), "application/json"},
		{`{"name":"` + strings.Repeat("x", maxBody) + `"}`, "application/json"},
	}
	for _, s := range seeds {
		for i := range decodeTargets {
			f.Add([]byte(s.body), s.ct, uint8(i))
		}
	}
	f.Fuzz(func(t *testing.T, body []byte, contentType string, target uint8) {
		tg := decodeTargets[int(target)%len(decodeTargets)]
		v := tg.new()
		err := decodeJSON(testContext(body, contentType), v, tg.allowEmpty)
		if err != nil {
			_ = checkAPIError(t, err)
			return
		}
		// Accepted: it must have been within every rule decodeJSON promises.
		if len(body) > maxBody {
			t.Fatalf("accepted a body of %d bytes", len(body))
		}
		if len(body) == 0 {
			if !tg.allowEmpty {
				t.Fatalf("%s: accepted an empty body", tg.name)
			}
			return
		}
		if mt, params, err := mime.ParseMediaType(contentType); err != nil || mt != "application/json" ||
			(params["charset"] != "" && !strings.EqualFold(params["charset"], "utf-8")) {
			t.Fatalf("%s: accepted a body with Content-Type %q", tg.name, contentType)
		}
		if !utf8.Valid(body) {
			t.Fatalf("accepted invalid UTF-8 %q", body)
		}
		if len(bytes.TrimSpace(body)) == 0 {
			if !tg.allowEmpty {
				t.Fatalf("%s: accepted a blank body", tg.name)
			}
			return
		}
		if !json.Valid(body) {
			t.Fatalf("accepted invalid JSON %q", body)
		}
		if trimmed := bytes.TrimSpace(body); trimmed[0] != '{' && !bytes.Equal(trimmed, []byte("null")) {
			t.Fatalf("%s: accepted a non-object %q", tg.name, body)
		}
	})
}

func FuzzIdempotencyKey(f *testing.F) {
	for _, k := range []string{"", "laptop-1", "signup-1", " ", "a b", "\t", "\x7f", "é", "\x00",
		strings.Repeat("k", 255), strings.Repeat("k", 256), "~!@#$%^&*()_+{}|:<>?", "key\r\nX-Injected: 1"} {
		f.Add(k)
	}
	f.Fuzz(func(t *testing.T, key string) {
		c := testContext(nil, "")
		c.Request.Header["Idempotency-Key"] = []string{key}
		got, err := idempotencyKey(c)
		valid := len(key) <= 255
		for i := 0; i < len(key); i++ {
			if key[i] < 0x21 || key[i] > 0x7e {
				valid = false
			}
		}
		switch {
		case key == "":
			if got != "" || err != nil {
				t.Fatalf("absent key: (%q, %v)", got, err)
			}
		case err != nil:
			if ae := checkAPIError(t, err); ae.code != "invalid_idempotency_key" {
				t.Fatalf("key %q: code %q", key, ae.code)
			}
			if valid {
				t.Fatalf("refused the valid key %q: %v", key, err)
			}
		default:
			if !valid {
				t.Fatalf("accepted the key %q (%d bytes)", key, len(key))
			}
			if got != key {
				t.Fatalf("key %q came back as %q", key, got)
			}
		}
	})
}

// TestDecodeJSONHostileBodies: hostile bodies are refused with the right 4xx code, or (for
// what is valid JSON of the right shape) decoded to exactly what was sent, never a panic.
func TestDecodeJSONHostileBodies(t *testing.T) {
	deep := func(n int) string { return strings.Repeat("[", n) + strings.Repeat("]", n) }
	cases := []struct {
		name, body, ct string
		target         int    // index into decodeTargets
		code           string // "" = accepted
		check          func(t *testing.T, v any)
	}{
		{name: "huge string over the limit", body: `{"name":"` + strings.Repeat("x", 100_000) + `"}`, target: 1, code: "request_too_large"},
		{name: "one byte over the limit", body: `{"name":"` + strings.Repeat("x", maxBody-10) + `"}`, target: 1, code: "request_too_large"},
		{name: "100k nested arrays (over the limit)", body: deep(100_000), target: 1, code: "request_too_large"},
		{name: "32k nested arrays within the limit", body: deep(maxBody / 2), target: 1, code: "invalid_json"},
		{name: "64k unclosed arrays within the limit", body: strings.Repeat("[", maxBody), target: 1, code: "invalid_json"},
		{name: "nested arrays in a field", body: `{"name":` + deep(maxBody/2-6) + `}`, target: 1, code: "invalid_json"},
		{name: "nested objects in a field", body: `{"name":` + strings.Repeat(`{"a":`, 10_000) + `1` + strings.Repeat("}", 10_000) + `}`, target: 1, code: "invalid_json"},
		{name: "shallow nested array in a field", body: `{"name":[[[]]]}`, target: 1, code: "invalid_request"},
		{name: "invalid UTF-8", body: "{\"name\":\"\xc3\x28\"}", target: 1, code: "invalid_json"},
		{name: "overlong UTF-8 slash", body: "{\"name\":\"\xc0\xaf\"}", target: 1, code: "invalid_json"},
		{name: "UTF-16 surrogate bytes", body: "{\"name\":\"\xed\xa0\x80\"}", target: 1, code: "invalid_json"},
		{name: "raw NUL byte in a string", body: "{\"name\":\"a\x00b\"}", target: 1, code: "invalid_json"},
		{name: "raw NUL byte between tokens", body: "{\"name\":\"a\"}\x00", target: 1, code: "invalid_json"},
		{name: "escaped NUL reaches the domain's validation verbatim", body: `{"name":"a\u0000b"}`, target: 1,
			check: func(t *testing.T, v any) {
				if n := v.(*updateUserRequest).Name; n == nil || *n != "a\x00b" {
					t.Fatalf("name = %v", n)
				}
			}},
		// Two copies of a field: a proxy that took the other one would disagree with identityd.
		{name: "duplicate keys", body: `{"name":"first","name":"second"}`, target: 1, code: "invalid_request"},
		{name: "duplicate keys differing in case", body: `{"name":"first","NAME":"second"}`, target: 1, code: "invalid_request"},
		{name: "same key in sibling objects is fine", body: `{"description":"d","expires_at":null}`, target: 2},
		{name: "1e999 for a string", body: `{"name":1e999}`, target: 1, code: "invalid_request"},
		{name: "1e999 as the body", body: `1e999`, target: 1, code: "invalid_request"},
		{name: "1e999 for expires_at", body: `{"expires_at":1e999}`, target: 2, code: "invalid_expires_at"},
		{name: "-1e999 for the password", body: `{"email":"a@b.c","name":"n","password":-1e999}`, target: 0, code: "invalid_request"},
		{name: "huge integer for the description", body: `{"description":` + strings.Repeat("9", 5000) + `}`, target: 2, code: "invalid_request"},
		{name: "__proto__", body: `{"__proto__":{"admin":true}}`, target: 1, code: "invalid_request"},
		{name: "constructor.prototype", body: `{"constructor":{"prototype":{"admin":true}}}`, target: 0, code: "invalid_request"},
		{name: "SQL in a key", body: `{"name' OR '1'='1":"x"}`, target: 1, code: "invalid_request"},
		{name: "SQL in a value stays data", body: `{"name":"Robert'); DROP TABLE users_v1;--"}`, target: 1,
			check: func(t *testing.T, v any) {
				if n := v.(*updateUserRequest).Name; n == nil || *n != "Robert'); DROP TABLE users_v1;--" {
					t.Fatalf("name = %v", n)
				}
			}},
		{name: "SQL as the body", body: `'; SELECT pg_sleep(10); --`, target: 1, code: "invalid_json"},
		{name: "two values", body: `{"name":"a"}{"name":"b"}`, target: 1, code: "invalid_json"},
		{name: "trailing garbage", body: `{"name":"a"} x`, target: 1, code: "invalid_json"},
		{name: "truncated", body: `{"name":"a`, target: 1, code: "invalid_json"},
		{name: "array body", body: `[{"name":"a"}]`, target: 1, code: "invalid_request"},
		{name: "empty body where one is required", body: ``, target: 0, code: "invalid_json"},
		{name: "empty body allowed for token create", body: " \n", target: 2},
		{name: "wrong content type", body: `{"name":"a"}`, ct: "text/plain", target: 1, code: "unsupported_media_type"},
		{name: "form content type", body: `name=a`, ct: "application/x-www-form-urlencoded", target: 1, code: "unsupported_media_type"},
		{name: "malformed content type", body: `{"name":"a"}`, ct: "application/json; charset", target: 1, code: "unsupported_media_type"},
		{name: "content type with NUL", body: `{"name":"a"}`, ct: "application/json\x00", target: 1, code: "unsupported_media_type"},
		{name: "BOM", body: "\xef\xbb\xbf{\"name\":\"a\"}", target: 1, code: "invalid_json"},
		{name: "time with month 13", body: `{"expires_at":"2030-13-01T00:00:00Z"}`, target: 2, code: "invalid_expires_at"},
		{name: "type confusion on expires_at", body: `{"expires_at":{"$gt":""}}`, target: 2, code: "invalid_expires_at"},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			ct := tc.ct
			if ct == "" {
				ct = "application/json"
			}
			tg := decodeTargets[tc.target]
			v := tg.new()
			err := decodeJSON(testContext([]byte(tc.body), ct), v, tg.allowEmpty)
			if tc.code == "" {
				if err != nil {
					t.Fatalf("refused: %v", err)
				}
				if tc.check != nil {
					tc.check(t, v)
				}
				return
			}
			if err == nil {
				t.Fatalf("accepted, want %s", tc.code)
			}
			if ae := checkAPIError(t, err); ae.code != tc.code {
				t.Fatalf("code %q (%s), want %q", ae.code, ae.message, tc.code)
			}
		})
	}
}

func TestRejectDuplicateKeys(t *testing.T) {
	for body, dup := range map[string]bool{
		`{"a":1,"b":{"a":2},"c":[{"a":1},{"a":2}]}`: false,
		`{"a":{"b":1,"b":2}}`:                       true,
		`[{"a":1,"A":2}]`:                           true,
		`{"a":[1,2,{"x":[{"y":1}]}],"a":0}`:         true,
		`{"a":"b","b":"a"}`:                         false,
		`{"a":`:                                     false, // malformed: left to the decoder
	} {
		if err := rejectDuplicateKeys([]byte(body)); (err != nil) != dup {
			t.Errorf("%s: error %v, want duplicate=%v", body, err, dup)
		}
	}
}

// FuzzDuplicateKeyGuard compares the duplicate-key guard with encoding/json itself: for any two
// keys, the guard refuses {k1:…,k2:…} exactly when encoding/json would put both values into the
// same struct field. The field is made at run time (reflect.StructOf) with k1 as its JSON name,
// and {k2:…} is decoded into it; where k1 cannot be a field name (encoding/json's tag rules), the
// guard is compared with bytes.EqualFold, which encoding/json documents as its matching rule.
func FuzzDuplicateKeyGuard(f *testing.F) {
	for _, p := range [][2]string{
		{"password", "paſſword"}, // U+017F LATIN SMALL LETTER LONG S
		{"password", "PASSWORD"},
		{"s", "ſ"},
		{"k", "\u212a"}, // KELVIN SIGN
		{"K", "\u212a"},
		{"name", "NAME"},
		{"name", "nаme"}, // Cyrillic а: a different key
		{"ß", "ẞ"},
		{"σ", "ς"},
		{"Σ", "ς"},
		{"µ", "μ"},
		{"ǅ", "ǆ"},
		{"i", "ı"}, // dotless i does not fold with i
		{"i", "İ"},
		{"a", "a"},
		{"", ""},
		{"a,b", "A,B"},
		{"-", "-"},
		{"\ufffd", "\xff"},
		{"email", "e\u200bmail"},
	} {
		f.Add(p[0], p[1])
	}
	f.Fuzz(func(t *testing.T, k1, k2 string) {
		if !utf8.ValidString(k1) || !utf8.ValidString(k2) {
			return // decodeJSON refuses invalid UTF-8 before the guard runs
		}
		q1, _ := json.Marshal(k1)
		q2, _ := json.Marshal(k2)
		body := []byte(`{` + string(q1) + `:1,` + string(q2) + `:2}`)
		guard := rejectDuplicateKeys(body) != nil
		if want := bytes.EqualFold([]byte(k1), []byte(k2)); guard != want {
			t.Fatalf("keys %q and %q: guard says duplicate=%v, bytes.EqualFold says %v", k1, k2, guard, want)
		}
		if landed, ok := sameField(k1, k2); ok && guard != landed {
			t.Fatalf("keys %q and %q: guard says duplicate=%v, encoding/json puts %q into field %q: %v", k1, k2, guard, k2, k1, landed)
		}
		if guard {
			err := decodeJSON(testContext(body, "application/json"), new(map[string]any), false)
			if ae := checkAPIError(t, err); ae.code != "invalid_request" {
				t.Fatalf("keys %q and %q: code %q, want invalid_request", k1, k2, ae.code)
			}
		}
	})
}

// sameField reports whether encoding/json decodes the key k2 into a struct field whose JSON
// name is k1; ok is false when k1 cannot be a JSON field name.
func sameField(k1, k2 string) (landed, ok bool) {
	if !validJSONName(k1) {
		return false, false
	}
	typ := reflect.StructOf([]reflect.StructField{{
		Name: "F", Type: reflect.TypeFor[*int](), Tag: reflect.StructTag(`json:` + strconv.Quote(k1)),
	}})
	v := reflect.New(typ)
	q2, _ := json.Marshal(k2)
	if err := json.Unmarshal([]byte(`{`+string(q2)+`:7}`), v.Interface()); err != nil {
		panic(err)
	}
	return !v.Elem().Field(0).IsNil(), true
}

// validJSONName is encoding/json's rule for a tag name (isValidTag in encode.go); "-" means
// "skip the field" and so names none.
func validJSONName(s string) bool {
	if s == "" || s == "-" {
		return false
	}
	for _, c := range s {
		if !strings.ContainsRune("!#$%&()*+-./:;<=>?@[]^_{|}~ ", c) && !unicode.IsLetter(c) && !unicode.IsDigit(c) {
			return false
		}
	}
	return true
}

// TestDuplicateKeysFoldLikeEncodingJSON: keys encoding/json would put into one field are
// refused, the documented error, over HTTP-level decoding of the real log-in request.
func TestDuplicateKeysFoldLikeEncodingJSON(t *testing.T) {
	for _, body := range []string{
		`{"email":"a@b.c","password":"x","paſſword":"y"}`,
		`{"email":"a@b.c","password":"x","PASSWORD":"y"}`,
		"{\"email\":\"a@b.c\",\"password\":\"x\",\"pa\\u017f\\u017fword\":\"y\"}",
		`{"email":"a@b.c","password":"x","pASſword":"y"}`,
	} {
		err := decodeJSON(testContext([]byte(body), "application/json"), new(logInRequest), false)
		if err == nil {
			t.Errorf("%s: accepted", body)
			continue
		}
		if ae := checkAPIError(t, err); ae.code != "invalid_request" || !strings.Contains(ae.message, "more than once") {
			t.Errorf("%s: %s %s, want invalid_request for a repeated field", body, ae.code, ae.message)
		}
	}
	if err := rejectDuplicateKeys([]byte(`{"k":1,"K":2}`)); err == nil { // U+212A KELVIN SIGN
		t.Error(`{"k":1,"K":2} passed the guard, but encoding/json matches K to k`)
	}
	// And a key that is not a fold of another stays allowed (Cyrillic а in "nаme" is unknown).
	if err := rejectDuplicateKeys([]byte(`{"name":"a","nаme":"b"}`)); err != nil {
		t.Errorf("look-alike but distinct keys refused as duplicates: %v", err)
	}
}

// TestJSONBodiesNeedTheJSONContentType: a body is only read as JSON when it says it is JSON. The
// types a browser sends cross-site without a CORS preflight (none, text/plain, forms) answer 415;
// a create with truly no body still works without one.
func TestJSONBodiesNeedTheJSONContentType(t *testing.T) {
	const body = `{"name":"a"}`
	for _, ct := range []string{"", "text/plain", "text/plain;charset=UTF-8", "application/x-www-form-urlencoded",
		"multipart/form-data; boundary=x", "application/octet-stream", "application/jsonx", "application/vnd.api+json",
		"application/json; charset=iso-8859-1", "application/json; charset", "json"} {
		err := decodeJSON(testContext([]byte(body), ct), new(updateUserRequest), false)
		if err == nil {
			t.Errorf("Content-Type %q: accepted", ct)
			continue
		}
		if ae := checkAPIError(t, err); ae.code != "unsupported_media_type" || codes[ae.code].Status != http.StatusUnsupportedMediaType {
			t.Errorf("Content-Type %q: %s, want 415 unsupported_media_type", ct, ae.code)
		}
	}
	for _, ct := range []string{"application/json", "application/json; charset=utf-8", "Application/JSON; Charset=\"UTF-8\""} {
		if err := decodeJSON(testContext([]byte(body), ct), new(updateUserRequest), false); err != nil {
			t.Errorf("Content-Type %q: refused: %v", ct, err)
		}
	}
	// Two Content-Type headers: which one a proxy honors is anyone's guess.
	c := testContext([]byte(body), "")
	c.Request.Header["Content-Type"] = []string{"application/json", "text/plain"}
	if err := decodeJSON(c, new(updateUserRequest), false); err == nil {
		t.Error("two Content-Type headers: accepted")
	}
	// A create that may have no body: none at all is fine without a type; white space is a body.
	if err := decodeJSON(testContext(nil, ""), new(createTokenRequest), true); err != nil {
		t.Errorf("no body, no Content-Type, body optional: %v", err)
	}
	if err := decodeJSON(testContext([]byte(" \n"), ""), new(createTokenRequest), true); err == nil {
		t.Error("a blank body without Content-Type was accepted")
	}
	// A required body that is missing is a missing body, whatever the type.
	if err := decodeJSON(testContext(nil, ""), new(logInRequest), false); err == nil || err.(*apiError).code != "invalid_json" { //nolint:errorlint // our own type
		t.Errorf("missing required body: %v, want invalid_json", err)
	}
}
