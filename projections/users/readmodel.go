package users

import (
	"context"
	"database/sql"
	"errors"
	"fmt"
	"sort"
	"time"

	"github.com/google/uuid"
	"github.com/uptrace/bun"

	"github.com/identityd/identityd/projections/engine"
	"github.com/identityd/identityd/projections/sqldb"
)

// ErrNotFound is returned by ReadModel lookups that match nothing.
var ErrNotFound = errors.New("not found")

func utcPtr(t *time.Time) *time.Time {
	if t == nil {
		return nil
	}
	u := t.UTC()
	return &u
}

// ReadModel answers queries about users and their credentials.
type ReadModel struct {
	db *bun.DB
	t  engine.Tables
}

// NewReadModel reads the given generation of tables.
func NewReadModel(db *bun.DB, t engine.Tables) *ReadModel { return &ReadModel{db: db, t: t} }

// DB is the underlying database handle.
func (r *ReadModel) DB() *bun.DB { return r.db }

// Credential is what a presented token resolves to: the token (or session) and its user.
type Credential struct {
	TokenID   uuid.UUID
	ExpiresAt *time.Time
	User      UserRow
	// ProfileStale is set by the credential cache when an event that changes only the user's
	// profile (a rename) arrived after User was read: the credential still holds, but User's
	// profile fields may predate the caller's own write. Read the user (credcache.Cache.User
	// or ReadModel.User) before showing them.
	ProfileStale bool
}

// Expired reports whether the credential has expired at now.
func (c Credential) Expired(now time.Time) bool {
	return c.ExpiresAt != nil && !now.Before(*c.ExpiresAt)
}

// APITokenByDigest resolves a live API token's digest, with its user, in one query.
func (r *ReadModel) APITokenByDigest(ctx context.Context, digest string) (Credential, error) {
	return r.credential(ctx, r.t.Name(tokensTable), digest)
}

// SessionByDigest resolves a live session token's digest, with its user, in one query.
func (r *ReadModel) SessionByDigest(ctx context.Context, digest string) (Credential, error) {
	return r.credential(ctx, r.t.Name(sessionsTable), digest)
}

func (r *ReadModel) credential(ctx context.Context, table, digest string) (Credential, error) {
	var c Credential
	err := r.db.NewSelect().
		ColumnExpr("c.id, c.expires_at, u.id, u.email, u.name, u.personal_org_slug, u.admin, u.created_at, u.updated_at, u.version").
		TableExpr(table+" AS c").
		Join("JOIN "+r.t.Name(usersTable)+" AS u ON u.id = c.user_id").
		Where("c.digest = ?", digest).
		Scan(ctx, &c.TokenID, &c.ExpiresAt, &c.User.ID, &c.User.Email, &c.User.Name, &c.User.PersonalOrgSlug,
			&c.User.Admin, &c.User.CreatedAt, &c.User.UpdatedAt, &c.User.Version)
	if errors.Is(err, sql.ErrNoRows) {
		return Credential{}, ErrNotFound
	}
	if err != nil {
		return Credential{}, fmt.Errorf("credential lookup: %w", err)
	}
	return c, nil
}

// User returns one user.
func (r *ReadModel) User(ctx context.Context, id uuid.UUID) (UserRow, error) {
	var u UserRow
	err := r.db.NewSelect().Model(&u).ModelTableExpr(r.t.Name(usersTable)+" AS u").Where("u.id = ?", id).Scan(ctx)
	if errors.Is(err, sql.ErrNoRows) {
		return UserRow{}, ErrNotFound
	}
	return u, err
}

// Token is an API token as listed to its owner.
type Token struct {
	TokenRow
	LastUsedAt *time.Time
}

// Tokens lists a user's live API tokens, newest first, with when each was last used.
func (r *ReadModel) Tokens(ctx context.Context, userID uuid.UUID) ([]Token, error) {
	var rows []struct {
		TokenRow
		LastUsedAt *time.Time `bun:"last_used_at"`
	}
	err := r.db.NewSelect().Model(&rows).ModelTableExpr(r.t.Name(tokensTable)+" AS t").
		ColumnExpr("t.*, tu.last_used_at").
		Join("LEFT JOIN token_usage AS tu ON tu.token_id = t.id").
		Where("t.user_id = ?", userID).
		OrderExpr("t.created_at DESC, t.id DESC").
		Scan(ctx)
	if err != nil {
		return nil, fmt.Errorf("list tokens: %w", err)
	}
	out := make([]Token, len(rows))
	for i, row := range rows {
		out[i] = Token{TokenRow: row.TokenRow, LastUsedAt: utcPtr(row.LastUsedAt)}
	}
	return out, nil
}

// RecordUsage upserts last-used times, keeping the later one. Used by UsageTracker.
func (r *ReadModel) RecordUsage(ctx context.Context, used map[uuid.UUID]time.Time) error {
	if len(used) == 0 {
		return nil
	}
	rows := make([]tokenUsageRow, 0, len(used))
	for id, at := range used {
		rows = append(rows, tokenUsageRow{TokenID: id, LastUsedAt: at.UTC()})
	}
	sort.Slice(rows, func(i, j int) bool { return rows[i].TokenID.String() < rows[j].TokenID.String() }) // stable lock order
	q := r.db.NewInsert().Model(&rows)
	if sqldb.IsPG(r.db) {
		q = q.On("CONFLICT (token_id) DO UPDATE").Set("last_used_at = GREATEST(tu.last_used_at, EXCLUDED.last_used_at)")
	} else {
		q = q.On("CONFLICT (token_id) DO UPDATE").Set("last_used_at = MAX(tu.last_used_at, excluded.last_used_at)")
	}
	_, err := q.Exec(ctx)
	return err
}
