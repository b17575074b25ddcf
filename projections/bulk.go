package projections

import (
	"context"
	"fmt"

	"github.com/uptrace/bun"
)

// bulkChunk is the number of rows per multi-row INSERT.
const bulkChunk = 1000

// insertAll writes rows in multi-row INSERTs of bulkChunk rows.
func insertAll[T any](ctx context.Context, db bun.IDB, table string, rows []T) error {
	for len(rows) > 0 {
		n := min(bulkChunk, len(rows))
		chunk := rows[:n]
		if _, err := db.NewInsert().Model(&chunk).ModelTableExpr(table).Exec(ctx); err != nil {
			return fmt.Errorf("bulk insert into %s: %w", table, err)
		}
		rows = rows[n:]
	}
	return nil
}

func values[K comparable, V any](m map[K]*V) []V {
	out := make([]V, 0, len(m))
	for _, v := range m {
		out = append(out, *v)
	}
	return out
}

// bulkLoad replays the stream from sequence 1 to end into a generation's empty tables: audit
// rows are inserted as they come, the folded users, tokens and sessions once at the end, and
// the generation's checkpoint is set to the last event read. It returns that position and the
// number of events read.
func bulkLoad(ctx context.Context, db *bun.DB, t Tables, read StreamReader, end uint64, batch int, progress func(pos, end uint64)) (uint64, uint64, error) {
	m := newFold()
	var pos, n uint64
	audit := make([]AuditRow, 0, bulkChunk)
	for pos < end {
		evs, err := read(ctx, pos+1, batch)
		if err != nil {
			return 0, 0, fmt.Errorf("read stream at %d: %w", pos+1, err)
		}
		if len(evs) == 0 {
			break
		}
		for _, e := range evs {
			if e.Sequence > end {
				break
			}
			if err := m.apply(e); err != nil {
				return 0, 0, err
			}
			row, err := auditRow(e)
			if err != nil {
				return 0, 0, err
			}
			audit = append(audit, row)
			pos = e.Sequence
			n++
		}
		if len(audit) >= bulkChunk {
			if err := insertAll(ctx, db, t.Audit(), audit); err != nil {
				return 0, 0, err
			}
			audit = audit[:0]
		}
		if progress != nil {
			progress(pos, end)
		}
	}
	err := db.RunInTx(ctx, nil, func(ctx context.Context, tx bun.Tx) error {
		for _, step := range []func() error{
			func() error { return insertAll(ctx, tx, t.Audit(), audit) },
			func() error { return insertAll(ctx, tx, t.Users(), values(m.users)) },
			func() error { return insertAll(ctx, tx, t.Tokens(), values(m.tokens)) },
			func() error { return insertAll(ctx, tx, t.Sessions(), values(m.sessions)) },
		} {
			if err := step(); err != nil {
				return err
			}
		}
		_, err := tx.NewUpdate().Model((*checkpointRow)(nil)).Set("position = ?", pos).
			Set("updated_at = ?", timeNow().UTC()).Where("name = ?", t.Checkpoint()).Exec(ctx)
		return err
	})
	return pos, n, err
}
