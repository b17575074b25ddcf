package projections

import (
	"context"
	"fmt"
	"strings"
	"time"

	"github.com/google/uuid"
	"github.com/uptrace/bun"
)

// Tables names one generation of the read-model tables. The suffix carries the schema version
// (and, for a rebuild, a generation), so a projection can be rebuilt into fresh tables next to
// the live ones and switched over when it has caught up.
type Tables struct {
	Suffix string
}

// CurrentTables are the tables of this build's read-model schema.
var CurrentTables = Tables{Suffix: "v1"}

// Users is the users table.
func (t Tables) Users() string { return "users_" + t.Suffix }

// Tokens is the API tokens table.
func (t Tables) Tokens() string { return "api_tokens_" + t.Suffix }

// Sessions is the sessions table.
func (t Tables) Sessions() string { return "sessions_" + t.Suffix }

// Audit is the audit log table: every event with its metadata, secrets redacted.
func (t Tables) Audit() string { return "audit_events_" + t.Suffix }

// Checkpoint is the projection's name in the checkpoint table.
func (t Tables) Checkpoint() string { return "users_" + t.Suffix }

// UserRow is a user in the read model.
type UserRow struct {
	bun.BaseModel `bun:"table:users_v1,alias:u"`

	ID              uuid.UUID `bun:"id,pk,type:uuid"`
	Email           string    `bun:"email,notnull"`
	Name            string    `bun:"name,notnull"`
	PersonalOrgSlug string    `bun:"personal_org_slug,notnull"`
	CreatedAt       time.Time `bun:"created_at,notnull"`
	UpdatedAt       time.Time `bun:"updated_at,notnull"`
	// Version is the stream sequence of the user aggregate's last event (profile, password,
	// token or session), the same number the domain expects when it appends.
	Version uint64 `bun:"version,notnull"`
	// Admin: the user holds administrator rights (identityd.user.admin_granted, not revoked
	// since). Authorization reads it by user id, never by e-mail. Last, where addAdminColumn
	// puts it in tables created before it existed.
	Admin bool `bun:"admin,notnull"`
}

// TokenRow is a live (not revoked) API token. Only the digest of the secret is stored.
type TokenRow struct {
	bun.BaseModel `bun:"table:api_tokens_v1,alias:t"`

	ID          uuid.UUID  `bun:"id,pk,type:uuid"`
	UserID      uuid.UUID  `bun:"user_id,notnull,type:uuid"`
	Description string     `bun:"description,notnull"`
	Digest      string     `bun:"digest,notnull"`
	CreatedAt   time.Time  `bun:"created_at,notnull"`
	ExpiresAt   *time.Time `bun:"expires_at"`
}

// SessionRow is a live session. Only the digest of the secret is stored.
type SessionRow struct {
	bun.BaseModel `bun:"table:sessions_v1,alias:s"`

	ID        uuid.UUID `bun:"id,pk,type:uuid"`
	UserID    uuid.UUID `bun:"user_id,notnull,type:uuid"`
	Digest    string    `bun:"digest,notnull"`
	CreatedAt time.Time `bun:"created_at,notnull"`
	ExpiresAt time.Time `bun:"expires_at,notnull"`
}

// AuditRow is one event in the audit log: who did what, when, from where. Secret fields of the
// payload (password hashes, token digests) are redacted.
type AuditRow struct {
	bun.BaseModel `bun:"table:audit_events_v1,alias:a"`

	Sequence      uint64     `bun:"seq,pk"`
	EventID       string     `bun:"event_id,notnull"`
	Type          string     `bun:"type,notnull"`
	Aggregate     string     `bun:"aggregate,notnull"`
	UserID        *uuid.UUID `bun:"user_id,type:uuid"`
	Actor         string     `bun:"actor,notnull"`
	RequestID     string     `bun:"request_id,notnull"`
	SourceIP      string     `bun:"source_ip,notnull"`
	UserAgent     string     `bun:"user_agent,notnull"`
	OccurredAt    time.Time  `bun:"occurred_at,notnull"`
	SchemaVersion int        `bun:"schema_version,notnull"`
	Data          string     `bun:"data,notnull"`
}

// checkpointRow is how far a projection has applied the stream. It is updated in the same
// transaction as the rows, which is what makes application exactly-once in effect.
type checkpointRow struct {
	bun.BaseModel `bun:"table:projection_checkpoints"`

	Name      string    `bun:"name,pk"`
	Position  uint64    `bun:"position,notnull"`
	UpdatedAt time.Time `bun:"updated_at,notnull"`
}

