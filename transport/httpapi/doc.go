// Package httpapi is identityd's REST API: Gin handlers that turn requests into domain commands
// and read-model queries, strict JSON decoding, bearer authentication, and the one place
// (errors.go) that maps errors to HTTP status codes and the error envelope
// {"error":{type,code,message,doc_url,request_id}}.
//
// The API is described by openapi.yaml (served at /api/v0/openapi.yaml); the tests validate
// every response against it.
package httpapi
