package httpapi

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"mime"
	"net/http"
	"strings"
	"unicode"
	"unicode/utf8"

	"github.com/gin-gonic/gin"
)

// maxBody bounds request bodies.
const maxBody = 64 << 10

// decodeJSON reads the body strictly into v: Content-Type application/json, at most maxBody
// bytes, valid UTF-8, one value, no unknown fields, right types. allowEmpty treats a request
// with no body at all as {} (and, with the JSON content type, a body of only white space).
func decodeJSON(c *gin.Context, v any, allowEmpty bool) error {
	body, err := io.ReadAll(http.MaxBytesReader(c.Writer, c.Request.Body, maxBody))
	if err != nil {
		var mbe *http.MaxBytesError
		if errors.As(err, &mbe) {
			return fail("request_too_large", fmt.Sprintf("request body exceeds %d bytes", maxBody))
		}
		return fail("invalid_json", "could not read the request body")
	}
	if len(body) == 0 {
		if allowEmpty {
			return nil
		}
		return fail("invalid_json", "a JSON request body is required")
	}
	if err := checkJSONContentType(c.Request.Header); err != nil {
		return err
	}
	if len(bytes.TrimSpace(body)) == 0 {
		if allowEmpty {
			return nil
		}
		return fail("invalid_json", "a JSON request body is required")
	}
	if !utf8.Valid(body) {
		return fail("invalid_json", "the request body is not valid UTF-8")
	}
	if err := rejectDuplicateKeys(body); err != nil {
		return err
	}
	dec := json.NewDecoder(bytes.NewReader(body))
	dec.DisallowUnknownFields()
	if err := dec.Decode(v); err != nil {
		return decodeError(err)
	}
	if _, err := dec.Token(); !errors.Is(err, io.EOF) {
		return fail("invalid_json", "unexpected data after the JSON value")
	}
	return nil
}

// checkJSONContentType requires a body to be declared as JSON: exactly one Content-Type,
// application/json, with no charset but UTF-8. A body without one, or with another type, is
// refused even when it parses: text/plain, form and multipart bodies are what a browser sends
// cross-site without a CORS preflight (a fetch with a Blob body has no type at all), so accepting
// them would let any web page post to the API in a visitor's name.
func checkJSONContentType(h http.Header) error {
	const msg = "Content-Type must be application/json (with curl: -H 'Content-Type: application/json')"
	cts := h.Values("Content-Type")
	if len(cts) != 1 {
		return fail("unsupported_media_type", msg)
	}
	mt, params, err := mime.ParseMediaType(cts[0])
	if err != nil || mt != "application/json" {
		return fail("unsupported_media_type", msg)
	}
	if cs, ok := params["charset"]; ok && !strings.EqualFold(cs, "utf-8") {
		return fail("unsupported_media_type", "JSON bodies must be UTF-8: send Content-Type: application/json or application/json; charset=utf-8")
	}
	return nil
}

func decodeError(err error) error {
	var ae *apiError
	if errors.As(err, &ae) { // a field's own UnmarshalJSON said precisely what is wrong
		return ae
	}
	var syn *json.SyntaxError
	var typ *json.UnmarshalTypeError
	switch {
	case errors.As(err, &syn):
		return fail("invalid_json", fmt.Sprintf("malformed JSON at byte %d: %s", syn.Offset, syn.Error()))
	case errors.Is(err, io.ErrUnexpectedEOF):
		return fail("invalid_json", "malformed JSON: unexpected end of input")
	case errors.As(err, &typ):
		if typ.Field == "" {
			return fail("invalid_request", fmt.Sprintf("the body must be a JSON object, not %s", typ.Value))
		}
		return fail("invalid_request", fmt.Sprintf("field %q must be %s, not %s", typ.Field, jsonKind(typ.Type.Kind().String()), typ.Value))
	case strings.HasPrefix(err.Error(), "json: unknown field "):
		return fail("invalid_request", "unknown field "+strings.TrimPrefix(err.Error(), "json: unknown field "))
	}
	var te interface{ Timeout() bool }
	if errors.As(err, &te) {
		return fail("invalid_json", "timed out reading the body")
	}
	return fail("invalid_json", "malformed JSON: "+err.Error())
}

