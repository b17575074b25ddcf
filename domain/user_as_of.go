package domain

import (
	"sort"
	"time"

	"github.com/google/uuid"

	"github.com/identityd/identityd/events"
)

// UserSnapshot is a user's whole state at one point of its history, rebuilt from the stream
// alone: what auditors and operators see with `identityctl users show`.
type UserSnapshot struct {
	ID              uuid.UUID         `json:"id"`
	Exists          bool              `json:"exists"`
	Deleted         bool              `json:"deleted"`
	Email           string            `json:"email,omitempty"`
	Name            string            `json:"name,omitempty"`
	PersonalOrgSlug string            `json:"personal_org_slug,omitempty"`
	CreatedAt       *time.Time        `json:"created_at,omitempty"`
	HasPassword     bool              `json:"has_password"`
	Admin           bool              `json:"admin"`
	Tokens          []TokenSnapshot   `json:"api_tokens"`
	Sessions        []SessionSnapshot `json:"sessions"`
	// Version is the stream sequence of the last event applied; AsOf the instant asked for.
	Version uint64     `json:"version"`
	AsOf    *time.Time `json:"as_of,omitempty"`
}

// TokenSnapshot is an API token in a UserSnapshot (its digest is left out on purpose).
type TokenSnapshot struct {
	ID          uuid.UUID  `json:"id"`
	Description string     `json:"description"`
	CreatedAt   time.Time  `json:"created_at"`
	ExpiresAt   *time.Time `json:"expires_at"`
	Revoked     bool       `json:"revoked"`
}

// SessionSnapshot is a session in a UserSnapshot.
type SessionSnapshot struct {
	ID        uuid.UUID `json:"id"`
	StartedAt time.Time `json:"started_at"`
	ExpiresAt time.Time `json:"expires_at"`
	Ended     bool      `json:"ended"`
}

// ReplayUser folds a user's history up to and including asOf (the zero time: all of it), with
// the same apply function the commands use, so the snapshot is exactly the domain's view.
func ReplayUser(id uuid.UUID, history []events.Envelope, asOf time.Time) UserSnapshot {
	var upTo []events.Envelope
	for _, e := range history {
		if e.Refusal != nil {
			continue // not identityd's event: refused by signature verification
		}
		if !asOf.IsZero() && e.Time.After(asOf) {
			break
		}
		upTo = append(upTo, e)
	}
	u := loadUser(id, upTo)
	s := UserSnapshot{
		ID: id, Exists: u.exists, Deleted: u.deleted, Email: u.email, Name: u.name,
		PersonalOrgSlug: u.slug, HasPassword: u.pwHash != "", Admin: u.admin, Version: u.version,
		Tokens: []TokenSnapshot{}, Sessions: []SessionSnapshot{},
	}
	if u.exists {
		at := u.createdAt
		s.CreatedAt = &at
	}
	if !asOf.IsZero() {
		s.AsOf = &asOf
	}
	for tid, t := range u.tokens {
		s.Tokens = append(s.Tokens, TokenSnapshot{ID: tid, Description: t.description, CreatedAt: t.createdAt, ExpiresAt: t.expiresAt, Revoked: t.revoked})
	}
	for sid, ss := range u.sessions {
		s.Sessions = append(s.Sessions, SessionSnapshot{ID: sid, StartedAt: ss.startedAt, ExpiresAt: ss.expiresAt, Ended: ss.ended})
	}
	sort.Slice(s.Tokens, func(i, j int) bool { return s.Tokens[i].CreatedAt.Before(s.Tokens[j].CreatedAt) })
	sort.Slice(s.Sessions, func(i, j int) bool { return s.Sessions[i].StartedAt.Before(s.Sessions[j].StartedAt) })
	return s
}
