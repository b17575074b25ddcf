package users

import (
	"fmt"

	"github.com/google/uuid"

	"github.com/identityd/identityd/events"
	"github.com/identityd/identityd/projections/engine"
)

// fold is the users projection applied in memory: the rows a batch of events (or, in a
// rebuild, the whole stream) leaves behind, plus what it removed. A batch starts from the
// database rows of the users it touches (Load); Write stores the difference in a few bulk
// statements, whatever the size of the batch.
type fold struct {
	t        engine.Tables
	users    map[uuid.UUID]*UserRow
	tokens   map[uuid.UUID]*TokenRow   // created by the folded events and still live
	sessions map[uuid.UUID]*SessionRow // likewise
	dirty    map[uuid.UUID]bool        // users to write back

	deletedUsers  map[uuid.UUID]bool
	revokedTokens map[uuid.UUID]bool
	endedSessions map[uuid.UUID]bool
	userTokens    map[uuid.UUID]map[uuid.UUID]struct{} // tokens created by the folded events, by user
	userSessions  map[uuid.UUID]map[uuid.UUID]struct{}
}

func newFold(t engine.Tables) *fold {
	return &fold{
		t:     t,
		users: map[uuid.UUID]*UserRow{}, tokens: map[uuid.UUID]*TokenRow{}, sessions: map[uuid.UUID]*SessionRow{},
		dirty: map[uuid.UUID]bool{}, deletedUsers: map[uuid.UUID]bool{}, revokedTokens: map[uuid.UUID]bool{},
		endedSessions: map[uuid.UUID]bool{}, userTokens: map[uuid.UUID]map[uuid.UUID]struct{}{},
		userSessions: map[uuid.UUID]map[uuid.UUID]struct{}{},
	}
}

// reducers is the users projection: event type → change to the read model. Event types not
// listed (email claims) do not concern it; every event lands in the audit log regardless.
var reducers = engine.Reducers[*fold]{
	events.TypeUserRegistered: engine.On(func(f *fold, e events.Envelope, ev events.UserRegistered) error {
		if _, ok := f.users[ev.UserID]; ok {
			return fmt.Errorf("user %s registered twice", ev.UserID)
		}
		f.users[ev.UserID] = &UserRow{
			ID: ev.UserID, Email: ev.Email, Name: ev.Name, PersonalOrgSlug: ev.PersonalOrgSlug,
			CreatedAt: ev.RegisteredAt.UTC(), UpdatedAt: e.Time.UTC(), Version: e.Sequence,
		}
		f.dirty[ev.UserID] = true
		return nil
	}),
	events.TypeUserRenamed: engine.On(func(f *fold, e events.Envelope, ev events.UserRenamed) error {
		if u := f.touch(e, ev.UserID, true); u != nil {
			u.Name = ev.Name
		}
		return nil
	}),
	events.TypePasswordSet: engine.On(func(f *fold, e events.Envelope, ev events.PasswordSet) error {
		// The hash stays in the stream and the aggregate; the read model only notes the change.
		f.touch(e, ev.UserID, true)
		return nil
	}),
	events.TypeTokenCreated: engine.On(func(f *fold, e events.Envelope, ev events.TokenCreated) error {
		if _, ok := f.tokens[ev.TokenID]; ok || f.revokedTokens[ev.TokenID] {
			return fmt.Errorf("token %s created twice", ev.TokenID)
		}
		f.tokens[ev.TokenID] = &TokenRow{ID: ev.TokenID, UserID: ev.UserID, Description: ev.Description,
			Digest: ev.Digest, CreatedAt: ev.CreatedAt.UTC(), ExpiresAt: utcPtr(ev.ExpiresAt)}
		link(f.userTokens, ev.UserID, ev.TokenID)
		f.touch(e, ev.UserID, false)
		return nil
	}),
	events.TypeTokenRevoked: engine.On(func(f *fold, e events.Envelope, ev events.TokenRevoked) error {
		delete(f.tokens, ev.TokenID)
		f.revokedTokens[ev.TokenID] = true
		f.touch(e, ev.UserID, false)
		return nil
	}),
	events.TypeSessionStarted: engine.On(func(f *fold, e events.Envelope, ev events.SessionStarted) error {
		if _, ok := f.sessions[ev.SessionID]; ok || f.endedSessions[ev.SessionID] {
			return fmt.Errorf("session %s started twice", ev.SessionID)
		}
		f.sessions[ev.SessionID] = &SessionRow{ID: ev.SessionID, UserID: ev.UserID, Digest: ev.Digest,
			CreatedAt: ev.StartedAt.UTC(), ExpiresAt: ev.ExpiresAt.UTC()}
		link(f.userSessions, ev.UserID, ev.SessionID)
		f.touch(e, ev.UserID, false)
		return nil
	}),
	events.TypeSessionEnded: engine.On(func(f *fold, e events.Envelope, ev events.SessionEnded) error {
		delete(f.sessions, ev.SessionID)
		f.endedSessions[ev.SessionID] = true
		f.touch(e, ev.UserID, false)
		return nil
	}),
	// Administrator rights: like a profile change, they move updated_at.
	events.TypeAdminGranted: engine.On(func(f *fold, e events.Envelope, ev events.AdminGranted) error {
		if u := f.touch(e, ev.UserID, true); u != nil {
			u.Admin = true
		}
		return nil
	}),
	events.TypeAdminRevoked: engine.On(func(f *fold, e events.Envelope, ev events.AdminRevoked) error {
		if u := f.touch(e, ev.UserID, true); u != nil {
			u.Admin = false
		}
		return nil
	}),
	events.TypeUserDeleted: engine.On(func(f *fold, _ events.Envelope, ev events.UserDeleted) error {
		for id := range f.userTokens[ev.UserID] {
			delete(f.tokens, id)
		}
		for id := range f.userSessions[ev.UserID] {
			delete(f.sessions, id)
		}
		delete(f.userTokens, ev.UserID)
		delete(f.userSessions, ev.UserID)
		delete(f.users, ev.UserID)
		delete(f.dirty, ev.UserID)
		f.deletedUsers[ev.UserID] = true
		return nil
	}),
}

// Apply folds one event (events without a reducer change nothing here).
func (f *fold) Apply(e events.Envelope) error { return reducers.Apply(f, e) }

// touch records that a user's aggregate moved to e (for profile changes, updated_at too) and
// returns the user's row; like an UPDATE … WHERE id, it does nothing for a user it lacks.
func (f *fold) touch(e events.Envelope, user uuid.UUID, profile bool) *UserRow {
	u := f.users[user]
	if u != nil {
		u.Version = e.Sequence
		if profile {
			u.UpdatedAt = e.Time.UTC()
		}
		f.dirty[user] = true
	}
	return u
}

func link(idx map[uuid.UUID]map[uuid.UUID]struct{}, user, id uuid.UUID) {
	if idx[user] == nil {
		idx[user] = map[uuid.UUID]struct{}{}
	}
	idx[user][id] = struct{}{}
}
