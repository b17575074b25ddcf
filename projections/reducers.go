package projections

import (
	"context"
	"database/sql"
	"encoding/json"
	"errors"
	"fmt"

	"github.com/google/uuid"
	"github.com/uptrace/bun"
	"github.com/uptrace/bun/schema"

	"github.com/identityd/identityd/events"
)

// applyBatch applies the events after the checkpoint and moves the checkpoint, in one
// transaction. It returns the checkpoint after the batch. Events at or below the checkpoint
// (redelivered, or applied by another instance sharing the database) are skipped.
func applyBatch(ctx context.Context, db *bun.DB, t Tables, batch []events.Envelope) (uint64, error) {
	pos, _, err := applyBatchReplays(ctx, db, t, batch)
	return pos, err
}

// ApplyBatch is applyBatch for callers that hold the events themselves instead of reading
// them through a Projector: tests that play the projector (the credential cache's).
func ApplyBatch(ctx context.Context, db *bun.DB, t Tables, batch []events.Envelope) (uint64, error) {
	return applyBatch(ctx, db, t, batch)
}

// applyBatchReplays is applyBatch that also returns the stream positions of the events it
// refused as replays (see dropReplays).
func applyBatchReplays(ctx context.Context, db *bun.DB, t Tables, batch []events.Envelope) (uint64, []uint64, error) {
	var pos uint64
	var replays []uint64
	err := db.RunInTx(ctx, nil, func(ctx context.Context, tx bun.Tx) error {
		var err error
		pos, replays, err = applyEvents(ctx, tx, t, batch, len(batch))
		return err
	})
	if err != nil && ctx.Err() == nil {
		err = diagnose(ctx, db, t, batch, err)
	}
	return pos, replays, err
}

// skipPast moves the checkpoint to seq, an event that is never applied (poison), unless it is
// there already.
func skipPast(ctx context.Context, db *bun.DB, t Tables, seq uint64) error {
	_, err := db.NewUpdate().Model((*checkpointRow)(nil)).
		Set("position = ?", seq).Set("updated_at = ?", timeNow().UTC()).
		Where("name = ?", t.Checkpoint()).Where("position < ?", seq).Exec(ctx)
	if err != nil {
		return fmt.Errorf("move checkpoint %s past poison event %d: %w", t.Checkpoint(), seq, err)
	}
	return nil
}

var errDiagnosed = errors.New("diagnosed")

// diagnose replays a failed batch one event per round trip in a transaction that is always
// rolled back, so the error names the event that failed, not just the batch.
func diagnose(ctx context.Context, db *bun.DB, t Tables, batch []events.Envelope, batchErr error) error {
	var precise error
	_ = db.RunInTx(ctx, nil, func(ctx context.Context, tx bun.Tx) error {
		_, _, precise = applyEvents(ctx, tx, t, batch, 1)
		return errDiagnosed
	})
	if precise != nil {
		return precise
	}
	return batchErr
}

// applyBatchTx is applyBatch inside the caller's transaction.
func applyBatchTx(ctx context.Context, tx bun.Tx, t Tables, batch []events.Envelope) (uint64, error) {
	pos, _, err := applyEvents(ctx, tx, t, batch, len(batch))
	return pos, err
}

// applyEvents applies the batch chunk events at a time: each chunk is folded in memory from
// the rows it touches and written back in a few bulk statements (chunk 1: one event at a time,
// so an error names its event).
func applyEvents(ctx context.Context, tx bun.Tx, t Tables, batch []events.Envelope, chunk int) (uint64, []uint64, error) {
	var pos uint64
	q := tx.NewSelect().Model((*checkpointRow)(nil)).Column("position").Where("name = ?", t.Checkpoint())
	if isPG(tx) {
		q = q.For("UPDATE") // serializes instances that share the database
	}
	if err := q.Scan(ctx, &pos); err != nil {
		return 0, nil, fmt.Errorf("read checkpoint %s: %w", t.Checkpoint(), err)
	}
	var fresh []events.Envelope
	next := pos
	for _, e := range batch {
		if e.Sequence > next { // skips what was applied, and any repeat within the batch
			fresh = append(fresh, e)
			next = e.Sequence
		}
	}
	if len(fresh) == 0 {
		return pos, nil, nil
	}
	last := fresh[len(fresh)-1].Sequence
	fresh, replays, err := dropReplays(ctx, tx, t, fresh)
	if err != nil {
		return 0, nil, err
	}
	if len(fresh) == 0 { // nothing but replays: only the checkpoint moves
		_, err := tx.NewUpdate().Model((*checkpointRow)(nil)).Set("position = ?", last).Set("updated_at = ?", timeNow().UTC()).
			Where("name = ?", t.Checkpoint()).Exec(ctx)
		if err != nil {
			return 0, nil, fmt.Errorf("move checkpoint %s: %w", t.Checkpoint(), err)
		}
		return last, replays, nil
	}
	// Each chunk's writes go out in one round trip, the last chunk's together with the
	// checkpoint: a batch applied as one chunk (the projector's) writes in one round trip.
	w := &statements{pg: isPG(tx)}
	for len(fresh) > 0 {
		n := min(max(chunk, 1), len(fresh))
		part := fresh[:n]
		fresh = fresh[n:]
		err := applyChunk(ctx, tx, w, t, part)
		if err == nil && len(fresh) == 0 {
			pos = last
			err = w.add(ctx, tx.NewUpdate().Model((*checkpointRow)(nil)).
				Set("position = ?", pos).Set("updated_at = ?", timeNow().UTC()).
				Where("name = ?", t.Checkpoint()))
		}
		if err == nil {
			err = w.flush(ctx, tx)
		}
		if err != nil {
			var ee eventError
			if errors.As(err, &ee) {
				return 0, nil, err
			}
			if len(part) == 1 {
				return 0, nil, fmt.Errorf("apply %s (seq %d): %w", part[0].Type, part[0].Sequence, err)
			}
			return 0, nil, fmt.Errorf("apply events %d..%d: %w", part[0].Sequence, part[len(part)-1].Sequence, err)
		}
		pos = part[len(part)-1].Sequence
	}
	return last, replays, nil
}

