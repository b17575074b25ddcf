package events

import (
	"crypto/sha256"
	"encoding/hex"
	"strings"
	"time"

	"github.com/google/uuid"
)

// StreamName is the JetStream stream that holds every identityd event.
const StreamName = "IDENTITY"

// SubjectRoot prefixes every subject in StreamName.
const SubjectRoot = "identity"

// currentVersions is the payload schema version this build writes for each event type. Every
// payload carries its version as "schema_version"; Decode upcasts older versions (upcast.go).
var currentVersions = map[Type]int{
	TypeUserRegistered: 1,
	TypeUserRenamed:    2,
	TypePasswordSet:    1,
	TypeTokenCreated:   1,
	TypeTokenRevoked:   1,
	TypeSessionStarted: 1,
	TypeSessionEnded:   1,
	TypeUserDeleted:    1,
	TypeEmailClaimed:   1,
	TypeEmailReleased:  1,
	TypeAdminGranted:   1,
	TypeAdminRevoked:   1,
}

// CurrentVersion is the schema version this build writes for an event type (0: unknown type).
func CurrentVersion(t Type) int { return currentVersions[t] }

// Type is an event's CloudEvents type, e.g. "identityd.user.registered".
type Type string

// The event types identityd emits.
const (
	TypeUserRegistered Type = "identityd.user.registered"
	TypeUserRenamed    Type = "identityd.user.renamed"
	TypePasswordSet    Type = "identityd.user.password_set"
	TypeTokenCreated   Type = "identityd.user.token_created"
	TypeTokenRevoked   Type = "identityd.user.token_revoked"
	TypeSessionStarted Type = "identityd.user.session_started"
	TypeSessionEnded   Type = "identityd.user.session_ended"
	TypeUserDeleted    Type = "identityd.user.deleted"
	TypeEmailClaimed   Type = "identityd.email.claimed"
	TypeEmailReleased  Type = "identityd.email.released"
	TypeAdminGranted   Type = "identityd.user.admin_granted"
	TypeAdminRevoked   Type = "identityd.user.admin_revoked"
)

// Event is the payload of one event. Each payload knows its type and the aggregate it belongs
// to, which together give its subject.
type Event interface {
	EventType() Type
	Aggregate() Aggregate
}

// Aggregate names one consistency boundary in the stream: a kind ("user", "email") and an id
// that is a single subject token.
type Aggregate struct {
	Kind string
	ID   string
}

// UserAggregate is the aggregate of one user account.
func UserAggregate(id uuid.UUID) Aggregate { return Aggregate{Kind: "user", ID: id.String()} }

// EmailAggregate is the aggregate that guards one email address's uniqueness. Its id is the
// SHA-256 of the normalized address, so the address itself never appears in a subject.
func EmailAggregate(normalizedEmail string) Aggregate {
	sum := sha256.Sum256([]byte(normalizedEmail))
	return Aggregate{Kind: "email", ID: hex.EncodeToString(sum[:])}
}

// Filter is the subject filter matching every event of the aggregate.
func (a Aggregate) Filter() string { return SubjectRoot + "." + a.Kind + "." + a.ID + ".*" }

// String renders the aggregate as "kind/id", the CloudEvents subject of its events.
func (a Aggregate) String() string { return a.Kind + "/" + a.ID }

// Subject is the NATS subject an event is stored under.
func Subject(e Event) string {
	t := string(e.EventType())
	return SubjectRoot + "." + e.Aggregate().Kind + "." + e.Aggregate().ID + "." + t[strings.LastIndexByte(t, '.')+1:]
}

// Versioned is embedded first in every payload so that each one carries its schema version.
// Encode stamps the current version whatever the value, so producers need not track it.
type Versioned struct {
	SchemaVersion int `json:"schema_version"`
}

// V returns a version marker for a new payload (Encode stamps the type's current version).
func V() Versioned { return Versioned{SchemaVersion: 1} }