// tokenUsageRow is when a token or session was last used. It is not event-sourced (an event per
// request would flood the stream) and not versioned, so it survives a rebuild.
type tokenUsageRow struct {
	bun.BaseModel `bun:"table:token_usage,alias:tu"`

	TokenID    uuid.UUID `bun:"token_id,pk,type:uuid"`
	LastUsedAt time.Time `bun:"last_used_at,notnull"`
}

// CreateSchema creates the tables and indexes of one generation (idempotent) and its
// checkpoint row.
func CreateSchema(ctx context.Context, db *bun.DB, t Tables) error {
	if err := createTables(ctx, db, t); err != nil {
		return err
	}
	return createIndexes(ctx, db, t)
}

// createIndexes creates a generation's secondary indexes (idempotent). A rebuild creates them
// after the bulk of the replay: maintaining them row by row would cost more.
func createIndexes(ctx context.Context, db bun.IDB, t Tables) error {
	for _, idx := range indexDefs(t) {
		if _, err := db.ExecContext(ctx, idx.sql); err != nil {
			return fmt.Errorf("%s: %w", idx.sql, err)
		}
	}
	return nil
}

// createTables creates a generation's tables and checkpoint row (idempotent).
func createTables(ctx context.Context, db *bun.DB, t Tables) error {
	models := []struct {
		model any
		table string
	}{
		{(*UserRow)(nil), t.Users()},
		{(*TokenRow)(nil), t.Tokens()},
		{(*SessionRow)(nil), t.Sessions()},
		{(*AuditRow)(nil), t.Audit()},
		{(*checkpointRow)(nil), "projection_checkpoints"},
		{(*tokenUsageRow)(nil), "token_usage"},
	}
	for _, m := range models {
		if _, err := db.NewCreateTable().Model(m.model).ModelTableExpr(m.table).IfNotExists().Exec(ctx); err != nil {
			return fmt.Errorf("create table %s: %w", m.table, err)
		}
	}
	if err := addAdminColumn(ctx, db, t); err != nil {
		return err
	}
	_, err := db.NewInsert().Model(&checkpointRow{Name: t.Checkpoint(), UpdatedAt: time.Now().UTC()}).
		On("CONFLICT (name) DO NOTHING").Exec(ctx)
	return err
}

// addAdminColumn adds users.admin to a users table created before the column existed. The
// tables need no new generation (and no replay) for it: the streams such tables were built
// from were written by builds without administrator events, so false is what a rebuild would
// store in every row.
func addAdminColumn(ctx context.Context, db *bun.DB, t Tables) error {
	if isPG(db) {
		_, err := db.ExecContext(ctx, "ALTER TABLE "+t.Users()+" ADD COLUMN IF NOT EXISTS admin BOOLEAN NOT NULL DEFAULT FALSE")
		return err
	}
	var n int
	if err := db.NewRaw("SELECT COUNT(*) FROM pragma_table_info(?) WHERE name = 'admin'", t.Users()).Scan(ctx, &n); err != nil {
		return fmt.Errorf("columns of %s: %w", t.Users(), err)
	}
	if n > 0 {
		return nil
	}
	_, err := db.ExecContext(ctx, "ALTER TABLE "+t.Users()+" ADD COLUMN admin BOOLEAN NOT NULL DEFAULT FALSE")
	if err != nil && strings.Contains(err.Error(), "duplicate column name") {
		return nil // another process added it meanwhile
	}
	return err
}

// indexDef is one index of a generation; its name is derived from its table's.
type indexDef struct {
	name, sql string
}

// indexDefs lists a generation's indexes, in a fixed order.
func indexDefs(t Tables) []indexDef {
	defs := []struct {
		table, suffix, def string
		unique             bool
	}{
		{t.Users(), "email", "(email)", true},
		{t.Tokens(), "digest", "(digest)", true},
		{t.Tokens(), "user", "(user_id, created_at)", false},
		{t.Sessions(), "digest", "(digest)", true},
		{t.Sessions(), "user", "(user_id)", false},
		{t.Audit(), "user", "(user_id, seq)", false},
		{t.Audit(), "type", "(type, seq)", false},
		{t.Audit(), "actor", "(actor, seq)", false},
		{t.Audit(), "time", "(occurred_at)", false},
		{t.Audit(), "event", "(event_id)", true}, // each event is applied once: dropReplays
	}
	out := make([]indexDef, len(defs))
	for i, d := range defs {
		kind := "INDEX"
		if d.unique {
			kind = "UNIQUE INDEX"
		}
		name := d.table + "_" + d.suffix
		out[i] = indexDef{name: name, sql: fmt.Sprintf("CREATE %s IF NOT EXISTS %s ON %s %s", kind, name, d.table, d.def)}
	}
	return out
}
