package projections

import (
	"context"
	"net/url"
	"time"

	"github.com/uptrace/bun"

	"github.com/identityd/identityd/events"
	"github.com/identityd/identityd/projections/engine"
	"github.com/identityd/identityd/projections/sqldb"
)

// The tests of the registered read models (users, audit) drive the engine through its
// public entry points; these are the names they use.

func applyBatch(ctx context.Context, db *bun.DB, t Tables, batch []events.Envelope) (uint64, error) {
	return ApplyBatch(ctx, db, t, batch)
}

// tableOf is a read model's table in generation g.
func tableOf(g Tables, base string) string { return g.Name(base) }

// checkpointRow reads and writes the checkpoint table directly.
type checkpointRow struct {
	bun.BaseModel `bun:"table:projection_checkpoints"`

	Name      string    `bun:"name,pk"`
	Position  uint64    `bun:"position,notnull"`
	UpdatedAt time.Time `bun:"updated_at,notnull"`
}

// skipPast moves the checkpoint past seq, as the projector does for a poison event.
func skipPast(ctx context.Context, db *bun.DB, t Tables, seq uint64) error {
	_, err := db.NewUpdate().Model((*checkpointRow)(nil)).Set("position = ?", seq).Set("updated_at = ?", time.Now().UTC()).
		Where("name = ?", t.Checkpoint()).Where("position < ?", seq).Exec(ctx)
	return err
}

var _ = engine.CurrentTables

func isPG(db bun.IDB) bool { return sqldb.IsPG(db) }

func redact(raw string) string {
	u, err := url.Parse(raw)
	if err != nil {
		return "(unparsable URL)"
	}
	return u.Redacted()
}
