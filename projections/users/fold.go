package users

import (
	"context"
	"fmt"

	"github.com/google/uuid"
	"github.com/uptrace/bun"

	"github.com/identityd/identityd/events"
	"github.com/identityd/identityd/projections/engine"
)

// Load reads the rows of the users the events belong to.
func (f *fold) Load(ctx context.Context, db bun.IDB, evs []events.Envelope) error {
	var touched []uuid.UUID
	seen := map[uuid.UUID]bool{}
	for _, e := range evs {
		if id, ok := ownerOf(e); ok && !seen[id] {
			seen[id] = true
			touched = append(touched, id)
		}
	}
	if len(touched) == 0 {
		return nil
	}
	var rows []UserRow
	if err := db.NewSelect().Model(&rows).ModelTableExpr(f.t.Name(usersTable)+" AS u").Where("u.id IN (?)", bun.List(touched)).Scan(ctx); err != nil {
		return fmt.Errorf("load users: %w", err)
	}
	for i := range rows {
		f.users[rows[i].ID] = &rows[i]
	}
	return nil
}

// Write stores what the fold changed: removals first (so a re-used email is free again), then
// users, tokens and sessions, each in one statement per engine.BulkChunk rows.
func (f *fold) Write(ctx context.Context, db bun.IDB, w engine.Writer) error {
	users, tokens, sessions := f.t.Name(usersTable), f.t.Name(tokensTable), f.t.Name(sessionsTable)
	var qs []engine.Query
	if len(f.deletedUsers) > 0 {
		ids := engine.Keys(f.deletedUsers)
		qs = append(qs,
			db.NewDelete().Model((*TokenRow)(nil)).ModelTableExpr(tokens).Where("user_id IN (?)", bun.List(ids)),
			db.NewDelete().Model((*SessionRow)(nil)).ModelTableExpr(sessions).Where("user_id IN (?)", bun.List(ids)),
			db.NewDelete().Model((*UserRow)(nil)).ModelTableExpr(users).Where("id IN (?)", bun.List(ids)))
	}
	if len(f.revokedTokens) > 0 {
		qs = append(qs, db.NewDelete().Model((*TokenRow)(nil)).ModelTableExpr(tokens).Where("id IN (?)", bun.List(engine.Keys(f.revokedTokens))))
	}
	if len(f.endedSessions) > 0 {
		qs = append(qs, db.NewDelete().Model((*SessionRow)(nil)).ModelTableExpr(sessions).Where("id IN (?)", bun.List(engine.Keys(f.endedSessions))))
	}
	dirty := make([]UserRow, 0, len(f.dirty))
	for id := range f.dirty {
		dirty = append(dirty, *f.users[id])
	}
	for len(dirty) > 0 {
		n := min(engine.BulkChunk, len(dirty))
		chunk := dirty[:n]
		dirty = dirty[n:]
		qs = append(qs, db.NewInsert().Model(&chunk).ModelTableExpr(users).
			On("CONFLICT (id) DO UPDATE").
			Set("name = EXCLUDED.name").Set("admin = EXCLUDED.admin").Set("updated_at = EXCLUDED.updated_at").Set("version = EXCLUDED.version"))
	}
	qs = append(qs, engine.Inserts(db, tokens, engine.Values(f.tokens))...)
	qs = append(qs, engine.Inserts(db, sessions, engine.Values(f.sessions))...)
	for _, q := range qs {
		if err := w.Add(ctx, q); err != nil {
			return err
		}
	}
	return nil
}

// Stream hands over nothing: a user's row can change until the end of the stream.
func (f *fold) Stream() []engine.RowSet { return nil }

// Final is the users, tokens and sessions the whole stream leaves.
func (f *fold) Final() []engine.RowSet {
	return []engine.RowSet{
		engine.Rows(f.t.Name(usersTable), engine.Values(f.users)),
		engine.Rows(f.t.Name(tokensTable), engine.Values(f.tokens)),
		engine.Rows(f.t.Name(sessionsTable), engine.Values(f.sessions)),
	}
}