func jsonKind(goKind string) string {
	switch goKind {
	case "string":
		return "a string"
	case "struct", "map":
		return "an object"
	case "slice", "array":
		return "an array"
	case "bool":
		return "a boolean"
	default:
		return "a number"
	}
}

// required checks that a decoded field was present (and not null).
func required(field string, v *string) error {
	if v == nil {
		return fail("invalid_request", fmt.Sprintf("field %q is required", field))
	}
	return nil
}

// idempotencyKey reads the optional Idempotency-Key header.
func idempotencyKey(c *gin.Context) (string, error) {
	k := c.GetHeader("Idempotency-Key")
	if k == "" {
		return "", nil
	}
	if len(k) > 255 {
		return "", fail("invalid_idempotency_key", "Idempotency-Key must be at most 255 characters")
	}
	for i := 0; i < len(k); i++ {
		if k[i] < 0x21 || k[i] > 0x7e {
			return "", fail("invalid_idempotency_key", "Idempotency-Key must be printable ASCII without spaces")
		}
	}
	return k, nil
}

// rejectDuplicateKeys refuses an object that has the same key twice, compared as encoding/json
// matches keys to struct fields (foldKey): a proxy or log pipeline that took the other copy would
// disagree with identityd about what the request said, and a key that only encoding/json's
// folding maps onto a field ("paſſword" for "password") must not slip past as a different one.
// Malformed JSON is left to the decoder to report.
func rejectDuplicateKeys(body []byte) error {
	type frame struct {
		keys      map[string]bool // nil for an array
		expectKey bool
	}
	var stack []*frame
	valueDone := func() {
		if n := len(stack); n > 0 && stack[n-1].keys != nil {
			stack[n-1].expectKey = true
		}
	}
	dec := json.NewDecoder(bytes.NewReader(body))
	for {
		tok, err := dec.Token()
		if err != nil {
			return nil //nolint:nilerr // end of input, or a syntax error that decodeJSON reports precisely
		}
		if n := len(stack); n > 0 && stack[n-1].keys != nil && stack[n-1].expectKey {
			if key, ok := tok.(string); ok {
				folded := foldKey(key)
				if stack[n-1].keys[folded] {
					return fail("invalid_request", fmt.Sprintf("field %q appears more than once", key))
				}
				stack[n-1].keys[folded] = true
				stack[n-1].expectKey = false
				continue
			}
		}
		switch tok {
		case json.Delim('{'):
			stack = append(stack, &frame{keys: map[string]bool{}, expectKey: true})
		case json.Delim('['):
			stack = append(stack, &frame{})
		case json.Delim('}'), json.Delim(']'):
			if len(stack) > 0 {
				stack = stack[:len(stack)-1]
			}
			valueDone()
		default:
			valueDone()
		}
	}
}

// foldKey is the form in which encoding/json compares an object key with a field name:
// foldKey(x) == foldKey(y) exactly when bytes.EqualFold(x, y), which is how encoding/json
// (foldName in its fold.go) matches a key to a field without regard to case. ASCII letters fold
// to upper case; every other rune folds to the smallest rune of its Unicode simple-folding orbit,
// so 'ſ' (U+017F) folds with 's' and 'K' (U+212A, Kelvin) with 'k', where strings.ToLower
// would keep them apart. Keys reach it unquoted and valid UTF-8 (decodeJSON checks the body).
func foldKey(key string) string {
	var b strings.Builder
	b.Grow(len(key))
	for _, r := range key {
		switch {
		case r < utf8.RuneSelf:
			if 'a' <= r && r <= 'z' {
				r -= 'a' - 'A'
			}
		default:
			r = minFold(r)
		}
		b.WriteRune(r)
	}
	return b.String()
}

// minFold is the smallest rune of r's simple-folding orbit (encoding/json's foldRune).
func minFold(r rune) rune {
	for {
		r2 := unicode.SimpleFold(r)
		if r2 <= r {
			return r2
		}
		r = r2
	}
}
