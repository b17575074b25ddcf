package engine

import (
	"context"
	"database/sql"
	"time"

	"github.com/uptrace/bun"
)

// Checkpoint is one generation's position, shared by all its projections.
type Checkpoint struct {
	Name      string    `json:"projection"`
	Position  uint64    `json:"position"`
	UpdatedAt time.Time `json:"updated_at"`
}

// Checkpoints lists every projection's position (a rebuild in progress shows as "<name>_next").
func Checkpoints(ctx context.Context, db *bun.DB) ([]Checkpoint, error) {
	var rows []checkpointRow
	if err := db.NewSelect().Model(&rows).Order("name").Scan(ctx); err != nil {
		return nil, err
	}
	out := make([]Checkpoint, len(rows))
	for i, r := range rows {
		out[i] = Checkpoint{Name: r.Name, Position: r.Position, UpdatedAt: r.UpdatedAt.UTC()}
	}
	return out, nil
}

// ReadConsistent runs read on one generation's tables in one read-only, repeatable-read
// transaction, with the generation's checkpoint as read in it, so a projector running meanwhile
// cannot make what read sees inconsistent (Verify, snapshots).
func ReadConsistent(ctx context.Context, db *bun.DB, t Tables, read func(ctx context.Context, tx bun.Tx, pos uint64) error) error {
	opts := &sql.TxOptions{ReadOnly: true}
	if isPG(db) {
		opts.Isolation = sql.LevelRepeatableRead
	}
	return db.RunInTx(ctx, opts, func(ctx context.Context, tx bun.Tx) error {
		var pos uint64
		if err := tx.NewSelect().Model((*checkpointRow)(nil)).Column("position").Where("name = ?", t.Checkpoint()).Scan(ctx, &pos); err != nil {
			return err
		}
		return read(ctx, tx, pos)
	})
}
