package projections

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"

	"github.com/google/uuid"
	"github.com/uptrace/bun"
	"github.com/uptrace/bun/schema"

	"github.com/identityd/identityd/events"
)

// reducer adds to the batch's script the statements that apply one event to the read model.
type reducer func(w *script, t Tables, e events.Envelope) error

// on adapts a reducer of one payload type to the table's signature.
func on[T events.Event](f func(w *script, t Tables, e events.Envelope, ev T)) reducer {
	return func(w *script, t Tables, e events.Envelope) error {
		ev, ok := e.Data.(T)
		if !ok {
			return fmt.Errorf("%w: %s carries %T", errPoison, e.Type, e.Data)
		}
		f(w, t, e, ev)
		return nil
	}
}

// reducers is the users projection: event type → change to the read model. Event types not
// listed (email claims) do not concern it.
var reducers = map[events.Type]reducer{
	events.TypeUserRegistered: on(func(w *script, t Tables, e events.Envelope, ev events.UserRegistered) {
		w.add(w.db.NewInsert().Model(&UserRow{
			ID: ev.UserID, Email: ev.Email, Name: ev.Name, PersonalOrgSlug: ev.PersonalOrgSlug,
			CreatedAt: ev.RegisteredAt.UTC(), UpdatedAt: e.Time.UTC(), Version: e.Sequence,
		}).ModelTableExpr(t.Users()))
	}),
	events.TypeUserRenamed: on(func(w *script, t Tables, e events.Envelope, ev events.UserRenamed) {
		w.add(w.db.NewUpdate().Model((*UserRow)(nil)).ModelTableExpr(t.Users()).
			Set("name = ?", ev.Name).Set("updated_at = ?", e.Time.UTC()).Set("version = ?", e.Sequence).
			Where("id = ?", ev.UserID))
	}),
	events.TypePasswordSet: on(func(w *script, t Tables, e events.Envelope, ev events.PasswordSet) {
		// The hash stays in the stream and the aggregate; the read model only notes the change.
		w.add(w.db.NewUpdate().Model((*UserRow)(nil)).ModelTableExpr(t.Users()).
			Set("updated_at = ?", e.Time.UTC()).Set("version = ?", e.Sequence).
			Where("id = ?", ev.UserID))
	}),
	events.TypeTokenCreated: on(func(w *script, t Tables, e events.Envelope, ev events.TokenCreated) {
		w.add(w.db.NewInsert().Model(&TokenRow{
			ID: ev.TokenID, UserID: ev.UserID, Description: ev.Description, Digest: ev.Digest,
			CreatedAt: ev.CreatedAt.UTC(), ExpiresAt: utcPtr(ev.ExpiresAt),
		}).ModelTableExpr(t.Tokens()))
		bumpVersion(w, t, ev.UserID, e.Sequence)
	}),
	events.TypeTokenRevoked: on(func(w *script, t Tables, e events.Envelope, ev events.TokenRevoked) {
		w.add(w.db.NewDelete().Model((*TokenRow)(nil)).ModelTableExpr(t.Tokens()).Where("id = ?", ev.TokenID))
		bumpVersion(w, t, ev.UserID, e.Sequence)
	}),
	events.TypeSessionStarted: on(func(w *script, t Tables, e events.Envelope, ev events.SessionStarted) {
		w.add(w.db.NewInsert().Model(&SessionRow{
			ID: ev.SessionID, UserID: ev.UserID, Digest: ev.Digest,
			CreatedAt: ev.StartedAt.UTC(), ExpiresAt: ev.ExpiresAt.UTC(),
		}).ModelTableExpr(t.Sessions()))
		bumpVersion(w, t, ev.UserID, e.Sequence)
	}),
	events.TypeSessionEnded: on(func(w *script, t Tables, e events.Envelope, ev events.SessionEnded) {
		w.add(w.db.NewDelete().Model((*SessionRow)(nil)).ModelTableExpr(t.Sessions()).Where("id = ?", ev.SessionID))
		bumpVersion(w, t, ev.UserID, e.Sequence)
	}),
	events.TypeUserDeleted: on(func(w *script, t Tables, e events.Envelope, ev events.UserDeleted) {
		w.add(w.db.NewDelete().Model((*TokenRow)(nil)).ModelTableExpr(t.Tokens()).Where("user_id = ?", ev.UserID))
		w.add(w.db.NewDelete().Model((*SessionRow)(nil)).ModelTableExpr(t.Sessions()).Where("user_id = ?", ev.UserID))
		w.add(w.db.NewDelete().Model((*UserRow)(nil)).ModelTableExpr(t.Users()).Where("id = ?", ev.UserID))
	}),
}

// bumpVersion records that the user's aggregate moved to seq without a profile change, so a
// user row's version is always its aggregate's last stream sequence.
func bumpVersion(w *script, t Tables, user uuid.UUID, seq uint64) {
	w.add(w.db.NewUpdate().Model((*UserRow)(nil)).ModelTableExpr(t.Users()).Set("version = ?", seq).Where("id = ?", user))
}

