package main

import (
	"bufio"
	"encoding/json"
	"io"
	"net"
	"net/http"
	"strings"
	"testing"
	"time"

	"github.com/identityd/identityd/projections/dbtest"
	"github.com/identityd/identityd/transport/httpapi"
)

// TestMalformedRequestsGetTheEnvelope writes raw bytes to the server main runs (NewServer on a
// real listener): requests net/http refuses before any handler — a control byte in a header,
// a malformed header line or Host, headers over the limit, an unknown transfer coding, an
// unknown HTTP version — are answered in the error envelope with the right status and a request
// id, not net/http's plain text; headers over the documented limit but under net/http's get
// 431 from the router, with the caller's X-Request-Id.
func TestMalformedRequestsGetTheEnvelope(t *testing.T) {
	e := newEnv(t, dbtest.Backends[1])
	in := e.start()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	srv := in.API().NewServer()
	go func() { _ = srv.Serve(ln) }()
	t.Cleanup(func() { _ = srv.Close() })
	addr := ln.Addr().String()
	doc, _ := spec(t)

	// send writes raw requests on one connection and reads as many answers.
	send := func(t *testing.T, n int, raw string) []response {
		t.Helper()
		conn, err := net.DialTimeout("tcp", addr, 5*time.Second)
		if err != nil {
			t.Fatal(err)
		}
		defer conn.Close()
		_ = conn.SetDeadline(time.Now().Add(10 * time.Second))
		go func() { _, _ = io.WriteString(conn, raw) }() // the server may stop reading early
		br := bufio.NewReader(conn)
		var out []response
		for range n {
			res, err := http.ReadResponse(br, nil)
			if err != nil {
				t.Fatalf("reading answer %d: %v", len(out)+1, err)
			}
			body, err := io.ReadAll(res.Body)
			_ = res.Body.Close()
			if err != nil {
				t.Fatal(err)
			}
			out = append(out, response{Status: res.StatusCode, Header: res.Header, Body: body})
		}
		return out
	}
	envelope := func(t *testing.T, r response, status int, code string) {
		t.Helper()
		if r.Status != status {
			t.Fatalf("status %d, want %d: %s", r.Status, status, r.Body)
		}
		if ct := r.Header.Get("Content-Type"); !strings.HasPrefix(ct, "application/json") {
			t.Fatalf("Content-Type %q: %s", ct, r.Body)
		}
		var v any
		if err := json.Unmarshal(r.Body, &v); err != nil {
			t.Fatalf("not JSON: %s", r.Body)
		}
		if err := doc.Components.Schemas["ErrorResponse"].Value.VisitJSON(v); err != nil {
			t.Fatalf("not an ErrorResponse of openapi.yaml: %v: %s", err, r.Body)
		}
		if got := r.errCode(t); got != code {
			t.Fatalf("code %q, want %q: %s", got, code, r.Body)
		}
	}
	pad := func(n int) string { return "X-Pad: " + strings.Repeat("p", n) + "\r\n" }

	for _, c := range []struct {
		name, raw string
		status    int
		code      string
	}{
		{"control byte in a header value", "GET /api/v0/user HTTP/1.1\r\nHost: x\r\nX-Evil: a\x01b\r\n\r\n", 400, "malformed_request"},
		{"NUL in a header value", "GET /api/v0/user HTTP/1.1\r\nHost: x\r\nX-Evil: a\x00b\r\n\r\n", 400, "malformed_request"},
		{"space in a header name", "GET /api/v0/user HTTP/1.1\r\nHost: x\r\nBad Name: x\r\n\r\n", 400, "malformed_request"},
		{"header line without a colon", "GET /api/v0/user HTTP/1.1\r\nHost: x\r\nnocolon\r\n\r\n", 400, "malformed_request"},
		{"no Host", "GET /api/v0/user HTTP/1.1\r\n\r\n", 400, "malformed_request"},
		{"malformed Host", "GET /api/v0/user HTTP/1.1\r\nHost: a b\r\n\r\n", 400, "malformed_request"},
		{"garbage request line", "\x16\x03\x01\x00\xa5\x01\x00\x00\xa1\x03\x03\r\n\r\n", 400, "malformed_request"},
		{"unknown transfer coding", "POST /api/v0/sessions HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: gzip\r\n\r\n", 501, "unsupported_transfer_encoding"},
		{"unknown HTTP version", "GET /api/v0/user HTTP/3.0\r\nHost: x\r\n\r\n", 505, "http_version_not_supported"},
		{"headers far over net/http's limit", "GET /api/v0/user HTTP/1.1\r\nHost: x\r\n" + strings.Repeat(pad(1000), 200) + "\r\n", 431, "request_headers_too_large"},
	} {
		t.Run(c.name, func(t *testing.T) {
			envelope(t, send(t, 1, c.raw)[0], c.status, c.code)
		})
	}

	t.Run("headers over the documented limit", func(t *testing.T) {
		r := send(t, 1, "GET /api/v0/user HTTP/1.1\r\nHost: x\r\nX-Request-Id: trace-431\r\n"+pad(httpapi.MaxHeaderBytes)+"\r\n")[0]
		envelope(t, r, 431, "request_headers_too_large")
		if id := r.Header.Get("X-Request-Id"); id != "trace-431" {
			t.Fatalf("X-Request-Id %q, want the caller's", id)
		}
	})
	t.Run("headers just within the limit", func(t *testing.T) {
		r := send(t, 1, "GET /api/v0/user HTTP/1.1\r\nHost: x\r\n"+pad(httpapi.MaxHeaderBytes-200)+"\r\n")[0]
		envelope(t, r, 401, "missing_api_token") // reached the handlers
	})
	t.Run("a bad request after good ones on a kept-alive connection", func(t *testing.T) {
		rs := send(t, 3, "GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n"+
			"GET /api/v0/user HTTP/1.1\r\nHost: x\r\n\r\n"+
			"GET /api/v0/user HTTP/1.1\r\nHost: x\r\nX-Evil: \x7f\x01\r\n\r\n")
		if rs[0].Status != 200 || string(rs[0].Body) != `{"status":"ok"}` {
			t.Fatalf("healthz: %d %s", rs[0].Status, rs[0].Body)
		}
		envelope(t, rs[1], 401, "missing_api_token")
		envelope(t, rs[2], 400, "malformed_request")
	})
}