// UserRegistered opens a user's history: the account exists from here on.
type UserRegistered struct {
	Versioned
	UserID          uuid.UUID `json:"user_id"`
	Email           string    `json:"email"`
	Name            string    `json:"name"`
	PersonalOrgSlug string    `json:"personal_org_slug"`
	RegisteredAt    time.Time `json:"registered_at"`
}

// UserRenamed records a new display name. Version 2 records the change as before/after in
// Changes, the audit shape shared by every update; version 1 had "old_name" (upcast on read).
type UserRenamed struct {
	Versioned
	UserID  uuid.UUID `json:"user_id"`
	Name    string    `json:"name"`
	Changes Changes   `json:"changes"`
}

// Changes maps each field an update changed to its values before and after. Secrets never
// appear in it.
type Changes map[string]FieldChange

// FieldChange is one changed field.
type FieldChange struct {
	Before string `json:"before"`
	After  string `json:"after"`
}

// Renamed builds a UserRenamed event from the old and the new name.
func Renamed(user uuid.UUID, before, after string) UserRenamed {
	return UserRenamed{Versioned: V(), UserID: user, Name: after, Changes: Changes{"name": {Before: before, After: after}}}
}

// PasswordSet records a new password as an argon2id hash (PHC string); the password itself is
// never written anywhere.
type PasswordSet struct {
	Versioned
	UserID       uuid.UUID `json:"user_id"`
	PasswordHash string    `json:"password_hash"`
}

// TokenCreated records a new personal API token. Only the SHA-256 digest of its secret is kept.
type TokenCreated struct {
	Versioned
	UserID      uuid.UUID  `json:"user_id"`
	TokenID     uuid.UUID  `json:"token_id"`
	Description string     `json:"description"`
	Digest      string     `json:"digest"`
	CreatedAt   time.Time  `json:"created_at"`
	ExpiresAt   *time.Time `json:"expires_at"`
}

// TokenRevoked records that an API token stops working.
type TokenRevoked struct {
	Versioned
	UserID  uuid.UUID `json:"user_id"`
	TokenID uuid.UUID `json:"token_id"`
}

// SessionStarted records a log-in: a session token (digest only) valid until ExpiresAt.
type SessionStarted struct {
	Versioned
	UserID    uuid.UUID `json:"user_id"`
	SessionID uuid.UUID `json:"session_id"`
	Digest    string    `json:"digest"`
	StartedAt time.Time `json:"started_at"`
	ExpiresAt time.Time `json:"expires_at"`
}

// SessionEnded records a log-out.
type SessionEnded struct {
	Versioned
	UserID    uuid.UUID `json:"user_id"`
	SessionID uuid.UUID `json:"session_id"`
}

// UserDeleted closes a user's history: the account, its tokens and sessions are gone.
type UserDeleted struct {
	Versioned
	UserID uuid.UUID `json:"user_id"`
}

// EmailClaimed reserves an address for one user; a second claim of the same address is refused
// by the stream's per-subject expectation, which is what makes emails unique.
type EmailClaimed struct {
	Versioned
	EmailHash string    `json:"email_hash"`
	UserID    uuid.UUID `json:"user_id"`
}

// EmailReleased frees an address when its user is deleted.
type EmailReleased struct {
	Versioned
	EmailHash string    `json:"email_hash"`
	UserID    uuid.UUID `json:"user_id"`
}

// AdminGranted makes a user an administrator: from here on the user's id passes the admin
// check (admin endpoints). Who granted it is the event's actor ("system" for the bootstrap
// from configuration). Rights belong to this user id only: deleting the account ends them,
// and an account registered later under the same address is another user.
type AdminGranted struct {
	Versioned
	UserID uuid.UUID `json:"user_id"`
}

// AdminRevoked takes a user's administrator rights away.
type AdminRevoked struct {
	Versioned
	UserID uuid.UUID `json:"user_id"`
}

