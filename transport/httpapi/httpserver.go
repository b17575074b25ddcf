package httpapi

import (
	"bytes"
	"encoding/json"
	"fmt"
	"net"
	"net/http"
	"strconv"
	"time"

	"github.com/gin-gonic/gin"
	"github.com/google/uuid"
)

// MaxHeaderBytes is the documented limit on a request's line and header fields together. A
// request over it answers 431 request_headers_too_large in the envelope.
const MaxHeaderBytes = 32 << 10

// Server is the API's HTTP/1.1 server: its timeouts and header limit, and a listener that turns
// the plain-text refusals net/http writes by itself — before any handler runs, for a request it
// cannot parse — into the error envelope. Serve with Server.Serve (not http.Server.Serve), so the
// listener is always the wrapped one; Shutdown and Close are http.Server's.
type Server struct {
	*http.Server
	api *API
}

// NewServer is the API's server. Its MaxHeaderBytes is a backstop above MaxHeaderBytes: the
// documented limit is enforced in the router (limitHeaders), where the request id is known, and
// only what exceeds the backstop is refused by net/http itself (and rewritten, see Serve).
func (a *API) NewServer() *Server {
	return &Server{api: a, Server: &http.Server{
		Handler:           a,
		ReadHeaderTimeout: 5 * time.Second,
		ReadTimeout:       15 * time.Second,
		WriteTimeout:      30 * time.Second,
		IdleTimeout:       2 * time.Minute,
		MaxHeaderBytes:    2 * MaxHeaderBytes,
	}}
}

// Serve serves HTTP on ln, with net/http's own error answers in the envelope.
func (s *Server) Serve(ln net.Listener) error {
	return s.Server.Serve(envelopeListener{Listener: ln, api: s.api})
}

// limitHeaders refuses a request whose line and header fields exceed MaxHeaderBytes.
func (a *API) limitHeaders(c *gin.Context) {
	if n := headerSize(c.Request); n > MaxHeaderBytes {
		c.Header("Connection", "close")
		a.abort(c, fail("request_headers_too_large", fmt.Sprintf("the request line and headers are %d bytes; at most %d are allowed", n, MaxHeaderBytes)))
		return
	}
	c.Next()
}

// headerSize is the size of r's request line and header fields as sent on the wire (HTTP/1.1
// framing: "Name: value\r\n"), as net/http counts against its own limit.
func headerSize(r *http.Request) int {
	n := len(r.Method) + 1 + len(r.RequestURI) + 1 + len(r.Proto) + 2 + len("Host: ") + len(r.Host) + 2 + 2
	for k, vs := range r.Header {
		for _, v := range vs {
			n += len(k) + 2 + len(v) + 2
		}
	}
	return n
}

// envelopeListener hands out connections whose net/http canned error answers are rewritten.
type envelopeListener struct {
	net.Listener
	api *API
}

// Accept implements net.Listener.
func (l envelopeListener) Accept() (net.Conn, error) {
	c, err := l.Listener.Accept()
	if err != nil {
		return nil, err
	}
	return &envelopeConn{Conn: c, api: l.api}, nil
}

// envelopeConn rewrites net/http's canned answer to a request it could not read (a control
// byte in a header, a malformed Host, headers over the limit, an unknown transfer coding) into
// the error envelope. net/http writes that answer straight to the connection in one Write, in a
// fixed form no handler's response has (Content-Type before Connection, no Date, the status line
// repeated as the body), so only that exact form is rewritten; everything else passes through.
// Behind TLS terminated in this process the bytes are encrypted and pass through unchanged.
type envelopeConn struct {
	net.Conn
	api *API
}

// Write implements net.Conn.
func (c *envelopeConn) Write(p []byte) (int, error) {
	if status, detail, ok := parseCannedError(p); ok {
		if out := c.api.cannedEnvelope(status, detail, c.RemoteAddr()); out != nil {
			if _, err := c.Conn.Write(out); err != nil {
				return 0, err
			}
			return len(p), nil
		}
	}
	return c.Conn.Write(p)
}

