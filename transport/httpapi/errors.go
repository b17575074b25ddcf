package httpapi

import (
	"context"
	"errors"
	"net/http"
	"sort"

	"github.com/gin-gonic/gin"

	"github.com/identityd/identityd/domain"
	"github.com/identityd/identityd/events"
	"github.com/identityd/identityd/projections"
)

// Error types, one per family of status codes.
const (
	typeInvalidRequest = "invalid_request_error"
	typeAuthentication = "authentication_error"
	typePermission     = "permission_error"
	typeNotFound       = "not_found_error"
	typeConflict       = "conflict_error"
	typeRateLimit      = "rate_limit_error"
	typeAPI            = "api_error"
)

// errorCode documents one error code: its status, type and what a client should do.
type errorCode struct {
	Status int
	Type   string
	Title  string
	Help   string
}

// codes is the catalog of every error code the API answers with; the docs page renders it.
var codes = map[string]errorCode{
	"invalid_json":            {400, typeInvalidRequest, "Malformed JSON", "The body is not one valid JSON value (or not valid UTF-8). Send a single JSON object."},
	"invalid_request":         {400, typeInvalidRequest, "Invalid request", "The body has an unknown field, a field of the wrong type or given twice, or a missing required field. The message names the field."},
	"invalid_name":            {400, typeInvalidRequest, "Invalid name", "A name must be 1 to 100 characters after trimming, without control characters."},
	"invalid_email":           {400, typeInvalidRequest, "Invalid email", "An email must be a plain address such as ada@example.com, at most 254 characters."},
	"invalid_password":        {400, typeInvalidRequest, "Invalid password", "A password must be 8 to 256 characters."},
	"invalid_description":     {400, typeInvalidRequest, "Invalid description", "A token description must be at most 200 characters, without control characters."},
	"invalid_expires_at":      {400, typeInvalidRequest, "Invalid expiry", "expires_at must be an RFC 3339 date-time in the future and within 10 years, or null."},
	"invalid_id":              {400, typeInvalidRequest, "Invalid id", "Ids are UUIDs such as 497f6eca-6276-4993-bfeb-53cbbbba6f08."},
	"invalid_idempotency_key": {400, typeInvalidRequest, "Invalid Idempotency-Key", "An Idempotency-Key must be 1 to 255 printable ASCII characters."},
	"session_token_required":  {400, typeInvalidRequest, "Session token required", "Logging out ends a session; call it with the session token, not an API token."},
	"request_too_large":       {413, typeInvalidRequest, "Request too large", "Request bodies are limited to 64 KiB."},
	"unsupported_media_type":  {415, typeInvalidRequest, "Unsupported media type", "Send request bodies with Content-Type: application/json (a charset, if given, must be utf-8). A body without a Content-Type is refused too."},
	"method_not_allowed":      {405, typeInvalidRequest, "Method not allowed", "The path exists but not with this method; see the OpenAPI document."},
	"missing_api_token":       {401, typeAuthentication, "Missing token", "Send a session token or an API token as Authorization: Bearer <token>."},
	"invalid_api_token":       {401, typeAuthentication, "Invalid token", "The token is malformed, unknown, revoked or expired, or its user was deleted. Log in again or create a new API token."},
	"invalid_credentials":     {401, typeAuthentication, "Invalid credentials", "The email or the password is wrong."},
	"invalid_cursor":          {400, typeInvalidRequest, "Invalid cursor", "Pass back the next_cursor of the previous page unchanged."},
	"invalid_filter":          {400, typeInvalidRequest, "Invalid filter", "A query parameter is malformed: limit must be 1 to 200, since/until RFC 3339 date-times, user_id a UUID."},
	"scope_not_granted":       {403, typePermission, "Scope not granted", "This endpoint needs a scope the caller does not have (admin endpoints need an administrator)."},
	"token_not_found":         {404, typeNotFound, "API token not found", "You have no API token with this id."},
	"user_not_found":          {404, typeNotFound, "User not found", "No user has this id, or the user was deleted."},
	"admin_self_revocation":   {409, typeConflict, "Own administrator rights", "Administrators cannot revoke their own administrator rights; another administrator can."},
	"not_found":               {404, typeNotFound, "Not found", "No such resource or path."},
	"email_taken":             {409, typeConflict, "Email taken", "An account with this email already exists. Log in instead."},
	"concurrent_modification": {409, typeConflict, "Concurrent modification", "The resource kept changing while this request was applied. Retry it."},
	"idempotency_key_reused":  {409, typeConflict, "Idempotency key reused", "This Idempotency-Key was already used for a different request, or the session or API token its first request created has since expired, been logged out or been revoked (a retry never hands out a dead credential). Use a new key."},
	"rate_limit_reached":      {429, typeRateLimit, "Rate limit reached", "Too many requests. Wait and retry with backoff."},
	"service_unavailable":     {503, typeAPI, "Service unavailable", "A backing service (event stream or database) is unavailable. Retry with backoff; writes that failed were not recorded."},
	"internal_error":          {500, typeAPI, "Internal error", "Something went wrong on our side. Quote the request id when reporting it."},

	// The request's HTTP framing; mostly answers to what net/http refuses before any handler runs (httpserver.go).
	"malformed_request":             {400, typeInvalidRequest, "Malformed request", "The request line or a header is not valid HTTP/1.1: a control character or line break in a header value, an invalid header name, a missing or malformed Host. Fix the client; nothing was done."},
	"request_headers_too_large":     {431, typeInvalidRequest, "Request headers too large", "The request line and headers together are limited to 32 KiB. Send fewer or shorter headers (cookies of other applications on the same host often are the cause)."},
	"unsupported_transfer_encoding": {501, typeInvalidRequest, "Unsupported transfer encoding", "Only chunked transfer coding is supported; or send the body with a Content-Length."},
	"http_version_not_supported":    {505, typeInvalidRequest, "HTTP version not supported", "Use HTTP/1.1 (or HTTP/1.0)."},
}