func userAgg(id uuid.UUID) Aggregate { return UserAggregate(id) }

// EventType implements Event.
func (UserRegistered) EventType() Type { return TypeUserRegistered }

// EventType implements Event.
func (UserRenamed) EventType() Type { return TypeUserRenamed }

// EventType implements Event.
func (PasswordSet) EventType() Type { return TypePasswordSet }

// EventType implements Event.
func (TokenCreated) EventType() Type { return TypeTokenCreated }

// EventType implements Event.
func (TokenRevoked) EventType() Type { return TypeTokenRevoked }

// EventType implements Event.
func (SessionStarted) EventType() Type { return TypeSessionStarted }

// EventType implements Event.
func (SessionEnded) EventType() Type { return TypeSessionEnded }

// EventType implements Event.
func (UserDeleted) EventType() Type { return TypeUserDeleted }

// EventType implements Event.
func (EmailClaimed) EventType() Type { return TypeEmailClaimed }

// EventType implements Event.
func (EmailReleased) EventType() Type { return TypeEmailReleased }

// EventType implements Event.
func (AdminGranted) EventType() Type { return TypeAdminGranted }

// EventType implements Event.
func (AdminRevoked) EventType() Type { return TypeAdminRevoked }

// Aggregate implements Event.
func (e UserRegistered) Aggregate() Aggregate { return userAgg(e.UserID) }

// Aggregate implements Event.
func (e UserRenamed) Aggregate() Aggregate { return userAgg(e.UserID) }

// Aggregate implements Event.
func (e PasswordSet) Aggregate() Aggregate { return userAgg(e.UserID) }

// Aggregate implements Event.
func (e TokenCreated) Aggregate() Aggregate { return userAgg(e.UserID) }

// Aggregate implements Event.
func (e TokenRevoked) Aggregate() Aggregate { return userAgg(e.UserID) }

// Aggregate implements Event.
func (e SessionStarted) Aggregate() Aggregate { return userAgg(e.UserID) }

// Aggregate implements Event.
func (e SessionEnded) Aggregate() Aggregate { return userAgg(e.UserID) }

// Aggregate implements Event.
func (e UserDeleted) Aggregate() Aggregate { return userAgg(e.UserID) }

// Aggregate implements Event.
func (e EmailClaimed) Aggregate() Aggregate { return Aggregate{Kind: "email", ID: e.EmailHash} }

// Aggregate implements Event.
func (e EmailReleased) Aggregate() Aggregate { return Aggregate{Kind: "email", ID: e.EmailHash} }

// Aggregate implements Event.
func (e AdminGranted) Aggregate() Aggregate { return userAgg(e.UserID) }

// Aggregate implements Event.
func (e AdminRevoked) Aggregate() Aggregate { return userAgg(e.UserID) }

// registry maps each type to the decoder of its payload.
var registry = map[Type]func([]byte) (Event, error){
	TypeUserRegistered: decodeAs[UserRegistered],
	TypeUserRenamed:    decodeAs[UserRenamed],
	TypePasswordSet:    decodeAs[PasswordSet],
	TypeTokenCreated:   decodeAs[TokenCreated],
	TypeTokenRevoked:   decodeAs[TokenRevoked],
	TypeSessionStarted: decodeAs[SessionStarted],
	TypeSessionEnded:   decodeAs[SessionEnded],
	TypeUserDeleted:    decodeAs[UserDeleted],
	TypeEmailClaimed:   decodeAs[EmailClaimed],
	TypeEmailReleased:  decodeAs[EmailReleased],
	TypeAdminGranted:   decodeAs[AdminGranted],
	TypeAdminRevoked:   decodeAs[AdminRevoked],
}

// Types lists every event type identityd emits.
func Types() []Type {
	out := make([]Type, 0, len(registry))
	for t := range registry {
		out = append(out, t)
	}
	return out
}
