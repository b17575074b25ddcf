package engine

import (
	"context"
	"fmt"
	"time"

	"github.com/uptrace/bun"

	"github.com/identityd/identityd/projections/sqldb"
)

// Tables names one generation of the read-model tables. The suffix carries the schema version
// (and, for a rebuild, a generation), so the projections can be rebuilt into fresh tables next
// to the live ones and switched over when they have caught up.
type Tables struct {
	Suffix string
}

// CurrentTables are the tables of this build's read-model schema.
var CurrentTables = Tables{Suffix: "v1"}

// Name is the full name of a projection's table in this generation.
func (t Tables) Name(base string) string { return base + "_" + t.Suffix }

// Checkpoint is the generation's name in the checkpoint table. Every projection of the
// generation is applied in the same transaction and shares this one checkpoint; the name is
// the one the first (users-only) build gave it, kept so existing databases carry on.
func (t Tables) Checkpoint() string { return "users_" + t.Suffix }

// next is the generation a rebuild of t builds beside it.
func (t Tables) next() Tables { return Tables{Suffix: t.Suffix + "_next"} }

// checkpointRow is how far a generation has applied the stream. It is updated in the same
// transaction as the rows, which is what makes application exactly-once in effect.
type checkpointRow struct {
	bun.BaseModel `bun:"table:projection_checkpoints"`

	Name      string    `bun:"name,pk"`
	Position  uint64    `bun:"position,notnull"`
	UpdatedAt time.Time `bun:"updated_at,notnull"`
}

var timeNow = time.Now

// CreateSchema creates the tables and indexes of one generation of projs (idempotent) and its
// checkpoint row.
func CreateSchema(ctx context.Context, db *bun.DB, projs []Projection, t Tables) error {
	if err := createTables(ctx, db, projs, t); err != nil {
		return err
	}
	return createIndexes(ctx, db, indexDefs(projs, t))
}

// createIndexes creates indexes (idempotent), one after the other.
func createIndexes(ctx context.Context, db bun.IDB, defs []indexDef) error {
	for _, idx := range defs {
		if _, err := db.ExecContext(ctx, idx.sql); err != nil {
			return fmt.Errorf("%s: %w", idx.sql, err)
		}
	}
	return nil
}

// createTables creates a generation's tables and checkpoint row (idempotent), and migrates
// tables created by older builds.
func createTables(ctx context.Context, db *bun.DB, projs []Projection, t Tables) error {
	for _, p := range projs {
		for _, tb := range p.Tables() {
			name := tb.name(t)
			if _, err := db.NewCreateTable().Model(tb.Model).ModelTableExpr(name).IfNotExists().Exec(ctx); err != nil {
				return fmt.Errorf("create table %s: %w", name, err)
			}
		}
	}
	if _, err := db.NewCreateTable().Model((*checkpointRow)(nil)).IfNotExists().Exec(ctx); err != nil {
		return fmt.Errorf("create table projection_checkpoints: %w", err)
	}
	for _, p := range projs {
		for _, tb := range p.Tables() {
			if tb.Migrate != nil {
				if err := tb.Migrate(ctx, db, tb.name(t)); err != nil {
					return err
				}
			}
		}
	}
	_, err := db.NewInsert().Model(&checkpointRow{Name: t.Checkpoint(), UpdatedAt: time.Now().UTC()}).
		On("CONFLICT (name) DO NOTHING").Exec(ctx)
	return err
}

// indexDef is one index of a generation; its name is derived from its table's.
type indexDef struct {
	table, name, sql string
}

// indexDefs lists the indexes of a generation's versioned tables (the shared ones' with
// them), in a fixed order.
func indexDefs(projs []Projection, t Tables) []indexDef {
	var out []indexDef
	for _, p := range projs {
		for _, tb := range p.Tables() {
			table := tb.name(t)
			for _, idx := range tb.Indexes {
				kind := "INDEX"
				if idx.Unique {
					kind = "UNIQUE INDEX"
				}
				name := table + "_" + idx.Name
				out = append(out, indexDef{table: table, name: name,
					sql: fmt.Sprintf("CREATE %s IF NOT EXISTS %s ON %s %s", kind, name, table, idx.Columns)})
			}
		}
	}
	return out
}

// versioned lists the tables of a generation that a rebuild replaces, in a fixed order.
func versioned(projs []Projection, t Tables) []string {
	var out []string
	for _, p := range projs {
		for _, tb := range p.Tables() {
			if !tb.Shared {
				out = append(out, tb.name(t))
			}
		}
	}
	return out
}

// versionedIndexes are the indexes of a generation's versioned tables.
func versionedIndexes(projs []Projection, t Tables) []indexDef {
	tables := map[string]bool{}
	for _, name := range versioned(projs, t) {
		tables[name] = true
	}
	var out []indexDef
	for _, idx := range indexDefs(projs, t) {
		if tables[idx.table] {
			out = append(out, idx)
		}
	}
	return out
}

// Position is how far generation t has applied the stream (0 before it has a checkpoint).
func Position(ctx context.Context, db bun.IDB, t Tables) (uint64, error) {
	var pos uint64
	err := db.NewSelect().Model((*checkpointRow)(nil)).Column("position").Where("name = ?", t.Checkpoint()).Scan(ctx, &pos)
	if isNoRows(err) {
		return 0, nil
	}
	return pos, err
}

// isPG reports whether db speaks PostgreSQL.
func isPG(db bun.IDB) bool { return sqldb.IsPG(db) }