// CloseWrite lets net/http half-close after its 431 answer, as it does on a bare TCP connection.
func (c *envelopeConn) CloseWrite() error {
	if cw, ok := c.Conn.(interface{ CloseWrite() error }); ok {
		return cw.CloseWrite()
	}
	return nil
}

// goCannedHeaders are the headers of every answer net/http writes for an unreadable request
// (net/http's conn.serve, errorHeaders).
const goCannedHeaders = "\r\nContent-Type: text/plain; charset=utf-8\r\nConnection: close\r\n\r\n"

// parseCannedError recognizes net/http's canned answer: "HTTP/1.1 <status line>" goCannedHeaders,
// then the status line again (or, for 501, "Unsupported transfer encoding"). detail is net/http's
// fixed reason after "<code> <text>: ", if any; it never echoes what the client sent.
func parseCannedError(p []byte) (status int, detail string, ok bool) {
	rest, found := bytes.CutPrefix(p, []byte("HTTP/1.1 "))
	if !found {
		return 0, "", false
	}
	eol := bytes.IndexByte(rest, '\r')
	if eol < 4 || rest[3] != ' ' || !bytes.HasPrefix(rest[eol:], []byte(goCannedHeaders)) {
		return 0, "", false
	}
	line, body := rest[:eol], rest[eol+len(goCannedHeaders):]
	status, err := strconv.Atoi(string(line[:3]))
	if err != nil || status < 400 || status > 599 {
		return 0, "", false
	}
	if !bytes.Equal(body, line) && (status != http.StatusNotImplemented || string(body) != "Unsupported transfer encoding") {
		return 0, "", false
	}
	if _, d, has := bytes.Cut(line, []byte(": ")); has {
		detail = string(d)
	}
	return status, detail, true
}

// cannedEnvelope is the envelope answer for net/http's refusal with this status, with a new
// request id (the request could not be read, so none of its headers is trusted); nil for a
// status the catalog has no code for, which is then passed through as net/http wrote it.
func (a *API) cannedEnvelope(status int, detail string, remote net.Addr) []byte {
	var code, msg string
	switch status {
	case http.StatusBadRequest:
		code, msg = "malformed_request", "the request line or a header is not valid HTTP/1.1 (for example a control character in a header)"
	case http.StatusRequestHeaderFieldsTooLarge:
		code, msg = "request_headers_too_large", fmt.Sprintf("the request line and headers exceed %d bytes", MaxHeaderBytes)
	case http.StatusNotImplemented:
		code, msg = "unsupported_transfer_encoding", "the Transfer-Encoding is not supported; send the body with Content-Length or chunked"
	case http.StatusHTTPVersionNotSupported:
		code, msg = "http_version_not_supported", "the HTTP version is not supported; use HTTP/1.1"
	default:
		return nil
	}
	if entry, ok := codes[code]; !ok || entry.Status != status {
		return nil
	}
	if detail != "" && status == http.StatusBadRequest {
		msg += ": " + detail
	}
	id := "req_" + uuid.Must(uuid.NewV7()).String()
	a.cfg.Logger.Debug("http", "status", status, "code", code, "detail", detail, "request_id", id, "remote", remote.String())
	entry := codes[code]
	body, err := json.Marshal(errorBody{Error: errorDetail{
		Type: entry.Type, Code: code, Message: msg, DocURL: a.cfg.PublicURL + "/docs/errors#" + code, RequestID: id,
	}})
	if err != nil {
		return nil
	}
	var b bytes.Buffer
	fmt.Fprintf(&b, "HTTP/1.1 %d %s\r\nConnection: close\r\nContent-Length: %d\r\nContent-Type: application/json; charset=utf-8\r\nDate: %s\r\nX-Request-Id: %s\r\n\r\n",
		status, http.StatusText(status), len(body), time.Now().UTC().Format(http.TimeFormat), id)
	b.Write(body)
	return b.Bytes()
}
