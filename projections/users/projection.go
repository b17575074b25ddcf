package users

import (
	"context"
	"fmt"
	"strings"
	"time"

	"github.com/google/uuid"
	"github.com/uptrace/bun"

	"github.com/identityd/identityd/events"
	"github.com/identityd/identityd/projections/engine"
	"github.com/identityd/identityd/projections/sqldb"
)

// Base names of the projection's tables (engine.Tables.Name adds the generation).
const (
	usersTable    = "users"
	tokensTable   = "api_tokens"
	sessionsTable = "sessions"
	usageTable    = "token_usage"
)

// Projection is the users-and-credentials read model for the engine: users, their live API
// tokens and sessions, and (not event-sourced) when each credential was last used.
type Projection struct{}

var (
	_ engine.Projection = Projection{}
	_ engine.Checker    = Projection{}
)

// Name implements engine.Projection.
func (Projection) Name() string { return "users" }

// Tables implements engine.Projection.
func (Projection) Tables() []engine.Table {
	return []engine.Table{
		{Name: usersTable, Model: (*UserRow)(nil), Migrate: addAdminColumn,
			Indexes: []engine.Index{{Name: "email", Columns: "(email)", Unique: true}}},
		{Name: tokensTable, Model: (*TokenRow)(nil), Indexes: []engine.Index{
			{Name: "digest", Columns: "(digest)", Unique: true},
			{Name: "user", Columns: "(user_id, created_at)"},
		}},
		{Name: sessionsTable, Model: (*SessionRow)(nil), Indexes: []engine.Index{
			{Name: "digest", Columns: "(digest)", Unique: true},
			{Name: "user", Columns: "(user_id)"},
		}},
		{Name: usageTable, Model: (*tokenUsageRow)(nil), Shared: true},
	}
}

// NewFold implements engine.Projection.
func (Projection) NewFold(g engine.Tables) engine.Fold { return newFold(g) }

// ownerOf is the user an event's aggregate belongs to, if it is a user event.
func ownerOf(e events.Envelope) (uuid.UUID, bool) {
	if e.Data.Aggregate().Kind != "user" {
		return uuid.Nil, false
	}
	id, err := uuid.Parse(e.Data.Aggregate().ID)
	return id, err == nil
}

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

// tokenUsageRow is when a token or session was last used. It is not event-sourced (an event per
// request would flood the stream) and not versioned, so it survives a rebuild.
type tokenUsageRow struct {
	bun.BaseModel `bun:"table:token_usage,alias:tu"`

	TokenID    uuid.UUID `bun:"token_id,pk,type:uuid"`
	LastUsedAt time.Time `bun:"last_used_at,notnull"`
}

// addAdminColumn adds users.admin to a users table created before the column existed. The
// tables need no new generation (and no replay) for it: the streams such tables were built
// from were written by builds without administrator events, so false is what a rebuild would
// store in every row.
func addAdminColumn(ctx context.Context, db *bun.DB, users string) error {
	if sqldb.IsPG(db) {
		_, err := db.ExecContext(ctx, "ALTER TABLE "+users+" ADD COLUMN IF NOT EXISTS admin BOOLEAN NOT NULL DEFAULT FALSE")
		return err
	}
	var n int
	if err := db.NewRaw("SELECT COUNT(*) FROM pragma_table_info(?) WHERE name = 'admin'", users).Scan(ctx, &n); err != nil {
		return fmt.Errorf("columns of %s: %w", users, err)
	}
	if n > 0 {
		return nil
	}
	_, err := db.ExecContext(ctx, "ALTER TABLE "+users+" ADD COLUMN admin BOOLEAN NOT NULL DEFAULT FALSE")
	if err != nil && strings.Contains(err.Error(), "duplicate column name") {
		return nil // another process added it meanwhile
	}
	return err
}
