package domain

import (
	"crypto/sha256"
	"encoding/base32"
	"errors"
	"strings"
	"time"

	"github.com/google/uuid"

	"github.com/identityd/identityd/events"
)

// Errors returned by User's commands.
var (
	// ErrUserNotFound: no such user, or the user was deleted.
	ErrUserNotFound = errors.New("user not found")
	// ErrTokenNotFound: the user has no API token with that id.
	ErrTokenNotFound = errors.New("api token not found")
	// ErrSessionNotFound: the user has no live session with that id.
	ErrSessionNotFound = errors.New("session not found")
	// ErrSelfRevocation: an administrator asked to revoke their own administrator rights.
	// Refused so that revoking never leaves the service without the administrator who did it;
	// another administrator can revoke them.
	ErrSelfRevocation = errors.New("administrators cannot revoke their own administrator rights")
)

// User is the aggregate of one account: profile, password, API tokens and sessions. Its state
// changes only by applying events (see apply); commands validate, then raise events.
type User struct {
	id        uuid.UUID
	email     string
	name      string
	slug      string
	pwHash    string
	createdAt time.Time
	exists    bool
	deleted   bool
	admin     bool // administrator rights, granted and revoked by events only
	tokens    map[uuid.UUID]*apiToken
	sessions  map[uuid.UUID]*session
	version   uint64 // stream sequence of the last applied event; 0 for a new aggregate
	chain     string // chain hash of that event
	changes   []events.Event
}

type apiToken struct {
	description string
	digest      string
	createdAt   time.Time
	expiresAt   *time.Time
	revoked     bool
}

type session struct {
	digest    string
	startedAt time.Time
	expiresAt time.Time
	ended     bool
}

// UserView is the public state of a user.
type UserView struct {
	ID              uuid.UUID
	Email           string
	Name            string
	PersonalOrgSlug string
	// Admin: the user holds administrator rights (identityd.user.admin_granted).
	Admin bool
}

// TokenView is the public state of an API token.
type TokenView struct {
	ID          uuid.UUID
	Description string
	CreatedAt   time.Time
	ExpiresAt   *time.Time
}

// SessionView is the public state of a session.
type SessionView struct {
	ID        uuid.UUID
	CreatedAt time.Time
	ExpiresAt time.Time
}

// registration is what a new account starts with. The password arrives already hashed.
type registration struct {
	id           uuid.UUID
	email        string
	name         string
	passwordHash string
	at           time.Time
}

// newUser registers an account, normalizing and checking email and name.
func newUser(r registration) (*User, error) {
	u := emptyUser(r.id)
	if err := u.register(r); err != nil {
		return nil, err
	}
	return u, nil
}

// register opens the history of a blank user (emptyUser of r.id), normalizing and checking
// email and name.
func (u *User) register(r registration) error {
	email, err := NormalizeEmail(r.email)
	if err != nil {
		return err
	}
	name, err := normalizeName(r.name)
	if err != nil {
		return err
	}
	if r.id == uuid.Nil || r.id != u.id || r.passwordHash == "" {
		return errors.New("registration needs an id and a password hash")
	}
	u.raise(events.UserRegistered{
		Versioned: events.V(), UserID: r.id, Email: email, Name: name,
		PersonalOrgSlug: personalOrgSlug(name, r.id), RegisteredAt: r.at.UTC(),
	})
	u.raise(events.PasswordSet{Versioned: events.V(), UserID: r.id, PasswordHash: r.passwordHash})
	return nil
}

// personalOrgSlug is a readable, unique slug: the name's slug plus 60 bits of a hash of the
// user id (a hash, because the leading bits of a v7 id are a timestamp).
func personalOrgSlug(name string, id uuid.UUID) string {
	sum := sha256.Sum256(id[:])
	suffix := strings.ToLower(base32.StdEncoding.WithPadding(base32.NoPadding).EncodeToString(sum[:8]))
	return slugify(name) + "-" + suffix[:12]
}

func emptyUser(id uuid.UUID) *User {
	return &User{id: id, tokens: map[uuid.UUID]*apiToken{}, sessions: map[uuid.UUID]*session{}}
}

// loadUser folds a user's history.
func loadUser(id uuid.UUID, history []events.Envelope) *User {
	u := emptyUser(id)
	for _, e := range history {
		u.follow(e)
	}
	return u
}

// follow applies one stored event of the user's history. An event refused by signature
// verification, or one that does not continue the chain (a replayed older event), holds a
// stream position (the next append expects it) but changes nothing, and the chain continues
// from the last accepted event.
func (u *User) follow(e events.Envelope) {
	u.version = e.Sequence
	if e.Refusal != nil || !e.Continues(u.chain) {
		return
	}
	u.apply(e.Data)
	u.chain = e.ChainHash
}

// committed records that the pending changes were stored, the last of all stored changes at
// seq: the user continues from its own last change.
func (u *User) committed(seq uint64, stored []events.Change) {
	if v, chain, ok := lastStored(events.UserAggregate(u.id), seq, stored); ok {
		u.version, u.chain = v, chain
	}
	u.changes = nil
}

// active reports whether the account exists and was not deleted.
func (u *User) active() bool { return u.exists && !u.deleted }