// dropReplays removes the events that were applied before, under another stream position: a
// genuine, signed event that someone with publish rights appended again (a token_created of a
// since revoked token, an admin_granted since revoked). Each event's id (ce-id, covered by its
// signature) is unique, and the audit log keeps the id of every applied event; a repeat within
// the batch counts too. It returns the remaining events and the positions of those dropped.
func dropReplays(ctx context.Context, tx bun.Tx, t Tables, evs []events.Envelope) ([]events.Envelope, []uint64, error) {
	ids := make([]string, len(evs))
	for i, e := range evs {
		ids[i] = e.ID
	}
	var applied []string
	if err := tx.NewSelect().Model((*AuditRow)(nil)).ModelTableExpr(t.Audit()+" AS a").Column("event_id").
		Where("event_id IN (?)", bun.List(ids)).Scan(ctx, &applied); err != nil {
		return nil, nil, fmt.Errorf("look up event ids: %w", err)
	}
	seen := make(map[string]bool, len(applied)+len(evs))
	for _, id := range applied {
		seen[id] = true
	}
	out := evs[:0:0]
	var replays []uint64
	for _, e := range evs {
		if seen[e.ID] {
			replays = append(replays, e.Sequence)
			continue
		}
		seen[e.ID] = true
		out = append(out, e)
	}
	return out, replays, nil
}

// statements runs a transaction's writes. On PostgreSQL it collects them and sends them as one
// multi-statement query when flushed: one round trip instead of one per statement. Under load
// every round trip waits for both processes to be scheduled again, and the projector's
// transaction — which each write's caller waits for — took about five times as long as on an
// idle machine (measured: ~4 ms idle, ~20 ms during the write benchmarks, for ~37 events).
// Elsewhere (SQLite) each statement runs as it is added.
type statements struct {
	pg   bool
	sqls []byte
}

// writeQuery is a bun query that statements can run now or render for later.
type writeQuery interface {
	AppendQuery(gen schema.QueryGen, b []byte) ([]byte, error)
	DB() *bun.DB
	Exec(ctx context.Context, dest ...any) (sql.Result, error)
}

// add runs q (not PostgreSQL) or queues it for flush.
func (w *statements) add(ctx context.Context, q writeQuery) error {
	if !w.pg {
		_, err := q.Exec(ctx)
		return err
	}
	if len(w.sqls) > 0 {
		w.sqls = append(w.sqls, ";\n"...)
	}
	var err error
	w.sqls, err = q.AppendQuery(q.DB().QueryGen(), w.sqls)
	return err
}

// flush sends the queued statements in one round trip; PostgreSQL runs them in order and stops
// at the first that fails (the transaction is then aborted, as after any failed statement).
func (w *statements) flush(ctx context.Context, tx bun.Tx) error {
	if len(w.sqls) == 0 {
		return nil
	}
	_, err := tx.ExecContext(ctx, string(w.sqls))
	w.sqls = w.sqls[:0]
	return err
}

// applyChunk folds events over the rows of the users they touch and writes the result.
func applyChunk(ctx context.Context, tx bun.Tx, w *statements, t Tables, evs []events.Envelope) error {
	f := newFold()
	var touched []uuid.UUID
	seen := map[uuid.UUID]bool{}
	for _, e := range evs {
		if id, ok := ownerOf(e); ok && !seen[id] {
			seen[id] = true
			touched = append(touched, id)
		}
	}
	if len(touched) > 0 {
		var rows []UserRow
		if err := tx.NewSelect().Model(&rows).ModelTableExpr(t.Users()+" AS u").Where("u.id IN (?)", bun.List(touched)).Scan(ctx); err != nil {
			return fmt.Errorf("load users: %w", err)
		}
		for i := range rows {
			f.users[rows[i].ID] = &rows[i]
		}
	}
	audit := make([]AuditRow, 0, len(evs))
	for _, e := range evs {
		if err := f.apply(e); err != nil {
			return err
		}
		row, err := auditRow(e)
		if err != nil {
			return err
		}
		audit = append(audit, row)
	}
	return f.write(ctx, tx, w, t, audit)
}

