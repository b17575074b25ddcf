package engine

import (
	"context"
	"database/sql"
	"errors"
	"fmt"

	"github.com/uptrace/bun"
	"github.com/uptrace/bun/schema"

	"github.com/identityd/identityd/events"
)

// applyBatch applies the events after the checkpoint and moves the checkpoint, in one
// transaction. It returns the checkpoint after the batch. Events at or below the checkpoint
// (redelivered, or applied by another instance sharing the database) are skipped.
func applyBatch(ctx context.Context, db *bun.DB, projs []Projection, t Tables, batch []events.Envelope) (uint64, error) {
	pos, _, err := applyBatchReplays(ctx, db, projs, t, batch)
	return pos, err
}

// ApplyBatch is applyBatch for callers that hold the events themselves instead of reading
// them through a Projector: tests that play the projector.
func ApplyBatch(ctx context.Context, db *bun.DB, projs []Projection, t Tables, batch []events.Envelope) (uint64, error) {
	return applyBatch(ctx, db, projs, t, batch)
}

// applyBatchReplays is applyBatch that also returns the stream positions of the events it
// refused as replays (see dropReplays).
func applyBatchReplays(ctx context.Context, db *bun.DB, projs []Projection, t Tables, batch []events.Envelope) (uint64, []uint64, error) {
	var pos uint64
	var replays []uint64
	err := db.RunInTx(ctx, nil, func(ctx context.Context, tx bun.Tx) error {
		var err error
		pos, replays, err = applyEvents(ctx, tx, projs, t, batch, len(batch))
		return err
	})
	if err != nil && ctx.Err() == nil {
		err = diagnose(ctx, db, projs, t, batch, err)
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
func diagnose(ctx context.Context, db *bun.DB, projs []Projection, t Tables, batch []events.Envelope, batchErr error) error {
	var precise error
	_ = db.RunInTx(ctx, nil, func(ctx context.Context, tx bun.Tx) error {
		_, _, precise = applyEvents(ctx, tx, projs, t, batch, 1)
		return errDiagnosed
	})
	if precise != nil {
		return precise
	}
	return batchErr
}

// applyBatchTx is applyBatch inside the caller's transaction.
func applyBatchTx(ctx context.Context, tx bun.Tx, projs []Projection, t Tables, batch []events.Envelope) (uint64, error) {
	pos, _, err := applyEvents(ctx, tx, projs, t, batch, len(batch))
	return pos, err
}

// applyEvents applies the batch chunk events at a time: each chunk is folded in memory from
// the rows it touches and written back in a few bulk statements (chunk 1: one event at a time,
// so an error names its event).
func applyEvents(ctx context.Context, tx bun.Tx, projs []Projection, t Tables, batch []events.Envelope, chunk int) (uint64, []uint64, error) {
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
	fresh, replays, err := dropReplays(ctx, tx, projs, t, fresh)
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
		err := applyChunk(ctx, tx, w, projs, t, part)
		if err == nil && len(fresh) == 0 {
			pos = last
			err = w.Add(ctx, tx.NewUpdate().Model((*checkpointRow)(nil)).
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
// signature) is unique, and the projections that are ReplayGuards (the audit log) keep the id
// of every applied event; a repeat within the batch counts too. It returns the remaining
// events and the positions of those dropped.
func dropReplays(ctx context.Context, tx bun.Tx, projs []Projection, t Tables, evs []events.Envelope) ([]events.Envelope, []uint64, error) {
	ids := make([]string, len(evs))
	for i, e := range evs {
		ids[i] = e.ID
	}
	seen := make(map[string]bool, len(evs))
	for _, p := range projs {
		g, ok := p.(ReplayGuard)
		if !ok {
			continue
		}
		applied, err := g.Applied(ctx, tx, t, ids)
		if err != nil {
			return nil, nil, fmt.Errorf("look up event ids: %w", err)
		}
		for _, id := range applied {
			seen[id] = true
		}
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
// every round trip waits for both processes to be scheduled again, and each write's caller
// waits for the projector's transaction (README, "Performance"). Elsewhere (SQLite) each
// statement runs as it is added.
type statements struct {
	pg   bool
	sqls []byte
}

// Query is a bun query that statements can run now or render for later.
type Query interface {
	AppendQuery(gen schema.QueryGen, b []byte) ([]byte, error)
	DB() *bun.DB
	Exec(ctx context.Context, dest ...any) (sql.Result, error)
}

// Add runs q (not PostgreSQL) or queues it for flush.
func (w *statements) Add(ctx context.Context, q Query) error {
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

// applyChunk folds events over the rows they touch, projection by projection, and writes the
// result: each projection's statements in the order the projections were given.
func applyChunk(ctx context.Context, tx bun.Tx, w *statements, projs []Projection, t Tables, evs []events.Envelope) error {
	folds := make([]Fold, len(projs))
	for i, p := range projs {
		folds[i] = p.NewFold(t)
		if err := folds[i].Load(ctx, tx, evs); err != nil {
			return fmt.Errorf("%s: %w", p.Name(), err)
		}
	}
	for _, e := range evs {
		for _, f := range folds {
			if err := f.Apply(e); err != nil {
				return err
			}
		}
	}
	for _, f := range folds {
		if err := f.Write(ctx, tx, w); err != nil {
			return err
		}
	}
	return nil
}

// isNoRows reports a query that matched no row.
func isNoRows(err error) bool { return errors.Is(err, sql.ErrNoRows) }
