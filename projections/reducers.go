package projections

import (
	"context"
	"encoding/json"
	"fmt"

	"github.com/google/uuid"
	"github.com/uptrace/bun"

	"github.com/identityd/identityd/events"
)

// reducer applies one event to the read model inside the batch's transaction.
type reducer func(ctx context.Context, tx bun.IDB, t Tables, e events.Envelope) error

// on adapts a reducer of one payload type to the table's signature.
func on[T events.Event](f func(ctx context.Context, tx bun.IDB, t Tables, e events.Envelope, ev T) error) reducer {
	return func(ctx context.Context, tx bun.IDB, t Tables, e events.Envelope) error {
		ev, ok := e.Data.(T)
		if !ok {
			return fmt.Errorf("%w: %s carries %T", errPoison, e.Type, e.Data)
		}
		return f(ctx, tx, t, e, ev)
	}
}

// reducers is the users projection: event type → change to the read model. Event types not
// listed (email claims) do not concern it.
var reducers = map[events.Type]reducer{
	events.TypeUserRegistered: on(func(ctx context.Context, tx bun.IDB, t Tables, e events.Envelope, ev events.UserRegistered) error {
		_, err := tx.NewInsert().Model(&UserRow{
			ID: ev.UserID, Email: ev.Email, Name: ev.Name, PersonalOrgSlug: ev.PersonalOrgSlug,
			CreatedAt: ev.RegisteredAt.UTC(), UpdatedAt: e.Time.UTC(), Version: e.Sequence,
		}).ModelTableExpr(t.Users()).Exec(ctx)
		return err
	}),
	events.TypeUserRenamed: on(func(ctx context.Context, tx bun.IDB, t Tables, e events.Envelope, ev events.UserRenamed) error {
		_, err := tx.NewUpdate().Model((*UserRow)(nil)).ModelTableExpr(t.Users()).
			Set("name = ?", ev.Name).Set("updated_at = ?", e.Time.UTC()).Set("version = ?", e.Sequence).
			Where("id = ?", ev.UserID).Exec(ctx)
		return err
	}),
	events.TypePasswordSet: on(func(ctx context.Context, tx bun.IDB, t Tables, e events.Envelope, ev events.PasswordSet) error {
		// The hash stays in the stream and the aggregate; the read model only notes the change.
		_, err := tx.NewUpdate().Model((*UserRow)(nil)).ModelTableExpr(t.Users()).
			Set("updated_at = ?", e.Time.UTC()).Set("version = ?", e.Sequence).
			Where("id = ?", ev.UserID).Exec(ctx)
		return err
	}),
	events.TypeTokenCreated: on(func(ctx context.Context, tx bun.IDB, t Tables, e events.Envelope, ev events.TokenCreated) error {
		_, err := tx.NewInsert().Model(&TokenRow{
			ID: ev.TokenID, UserID: ev.UserID, Description: ev.Description, Digest: ev.Digest,
			CreatedAt: ev.CreatedAt.UTC(), ExpiresAt: utcPtr(ev.ExpiresAt),
		}).ModelTableExpr(t.Tokens()).Exec(ctx)
		if err != nil {
			return err
		}
		return bumpVersion(ctx, tx, t, ev.UserID, e.Sequence)
	}),
	events.TypeTokenRevoked: on(func(ctx context.Context, tx bun.IDB, t Tables, e events.Envelope, ev events.TokenRevoked) error {
		_, err := tx.NewDelete().Model((*TokenRow)(nil)).ModelTableExpr(t.Tokens()).Where("id = ?", ev.TokenID).Exec(ctx)
		if err != nil {
			return err
		}
		return bumpVersion(ctx, tx, t, ev.UserID, e.Sequence)
	}),
	events.TypeSessionStarted: on(func(ctx context.Context, tx bun.IDB, t Tables, e events.Envelope, ev events.SessionStarted) error {
		_, err := tx.NewInsert().Model(&SessionRow{
			ID: ev.SessionID, UserID: ev.UserID, Digest: ev.Digest,
			CreatedAt: ev.StartedAt.UTC(), ExpiresAt: ev.ExpiresAt.UTC(),
		}).ModelTableExpr(t.Sessions()).Exec(ctx)
		if err != nil {
			return err
		}
		return bumpVersion(ctx, tx, t, ev.UserID, e.Sequence)
	}),
	events.TypeSessionEnded: on(func(ctx context.Context, tx bun.IDB, t Tables, e events.Envelope, ev events.SessionEnded) error {
		_, err := tx.NewDelete().Model((*SessionRow)(nil)).ModelTableExpr(t.Sessions()).Where("id = ?", ev.SessionID).Exec(ctx)
		if err != nil {
			return err
		}
		return bumpVersion(ctx, tx, t, ev.UserID, e.Sequence)
	}),
	events.TypeUserDeleted: on(func(ctx context.Context, tx bun.IDB, t Tables, e events.Envelope, ev events.UserDeleted) error {
		for _, q := range []*bun.DeleteQuery{
			tx.NewDelete().Model((*TokenRow)(nil)).ModelTableExpr(t.Tokens()).Where("user_id = ?", ev.UserID),
			tx.NewDelete().Model((*SessionRow)(nil)).ModelTableExpr(t.Sessions()).Where("user_id = ?", ev.UserID),
			tx.NewDelete().Model((*UserRow)(nil)).ModelTableExpr(t.Users()).Where("id = ?", ev.UserID),
		} {
			if _, err := q.Exec(ctx); err != nil {
				return err
			}
		}
		return nil
	}),
}

// bumpVersion records that the user's aggregate moved to seq without a profile change, so a
// user row's version is always its aggregate's last stream sequence.
func bumpVersion(ctx context.Context, tx bun.IDB, t Tables, user uuid.UUID, seq uint64) error {
	_, err := tx.NewUpdate().Model((*UserRow)(nil)).ModelTableExpr(t.Users()).
		Set("version = ?", seq).Where("id = ?", user).Exec(ctx)
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
	return pos, err
}

// applyBatchTx is applyBatch inside the caller's transaction.
func applyBatchTx(ctx context.Context, tx bun.Tx, t Tables, batch []events.Envelope) (uint64, error) {
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
	for _, e := range batch {
		if e.Sequence <= pos {
			continue
		}
		if r, ok := reducers[e.Type]; ok {
			if err := r(ctx, tx, t, e); err != nil {
				return 0, fmt.Errorf("apply %s (seq %d): %w", e.Type, e.Sequence, err)
			}
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
