package projections

import (
	"context"
	"log/slog"
	"time"

	"github.com/uptrace/bun"

	"github.com/identityd/identityd/events"
	"github.com/identityd/identityd/projections/audit"
	"github.com/identityd/identityd/projections/engine"
	"github.com/identityd/identityd/projections/sqldb"
	"github.com/identityd/identityd/projections/users"
)

// The engine's vocabulary, as the service's wiring and tools use it.
type (
	// Tables names one generation of the read-model tables (engine.Tables).
	Tables = engine.Tables
	// Projector keeps the read models up to date with the stream (engine.Projector).
	Projector = engine.Projector
	// ProjectorConfig configures a Projector; Projections defaults to All.
	ProjectorConfig = engine.ProjectorConfig
	// RebuildConfig configures Rebuild; Projections defaults to All.
	RebuildConfig = engine.RebuildConfig
	// RebuildResult reports a finished rebuild.
	RebuildResult = engine.RebuildResult
	// VerifyConfig configures Verify; Projections defaults to All.
	VerifyConfig = engine.VerifyConfig
	// VerifyReport is what Verify found.
	VerifyReport = engine.VerifyReport
	// Difference is one thing the read models or the stream got wrong.
	Difference = engine.Difference
	// Checkpoint is a generation's position in the stream.
	Checkpoint = engine.Checkpoint
	// StreamReader reads up to limit events from a stream sequence on.
	StreamReader = engine.StreamReader
	// StreamReplayer streams a range of the stream in batches.
	StreamReplayer = engine.StreamReplayer
	// DBConfig selects and tunes the read-model database (sqldb.DBConfig).
	DBConfig = sqldb.DBConfig
)

// The read models' rows and answers, under the names the service and tools use.
type (
	// UserRow is a users row.
	UserRow = users.UserRow
	// TokenRow is an API-token row.
	TokenRow = users.TokenRow
	// SessionRow is a session row.
	SessionRow = users.SessionRow
	// Credential is a token or session found by its digest, with its user.
	Credential = users.Credential
	// Token is an API token as the token list shows it.
	Token = users.Token
	// UsageTracker records when tokens were last used.
	UsageTracker = users.UsageTracker
	// AuditRow is one event in the audit log.
	AuditRow = audit.Row
	// AuditFilter selects audit-log rows.
	AuditFilter = audit.Filter
)

// ErrNotFound is returned by ReadModel lookups that match nothing.
var ErrNotFound = users.ErrNotFound

// CurrentTables are the tables of this build's read-model schema.
var CurrentTables = engine.CurrentTables

// PoisonStream keeps events the projector could not decode or refused.
const PoisonStream = engine.PoisonStream

// OpenDB opens the read-model database and checks that it answers.
func OpenDB(ctx context.Context, cfg DBConfig) (*bun.DB, error) { return sqldb.OpenDB(ctx, cfg) }

// SQLiteURL is the database URL of an SQLite file.
func SQLiteURL(path string) string { return sqldb.SQLiteURL(path) }

// NewProjector creates the tables of every read model if needed and returns the projector
// that keeps them (engine.NewProjector).
func NewProjector(ctx context.Context, cfg ProjectorConfig) (*Projector, error) {
	if cfg.Projections == nil {
		cfg.Projections = All()
	}
	return engine.NewProjector(ctx, cfg)
}

// Rebuild replays the stream into fresh tables of every read model and switches over
// (engine.Rebuild).
func Rebuild(ctx context.Context, cfg RebuildConfig) (RebuildResult, error) {
	if cfg.Projections == nil {
		cfg.Projections = All()
	}
	return engine.Rebuild(ctx, cfg)
}

// Verify compares the stream with every read model (engine.Verify).
func Verify(ctx context.Context, cfg VerifyConfig) (VerifyReport, error) {
	if cfg.Projections == nil {
		cfg.Projections = All()
	}
	return engine.Verify(ctx, cfg)
}

// CreateSchema creates the tables and indexes of one generation of every read model.
func CreateSchema(ctx context.Context, db *bun.DB, t Tables) error {
	return engine.CreateSchema(ctx, db, All(), t)
}

// ApplyBatch applies events to every read model of generation t, as the projector does, for
// callers that hold the events themselves: tests that play the projector (the credential
// cache's).
func ApplyBatch(ctx context.Context, db *bun.DB, t Tables, batch []events.Envelope) (uint64, error) {
	return engine.ApplyBatch(ctx, db, All(), t, batch)
}

// Checkpoints lists every generation's position (a rebuild in progress shows as
// "<name>_next").
func Checkpoints(ctx context.Context, db *bun.DB) ([]Checkpoint, error) {
	return engine.Checkpoints(ctx, db)
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
	err := engine.ReadConsistent(ctx, db, t, func(ctx context.Context, tx bun.Tx, pos uint64) error {
		s.Position = pos
		u, err := users.ReadSnapshot(ctx, tx, t)
		if err != nil {
			return err
		}
		s.Users, s.Tokens, s.Sessions = u.Users, u.Tokens, u.Sessions
		s.AuditCount, s.AuditMax, err = audit.Count(ctx, tx, t)
		return err
	})
	return s, err
}

// ReadModel answers the HTTP API's queries from every read model of one generation.
// Users and credentials come from users.ReadModel, the audit log from audit.ReadModel.
type ReadModel struct {
	*users.ReadModel
	audit *audit.ReadModel
	db    *bun.DB
	t     Tables
}

// NewReadModel reads the given generation of tables.
func NewReadModel(db *bun.DB, t Tables) *ReadModel {
	return &ReadModel{ReadModel: users.NewReadModel(db, t), audit: audit.NewReadModel(db, t), db: db, t: t}
}

// AuditEvents lists audit-log rows newest first (audit.ReadModel.AuditEvents).
func (r *ReadModel) AuditEvents(ctx context.Context, f AuditFilter) ([]AuditRow, error) {
	return r.audit.AuditEvents(ctx, f)
}

// DB is the underlying database handle.
func (r *ReadModel) DB() *bun.DB { return r.db }

// Position is how far the read models have applied the stream.
func (r *ReadModel) Position(ctx context.Context) (uint64, error) {
	return engine.Position(ctx, r.db, r.t)
}

// NewUsageTracker starts a tracker of credential use over rm (users.NewUsageTracker).
func NewUsageTracker(ctx context.Context, rm *ReadModel, interval time.Duration, logger *slog.Logger) *UsageTracker {
	return users.NewUsageTracker(ctx, rm.ReadModel, interval, logger)
}
