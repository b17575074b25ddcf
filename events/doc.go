// Package events is identityd's event contract: the event types the domain emits, the
// JetStream subjects they are stored under, and the CloudEvents 1.0 metadata carried in NATS
// message headers; and the vocabulary of appending to the stream (Change, Expectation,
// ErrVersionConflict, ErrUnavailable, in append.go) that the domain's event-store port and its
// adapter share.
//
// The stream is the source of truth. Downstream services subscribe to it and auditors replay it,
// so everything here is a public, versioned contract: a field may be added without a new schema
// version, but never renamed, retyped or removed.
//
// # Subjects
//
// One stream (StreamName) holds every event under SubjectRoot. Each aggregate owns a subject
// prefix and each event type a final token:
//
//	identity.user.<user-uuid>.<event>    registered, renamed, password_set, token_created,
//	                                     token_revoked, session_started, session_ended, deleted
//	identity.email.<sha256-hex>.<event>  claimed, released
//
// so a consumer filters one user's history with identity.user.<uuid>.*, one kind of event with
// identity.user.*.renamed, and everything with identity.>.
package events
