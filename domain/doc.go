// Package domain decides what happens to identities: aggregates (User, EmailClaim) validate
// commands and emit events, and Service runs each command (one file each: sign_up.go,
// log_in.go, rename.go, ...) through one command runner (runner.go) against the event store
// with optimistic concurrency. Every command's Result states its effect on credentials
// (events.Effect), from which callers choose how long to wait before answering. It knows
// nothing of HTTP, NATS or SQL; its ports (EventStore) are declared here, where they are used,
// in the vocabulary of package events (events.Change, events.Expectation,
// events.ErrVersionConflict, events.ErrUnavailable), and implemented by adapters elsewhere that
// need not import domain.
package domain