// apiError is an error with its place in the catalog and a message for this occurrence.
type apiError struct {
	code    string
	message string
}

func (e *apiError) Error() string { return e.code + ": " + e.message }

func fail(code, message string) *apiError { return &apiError{code: code, message: message} }

// unavailable marks a read-model failure: the database is down or unreachable.
type unavailableError struct{ err error }

func (e unavailableError) Error() string { return "read model: " + e.err.Error() }
func (e unavailableError) Unwrap() error { return e.err }

// classify maps any error to its catalog entry. It is the one place where domain, store and
// transport errors meet HTTP.
func classify(err error) (*apiError, bool) {
	var ae *apiError
	var ve *domain.ValidationError
	var ue unavailableError
	switch {
	case errors.As(err, &ae):
		return ae, false
	case errors.As(err, &ve):
		code := ve.Code
		if _, ok := codes[code]; !ok {
			code = "invalid_request"
		}
		return fail(code, ve.Message), false
	case errors.Is(err, domain.ErrTokenNotFound):
		return fail("token_not_found", "no API token with this id"), false
	case errors.Is(err, domain.ErrUserNotFound):
		return fail("invalid_api_token", "the token's user no longer exists"), false
	case errors.Is(err, domain.ErrSessionNotFound):
		return fail("invalid_api_token", "the session has ended"), false
	case errors.Is(err, domain.ErrEmailTaken):
		return fail("email_taken", "an account with this email already exists"), false
	case errors.Is(err, domain.ErrConcurrentModification), errors.Is(err, events.ErrVersionConflict):
		return fail("concurrent_modification", "the resource kept changing while this request was applied; retry it"), false
	case errors.Is(err, domain.ErrInvalidCredentials):
		return fail("invalid_credentials", "wrong email or password"), false
	case errors.Is(err, domain.ErrIdempotencyKeySpent):
		return fail("idempotency_key_reused", "this Idempotency-Key's first request created a session or API token that has since expired, been logged out or been revoked; send the request again with a new key"), false
	case errors.Is(err, domain.ErrIdempotencyKeyReused):
		return fail("idempotency_key_reused", "this Idempotency-Key was used for a different request"), false
	case errors.Is(err, projections.ErrNotFound):
		return fail("not_found", "not found"), false
	case errors.Is(err, events.ErrUnavailable), errors.As(err, &ue),
		errors.Is(err, context.DeadlineExceeded):
		return fail("service_unavailable", "the service is temporarily unavailable; retry with backoff"), true
	}
	return fail("internal_error", "internal error"), true
}

// errorBody is the error envelope.
type errorBody struct {
	Error errorDetail `json:"error"`
}

type errorDetail struct {
	Type      string `json:"type"`
	Code      string `json:"code"`
	Message   string `json:"message"`
	DocURL    string `json:"doc_url"`
	RequestID string `json:"request_id"`
}

// abort answers err in the envelope and stops the handler chain.
func (a *API) abort(c *gin.Context, err error) {
	ae, serious := classify(err)
	entry := codes[ae.code]
	if serious {
		a.cfg.Logger.Error("request failed", "request_id", requestID(c), "code", ae.code, "err", err)
	}
	if entry.Status == http.StatusUnauthorized {
		c.Header("WWW-Authenticate", `Bearer realm="identityd"`)
	}
	if entry.Status == http.StatusServiceUnavailable {
		c.Header("Retry-After", "1")
	}
	c.AbortWithStatusJSON(entry.Status, errorBody{Error: errorDetail{
		Type: entry.Type, Code: ae.code, Message: ae.message,
		DocURL: a.cfg.PublicURL + "/docs/errors#" + ae.code, RequestID: requestID(c),
	}})
}

// sortedCodes lists the catalog in a stable order for the docs page.
func sortedCodes() []string {
	out := make([]string, 0, len(codes))
	for k := range codes {
		out = append(out, k)
	}
	sort.Slice(out, func(i, j int) bool {
		a, b := codes[out[i]], codes[out[j]]
		if a.Status != b.Status {
			return a.Status < b.Status
		}
		return out[i] < out[j]
	})
	return out
}
