package users

import (
	"context"
	"fmt"
	"time"

	"github.com/google/uuid"
	"github.com/uptrace/bun"

	"github.com/identityd/identityd/domain"
	"github.com/identityd/identityd/events"
	"github.com/identityd/identityd/projections/engine"
)

// Snapshot is the projection's rows of one generation, read consistently.
type Snapshot struct {
	Users    []UserRow
	Tokens   []TokenRow
	Sessions []SessionRow
}

// ReadSnapshot reads every row of generation g (inside engine.ReadConsistent).
func ReadSnapshot(ctx context.Context, db bun.IDB, g engine.Tables) (Snapshot, error) {
	var s Snapshot
	if err := db.NewSelect().Model(&s.Users).ModelTableExpr(g.Name(usersTable) + " AS u").Scan(ctx); err != nil {
		return s, err
	}
	if err := db.NewSelect().Model(&s.Tokens).ModelTableExpr(g.Name(tokensTable) + " AS t").Scan(ctx); err != nil {
		return s, err
	}
	if err := db.NewSelect().Model(&s.Sessions).ModelTableExpr(g.Name(sessionsTable) + " AS s").Scan(ctx); err != nil {
		return s, err
	}
	return s, nil
}

// Check implements engine.Checker: the rows are compared, user by user, with what the domain
// makes of the user's history (domain.ReplayUser), an independent fold of the same events.
func (Projection) Check(ctx context.Context, db bun.IDB, g engine.Tables, _ uint64) (engine.Check, error) {
	snap, err := ReadSnapshot(ctx, db, g)
	if err != nil {
		return nil, err
	}
	return &check{snap: snap, histories: map[uuid.UUID][]events.Envelope{}}, nil
}

type check struct {
	snap      Snapshot
	histories map[uuid.UUID][]events.Envelope
}

func (c *check) See(e events.Envelope) {
	if u, ok := ownerOf(e); ok {
		c.histories[u] = append(c.histories[u], e)
	}
}

func (c *check) Report(report func(engine.Difference)) { compareReadModel(c.histories, c.snap, report) }

// compareReadModel checks the snapshot row by row against the fold of each user's history.
func compareReadModel(histories map[uuid.UUID][]events.Envelope, snap Snapshot, report func(engine.Difference)) {
	users := map[uuid.UUID]UserRow{}
	for _, u := range snap.Users {
		users[u.ID] = u
	}
	tokens := map[uuid.UUID]TokenRow{}
	for _, t := range snap.Tokens {
		tokens[t.ID] = t
	}
	sessions := map[uuid.UUID]SessionRow{}
	for _, s := range snap.Sessions {
		sessions[s.ID] = s
	}
	for id, history := range histories {
		want := domain.ReplayUser(id, history, time.Time{})
		agg := events.UserAggregate(id).String()
		row, has := users[id]
		delete(users, id)
		live := want.Exists && !want.Deleted
		switch {
		case live && !has:
			report(engine.Difference{Kind: "user_missing", Aggregate: agg, Detail: "the stream has this user; the read model does not"})
			continue
		case !live && has:
			report(engine.Difference{Kind: "user_not_deleted", Aggregate: agg, Detail: "the stream deleted (or never registered) this user; the read model still has it"})
			continue
		case !live:
			continue
		}
		for field, pair := range map[string][2]any{
			"email": {row.Email, want.Email}, "name": {row.Name, want.Name},
			"personal_org_slug": {row.PersonalOrgSlug, want.PersonalOrgSlug}, "version": {row.Version, want.Version},
			"admin": {row.Admin, want.Admin},
		} {
			if pair[0] != pair[1] {
				report(engine.Difference{Kind: "user_field", Aggregate: agg, Detail: fmt.Sprintf("%s: read model %v, stream %v", field, pair[0], pair[1])})
			}
		}
		for _, t := range want.Tokens {
			row, has := tokens[t.ID]
			delete(tokens, t.ID)
			switch {
			case !t.Revoked && !has:
				report(engine.Difference{Kind: "token_missing", Aggregate: agg, Detail: "token " + t.ID.String() + " is live in the stream"})
			case t.Revoked && has:
				report(engine.Difference{Kind: "token_not_revoked", Aggregate: agg, Detail: "token " + t.ID.String() + " was revoked in the stream but still authenticates"})
			case has && (row.UserID != id || row.Description != t.Description):
				report(engine.Difference{Kind: "token_field", Aggregate: agg, Detail: "token " + t.ID.String() + " differs"})
			}
		}
		for _, s := range want.Sessions {
			_, has := sessions[s.ID]
			delete(sessions, s.ID)
			if s.Ended == has {
				report(engine.Difference{Kind: "session", Aggregate: agg, Detail: fmt.Sprintf("session %s: ended in the stream %v, live in the read model %v", s.ID, s.Ended, has)})
			}
		}
	}
	for id := range users {
		report(engine.Difference{Kind: "user_unknown", Aggregate: events.UserAggregate(id).String(), Detail: "the read model has a user the stream never registered"})
	}
	for id, t := range tokens {
		report(engine.Difference{Kind: "token_unknown", Aggregate: events.UserAggregate(t.UserID).String(), Detail: "token " + id.String() + " is not in the stream (or belongs to a deleted user)"})
	}
	for id, s := range sessions {
		report(engine.Difference{Kind: "session_unknown", Aggregate: events.UserAggregate(s.UserID).String(), Detail: "session " + id.String() + " is not in the stream"})
	}
}
