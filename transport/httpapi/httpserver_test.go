package httpapi

import (
	"testing"
)

// TestParseCannedError: exactly net/http's canned answers are recognized (net/http's
// conn.serve writes them), and no ordinary response is.
func TestParseCannedError(t *testing.T) {
	const h = "\r\nContent-Type: text/plain; charset=utf-8\r\nConnection: close\r\n\r\n"
	for raw, want := range map[string]struct {
		status int
		detail string
	}{
		"HTTP/1.1 400 Bad Request" + h + "400 Bad Request":                                                                                           {400, ""},
		"HTTP/1.1 400 Bad Request: invalid header value" + h + "400 Bad Request: invalid header value":                                               {400, "invalid header value"},
		"HTTP/1.1 431 Request Header Fields Too Large" + h + "431 Request Header Fields Too Large":                                                   {431, ""},
		"HTTP/1.1 501 Not Implemented" + h + "Unsupported transfer encoding":                                                                         {501, ""},
		"HTTP/1.1 505 HTTP Version Not Supported: unsupported protocol version" + h + "505 HTTP Version Not Supported: unsupported protocol version": {505, "unsupported protocol version"},
	} {
		status, detail, ok := parseCannedError([]byte(raw))
		if !ok || status != want.status || detail != want.detail {
			t.Errorf("%q: (%d, %q, %v), want (%d, %q)", raw, status, detail, ok, want.status, want.detail)
		}
	}
	for _, raw := range []string{
		"",
		"HTTP/1.1 200 OK\r\nContent-Type: text/plain; charset=utf-8\r\nConnection: close\r\n\r\n200 OK",
		"HTTP/1.1 400 Bad Request\r\nConnection: close\r\nContent-Type: text/plain; charset=utf-8\r\nDate: x\r\n\r\n400 Bad Request",
		"HTTP/1.1 400 Bad Request" + h + "400 Bad Request and more",
		"HTTP/1.1 400 Bad Request" + h,
		"HTTP/1.0 400 Bad Request" + h + "400 Bad Request",
		"HTTP/1.1 4x0 Bad Request" + h + "4x0 Bad Request",
		"HTTP/1.1 400 Bad Request" + h[:len(h)-2] + "400 Bad Request",
		`{"error":{}}`,
		"400 Bad Request" + h + "400 Bad Request",
	} {
		if status, _, ok := parseCannedError([]byte(raw)); ok {
			t.Errorf("%q recognized as net/http's canned %d", raw, status)
		}
	}
}