// script collects a batch's statements, rendered with their arguments inlined (as bun does
// anyway), and sends them to the database many at a time: one round trip per scriptChunk
// statements instead of one per statement, which is what makes batches fast.
type script struct {
	db  bun.IDB
	gen schema.QueryGen
	buf []byte
	n   int
	err error
}

const scriptChunk = 200

func newScript(tx bun.Tx) *script {
	return &script{db: tx, gen: tx.NewSelect().DB().QueryGen()}
}

// add renders a statement into the script.
func (w *script) add(q schema.QueryAppender) {
	if w.err != nil {
		return
	}
	b, err := q.AppendQuery(w.gen, w.buf)
	if err != nil {
		w.err = err
		return
	}
	w.buf = append(b, ";\n"...)
	w.n++
}

// flush executes what the script holds. It runs on the raw transaction, so nothing re-parses
// the rendered SQL for placeholders.
func (w *script) flush(ctx context.Context, tx bun.Tx) error {
	if w.err != nil {
		return w.err
	}
	if w.n == 0 {
		return nil
	}
	_, err := tx.Tx.ExecContext(ctx, string(w.buf))
	w.buf, w.n = w.buf[:0], 0
	return err
}

// applyBatch applies the events after the checkpoint and moves the checkpoint, in one
// transaction. It returns the checkpoint after the batch. Events at or below the checkpoint
// (redelivered, or applied by another instance sharing the database) are skipped.
func applyBatch(ctx context.Context, db *bun.DB, t Tables, batch []events.Envelope) (uint64, error) {
	var pos uint64
	err := db.RunInTx(ctx, nil, func(ctx context.Context, tx bun.Tx) error {
		var err error
		pos, err = applyBatchTx(ctx, tx, t, batch)
		return err
	})
	if err != nil && ctx.Err() == nil {
		err = diagnose(ctx, db, t, batch, err)
	}
	return pos, err
}

var errDiagnosed = errors.New("diagnosed")

// diagnose replays a failed batch one event per round trip in a transaction that is always
// rolled back, so the error names the event that failed, not just the batch.
func diagnose(ctx context.Context, db *bun.DB, t Tables, batch []events.Envelope, batchErr error) error {
	var precise error
	_ = db.RunInTx(ctx, nil, func(ctx context.Context, tx bun.Tx) error {
		_, precise = applyEvents(ctx, tx, t, batch, 1)
		return errDiagnosed
	})
	if precise != nil {
		return precise
	}
	return batchErr
}

// applyBatchTx is applyBatch inside the caller's transaction.
func applyBatchTx(ctx context.Context, tx bun.Tx, t Tables, batch []events.Envelope) (uint64, error) {
	return applyEvents(ctx, tx, t, batch, scriptChunk)
}

// applyEvents applies the batch, sending the script every chunk statements (chunk 1: after
// every event, so an error names its event).
func applyEvents(ctx context.Context, tx bun.Tx, t Tables, batch []events.Envelope, chunk int) (uint64, error) {
	var pos uint64
	q := tx.NewSelect().Model((*checkpointRow)(nil)).Column("position").Where("name = ?", t.Checkpoint())
	if isPG(tx) {
		q = q.For("UPDATE") // serializes instances that share the database
	}
	if err := q.Scan(ctx, &pos); err != nil {
		return 0, fmt.Errorf("read checkpoint %s: %w", t.Checkpoint(), err)
	}
	last := pos
	audit := make([]AuditRow, 0, len(batch))
	w := newScript(tx)
	first := uint64(0)
	for _, e := range batch {
		if e.Sequence <= pos {
			continue
		}
		if first == 0 {
			first = e.Sequence
		}
		if r, ok := reducers[e.Type]; ok {
			if err := r(w, t, e); err != nil {
				return 0, fmt.Errorf("apply %s (seq %d): %w", e.Type, e.Sequence, err)
			}
		}
		if w.n >= chunk {
			if err := w.flush(ctx, tx); err != nil {
				if first == e.Sequence {
					return 0, fmt.Errorf("apply %s (seq %d): %w", e.Type, e.Sequence, err)
				}
				return 0, fmt.Errorf("apply events %d..%d: %w", first, e.Sequence, err)
			}
			first = 0
		}
		row, err := auditRow(e)
		if err != nil {
			return 0, err
		}
		audit = append(audit, row)
		last = e.Sequence
	}
	if last == pos {
		return pos, nil
	}
	if err := w.flush(ctx, tx); err != nil {
		return 0, fmt.Errorf("apply events up to %d: %w", last, err)
	}
	if _, err := tx.NewInsert().Model(&audit).ModelTableExpr(t.Audit()).Exec(ctx); err != nil {
		return 0, fmt.Errorf("audit log: %w", err)
	}
	_, err := tx.NewUpdate().Model((*checkpointRow)(nil)).
		Set("position = ?", last).Set("updated_at = ?", timeNow().UTC()).
		Where("name = ?", t.Checkpoint()).Exec(ctx)
	if err != nil {
		return 0, err
	}
	return last, nil
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
	var owner struct {
		UserID *uuid.UUID `json:"user_id"`
	}
	if json.Unmarshal(data, &owner) == nil && owner.UserID != nil {
		row.UserID = owner.UserID
	}
	return row, nil
}
