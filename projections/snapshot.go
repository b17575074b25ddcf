package projections

import (
	"context"
	"database/sql"
	"time"

	"github.com/uptrace/bun"
)

// Checkpoint is one projection's position.
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

// Snapshot is a consistent copy of one generation of read models, for verification.
type Snapshot struct {
	Position   uint64
	Users      []UserRow
	Tokens     []TokenRow
	Sessions   []SessionRow
	AuditCount int
	AuditMax   uint64
}

// TakeSnapshot reads every table of a generation in one read-only, repeatable-read transaction,
// so a projector running meanwhile cannot make the copy inconsistent.
func TakeSnapshot(ctx context.Context, db *bun.DB, t Tables) (Snapshot, error) {
	var s Snapshot
	opts := &sql.TxOptions{ReadOnly: true}
	if isPG(db) {
		opts.Isolation = sql.LevelRepeatableRead
	}
	err := db.RunInTx(ctx, opts, func(ctx context.Context, tx bun.Tx) error {
		if err := tx.NewSelect().Model((*checkpointRow)(nil)).Column("position").Where("name = ?", t.Checkpoint()).Scan(ctx, &s.Position); err != nil {
			return err
		}
		if err := tx.NewSelect().Model(&s.Users).ModelTableExpr(t.Users() + " AS u").Scan(ctx); err != nil {
			return err
		}
		if err := tx.NewSelect().Model(&s.Tokens).ModelTableExpr(t.Tokens() + " AS t").Scan(ctx); err != nil {
			return err
		}
		if err := tx.NewSelect().Model(&s.Sessions).ModelTableExpr(t.Sessions() + " AS s").Scan(ctx); err != nil {
			return err
		}
		var maxSeq sql.NullInt64
		if err := tx.NewSelect().TableExpr(t.Audit()).ColumnExpr("COUNT(*), MAX(seq)").Scan(ctx, &s.AuditCount, &maxSeq); err != nil {
			return err
		}
		s.AuditMax = uint64(max(maxSeq.Int64, 0))
		return nil
	})
	return s, err
}