// expectation is the condition of the user's next append: its last event is still the one
// folded here.
func (u *User) expectation() events.Expectation {
	return events.Expectation{Aggregate: events.UserAggregate(u.id), Version: u.version, Chain: u.chain}
}

// pending lists the events decided since the last commit.
func (u *User) pending() []events.Event { return u.changes }

// View returns the public state.
func (u *User) View() UserView {
	return UserView{ID: u.id, Email: u.email, Name: u.name, PersonalOrgSlug: u.slug, Admin: u.admin}
}

func (u *User) tokenView(id uuid.UUID) TokenView {
	t := u.tokens[id]
	return TokenView{ID: id, Description: t.description, CreatedAt: t.createdAt, ExpiresAt: t.expiresAt}
}

func (u *User) sessionView(id uuid.UUID) SessionView {
	s := u.sessions[id]
	return SessionView{ID: id, CreatedAt: s.startedAt, ExpiresAt: s.expiresAt}
}

// rename sets a new display name; the same name changes nothing and emits nothing.
func (u *User) rename(name string) error {
	n, err := normalizeName(name)
	if err != nil {
		return err
	}
	if n == u.name {
		return nil
	}
	u.raise(events.Renamed(u.id, u.name, n))
	return nil
}

// setPassword replaces the password hash.
func (u *User) setPassword(hash string) {
	u.raise(events.PasswordSet{Versioned: events.V(), UserID: u.id, PasswordHash: hash})
}

// createToken adds an API token whose secret has the given digest.
func (u *User) createToken(id uuid.UUID, description, digest string, at time.Time, expiresAt *time.Time) error {
	if err := checkDescription(description); err != nil {
		return err
	}
	if err := checkExpiry(expiresAt, at); err != nil {
		return err
	}
	var exp *time.Time
	if expiresAt != nil {
		e := expiresAt.UTC()
		exp = &e
	}
	u.raise(events.TokenCreated{
		Versioned: events.V(), UserID: u.id, TokenID: id, Description: description,
		Digest: digest, CreatedAt: at.UTC(), ExpiresAt: exp,
	})
	return nil
}

// revokeToken stops a token; revoking a revoked token changes nothing.
func (u *User) revokeToken(id uuid.UUID) error {
	t, ok := u.tokens[id]
	if !ok {
		return ErrTokenNotFound
	}
	if t.revoked {
		return nil
	}
	u.raise(events.TokenRevoked{Versioned: events.V(), UserID: u.id, TokenID: id})
	return nil
}

// startSession opens a session whose token has the given digest.
func (u *User) startSession(id uuid.UUID, digest string, at time.Time, ttl time.Duration) {
	u.raise(events.SessionStarted{
		Versioned: events.V(), UserID: u.id, SessionID: id, Digest: digest,
		StartedAt: at.UTC(), ExpiresAt: at.Add(ttl).UTC(),
	})
}

// endSession logs a session out; ending an ended session changes nothing.
func (u *User) endSession(id uuid.UUID) error {
	s, ok := u.sessions[id]
	if !ok {
		return ErrSessionNotFound
	}
	if s.ended {
		return nil
	}
	u.raise(events.SessionEnded{Versioned: events.V(), UserID: u.id, SessionID: id})
	return nil
}

// grantAdmin makes the user an administrator; granting an administrator changes nothing and
// emits nothing.
func (u *User) grantAdmin() {
	if u.admin {
		return
	}
	u.raise(events.AdminGranted{Versioned: events.V(), UserID: u.id})
}

// revokeAdmin takes administrator rights away; revoking them from a user without them changes
// nothing and emits nothing.
func (u *User) revokeAdmin() {
	if !u.admin {
		return
	}
	u.raise(events.AdminRevoked{Versioned: events.V(), UserID: u.id})
}

// remove deletes the account.
func (u *User) remove() {
	u.raise(events.UserDeleted{Versioned: events.V(), UserID: u.id})
}

func (u *User) raise(e events.Event) {
	u.apply(e)
	u.changes = append(u.changes, e)
}

// apply is the only place where a User's state changes.
func (u *User) apply(e events.Event) {
	switch e := e.(type) {
	case events.UserRegistered:
		u.exists, u.email, u.name, u.slug, u.createdAt = true, e.Email, e.Name, e.PersonalOrgSlug, e.RegisteredAt
	case events.UserRenamed:
		u.name = e.Name
	case events.PasswordSet:
		u.pwHash = e.PasswordHash
	case events.TokenCreated:
		u.tokens[e.TokenID] = &apiToken{description: e.Description, digest: e.Digest, createdAt: e.CreatedAt, expiresAt: e.ExpiresAt}
	case events.TokenRevoked:
		if t, ok := u.tokens[e.TokenID]; ok {
			t.revoked = true
		}
	case events.SessionStarted:
		u.sessions[e.SessionID] = &session{digest: e.Digest, startedAt: e.StartedAt, expiresAt: e.ExpiresAt}
	case events.SessionEnded:
		if s, ok := u.sessions[e.SessionID]; ok {
			s.ended = true
		}
	case events.AdminGranted:
		u.admin = true
	case events.AdminRevoked:
		u.admin = false
	case events.UserDeleted:
		u.deleted, u.admin = true, false
		u.tokens = map[uuid.UUID]*apiToken{}
		u.sessions = map[uuid.UUID]*session{}
	}
}