// write stores what the fold changed: removals first (so a re-used email is free again), then
// users, tokens, sessions and the audit rows, each in one statement per bulkChunk rows, all
// through w.
func (f *fold) write(ctx context.Context, tx bun.Tx, w *statements, t Tables, audit []AuditRow) error {
	var qs []writeQuery
	if len(f.deletedUsers) > 0 {
		ids := keys(f.deletedUsers)
		qs = append(qs,
			tx.NewDelete().Model((*TokenRow)(nil)).ModelTableExpr(t.Tokens()).Where("user_id IN (?)", bun.List(ids)),
			tx.NewDelete().Model((*SessionRow)(nil)).ModelTableExpr(t.Sessions()).Where("user_id IN (?)", bun.List(ids)),
			tx.NewDelete().Model((*UserRow)(nil)).ModelTableExpr(t.Users()).Where("id IN (?)", bun.List(ids)))
	}
	if len(f.revokedTokens) > 0 {
		qs = append(qs, tx.NewDelete().Model((*TokenRow)(nil)).ModelTableExpr(t.Tokens()).Where("id IN (?)", bun.List(keys(f.revokedTokens))))
	}
	if len(f.endedSessions) > 0 {
		qs = append(qs, tx.NewDelete().Model((*SessionRow)(nil)).ModelTableExpr(t.Sessions()).Where("id IN (?)", bun.List(keys(f.endedSessions))))
	}
	users := make([]UserRow, 0, len(f.dirty))
	for id := range f.dirty {
		users = append(users, *f.users[id])
	}
	for len(users) > 0 {
		n := min(bulkChunk, len(users))
		chunk := users[:n]
		users = users[n:]
		qs = append(qs, tx.NewInsert().Model(&chunk).ModelTableExpr(t.Users()).
			On("CONFLICT (id) DO UPDATE").
			Set("name = EXCLUDED.name").Set("admin = EXCLUDED.admin").Set("updated_at = EXCLUDED.updated_at").Set("version = EXCLUDED.version"))
	}
	qs = appendInserts(tx, qs, t.Tokens(), values(f.tokens))
	qs = appendInserts(tx, qs, t.Sessions(), values(f.sessions))
	qs = appendInserts(tx, qs, t.Audit(), audit)
	for _, q := range qs {
		if err := w.add(ctx, q); err != nil {
			return err
		}
	}
	return nil
}

// appendInserts appends the multi-row INSERTs (bulkChunk rows each) that write rows to table.
func appendInserts[T any](tx bun.Tx, qs []writeQuery, table string, rows []T) []writeQuery {
	for len(rows) > 0 {
		n := min(bulkChunk, len(rows))
		chunk := rows[:n]
		qs = append(qs, tx.NewInsert().Model(&chunk).ModelTableExpr(table))
		rows = rows[n:]
	}
	return qs
}

func keys(m map[uuid.UUID]bool) []uuid.UUID {
	out := make([]uuid.UUID, 0, len(m))
	for k := range m {
		out = append(out, k)
	}
	return out
}

// auditRow turns an event into its audit-log row.
func auditRow(e events.Envelope) (AuditRow, error) {
	data, err := events.Redacted(e.Data)
	if err != nil {
		return AuditRow{}, fmt.Errorf("audit %s (seq %d): %w", e.Type, e.Sequence, err)
	}
	row := AuditRow{
		Sequence: e.Sequence, EventID: e.ID, Type: string(e.Type), Aggregate: e.Subject,
		Actor: e.Metadata.Actor, RequestID: e.Metadata.RequestID, SourceIP: e.Metadata.SourceIP,
		UserAgent: e.Metadata.UserAgent, OccurredAt: e.Time.UTC(), SchemaVersion: e.WrittenVersion, Data: string(data),
	}
	if id, ok := payloadUserID(e.Data); ok {
		row.UserID = &id
	} else {
		// A type payloadUserID does not list yet: the payload's user_id, if any.
		var owner struct {
			UserID *uuid.UUID `json:"user_id"`
		}
		if json.Unmarshal(data, &owner) == nil && owner.UserID != nil {
			row.UserID = owner.UserID
		}
	}
	return row, nil
}

// payloadUserID is the user_id of an event's payload, read without decoding JSON again (the
// audit row is built for every event, also in bulk rebuilds).
func payloadUserID(ev events.Event) (uuid.UUID, bool) {
	switch e := ev.(type) {
	case events.UserRegistered:
		return e.UserID, true
	case events.UserRenamed:
		return e.UserID, true
	case events.PasswordSet:
		return e.UserID, true
	case events.TokenCreated:
		return e.UserID, true
	case events.TokenRevoked:
		return e.UserID, true
	case events.SessionStarted:
		return e.UserID, true
	case events.SessionEnded:
		return e.UserID, true
	case events.UserDeleted:
		return e.UserID, true
	case events.AdminGranted:
		return e.UserID, true
	case events.AdminRevoked:
		return e.UserID, true
	case events.EmailClaimed:
		return e.UserID, true
	case events.EmailReleased:
		return e.UserID, true
	}
	return uuid.Nil, false
}
