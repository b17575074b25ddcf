package audit

import (
	"context"
	"database/sql"
	"encoding/json"
	"fmt"
	"strings"
	"time"

	"github.com/google/uuid"
	"github.com/uptrace/bun"

	"github.com/identityd/identityd/events"
	"github.com/identityd/identityd/projections/engine"
)

// auditTable is the base name of the audit log (engine.Tables.Name adds the generation).
const auditTable = "audit_events"

// Projection is the audit log for the engine: every applied event with its metadata, secrets
// redacted. It is also the engine's replay guard: each event's id is stored, unique.
type Projection struct{}

var (
	_ engine.Projection  = Projection{}
	_ engine.ReplayGuard = Projection{}
	_ engine.Checker     = Projection{}
)

// Name implements engine.Projection.
func (Projection) Name() string { return "audit" }

// Tables implements engine.Projection.
func (Projection) Tables() []engine.Table {
	return []engine.Table{{Name: auditTable, Model: (*Row)(nil), Indexes: []engine.Index{
		{Name: "user", Columns: "(user_id, seq)"},
		{Name: "type", Columns: "(type, seq)"},
		{Name: "actor", Columns: "(actor, seq)"},
		{Name: "time", Columns: "(occurred_at)"},
		{Name: "event", Columns: "(event_id)", Unique: true}, // each event is applied once: Applied
	}}}
}

// NewFold implements engine.Projection.
func (Projection) NewFold(g engine.Tables) engine.Fold { return &fold{table: g.Name(auditTable)} }

// Applied implements engine.ReplayGuard: the ids among ids that the audit log holds.
func (Projection) Applied(ctx context.Context, db bun.IDB, g engine.Tables, ids []string) ([]string, error) {
	var applied []string
	err := db.NewSelect().Model((*Row)(nil)).ModelTableExpr(g.Name(auditTable)+" AS a").Column("event_id").
		Where("event_id IN (?)", bun.List(ids)).Scan(ctx, &applied)
	return applied, err
}

// fold is the audit rows of the folded events, in stream order: an append-only table, so a
// rebuild streams them out as they come (Stream).
type fold struct {
	table string
	rows  []Row
}

// Load reads nothing: audit rows are only ever added.
func (f *fold) Load(context.Context, bun.IDB, []events.Envelope) error { return nil }

// Apply renders e's audit row.
func (f *fold) Apply(e events.Envelope) error {
	row, err := auditRow(e)
	if err != nil {
		return err
	}
	f.rows = append(f.rows, row)
	return nil
}

// Write inserts the rows.
func (f *fold) Write(ctx context.Context, db bun.IDB, w engine.Writer) error {
	for _, q := range engine.Inserts(db, f.table, f.rows) {
		if err := w.Add(ctx, q); err != nil {
			return err
		}
	}
	return nil
}

// Stream hands over the rows rendered so far.
func (f *fold) Stream() []engine.RowSet {
	if len(f.rows) == 0 {
		return nil
	}
	rows := f.rows
	f.rows = nil
	return []engine.RowSet{engine.Rows(f.table, rows)}
}

// Final hands over what Stream has not.
func (f *fold) Final() []engine.RowSet { return f.Stream() }

// Check implements engine.Checker: the audit log holds one row per event the read models
// reflect, up to the last of them.
func (Projection) Check(ctx context.Context, db bun.IDB, g engine.Tables, pos uint64) (engine.Check, error) {
	c := &check{pos: pos}
	var err error
	if c.rows, c.max, err = Count(ctx, db, g); err != nil {
		return nil, err
	}
	return c, nil
}

type check struct {
	pos         uint64
	rows        int
	max         uint64
	events      uint64
	lastGenuine uint64
}

func (c *check) See(e events.Envelope) {
	c.events++
	c.lastGenuine = e.Sequence
}

func (c *check) Report(report func(engine.Difference)) {
	if uint64(c.rows) != c.events || (c.events > 0 && c.max != c.lastGenuine) { //nolint:gosec // a row count, never negative
		report(engine.Difference{Kind: "audit_log", Detail: fmt.Sprintf("%d audit rows up to %d, stream has %d events up to %d", c.rows, c.max, c.events, c.pos)})
	}
}

// Count is the number of rows in generation g's audit log and the last sequence among them.
func Count(ctx context.Context, db bun.IDB, g engine.Tables) (int, uint64, error) {
	var n int
	var maxSeq sql.NullInt64
	if err := db.NewSelect().TableExpr(g.Name(auditTable)).ColumnExpr("COUNT(*), MAX(seq)").Scan(ctx, &n, &maxSeq); err != nil {
		return 0, 0, err
	}
	return n, uint64(max(maxSeq.Int64, 0)), nil
}

// Row is one event in the audit log: who did what, when, from where. Secret fields of the
// payload (password hashes, token digests) are redacted.
type Row struct {
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

// ReadModel answers queries of the audit log.
type ReadModel struct {
	db *bun.DB
	t  engine.Tables
}

// NewReadModel reads the given generation of tables.
func NewReadModel(db *bun.DB, t engine.Tables) *ReadModel { return &ReadModel{db: db, t: t} }

// Filter selects audit-log rows; zero fields do not filter.
type Filter struct {
	UserID *uuid.UUID
	Type   string
	// ActorPrefix matches actors that start with it, e.g. "user:<id>" for everything a user did
	// with any of their credentials.
	ActorPrefix string
	Since       time.Time // inclusive
	Until       time.Time // exclusive
	// Before is the cursor: only rows with a smaller stream sequence (0: from the newest).
	Before uint64
	Limit  int
}

// AuditEvents lists audit-log rows newest first.
func (r *ReadModel) AuditEvents(ctx context.Context, f Filter) ([]Row, error) {
	var rows []Row
	q := r.db.NewSelect().Model(&rows).ModelTableExpr(r.t.Name(auditTable) + " AS a").OrderExpr("a.seq DESC").Limit(int64(f.Limit))
	if f.UserID != nil {
		q = q.Where("a.user_id = ?", *f.UserID)
	}
	if f.Type != "" {
		q = q.Where("a.type = ?", f.Type)
	}
	if f.ActorPrefix != "" {
		q = q.Where("a.actor LIKE ? ESCAPE '\\'", likeEscape(f.ActorPrefix)+"%")
	}
	if !f.Since.IsZero() {
		q = q.Where("a.occurred_at >= ?", f.Since.UTC())
	}
	if !f.Until.IsZero() {
		q = q.Where("a.occurred_at < ?", f.Until.UTC())
	}
	if f.Before > 0 {
		q = q.Where("a.seq < ?", f.Before)
	}
	if err := q.Scan(ctx); err != nil {
		return nil, fmt.Errorf("audit events: %w", err)
	}
	return rows, nil
}

func likeEscape(s string) string {
	return strings.NewReplacer(`\`, `\\`, "%", `\%`, "_", `\_`).Replace(s)
}

// auditRow turns an event into its audit-log row.
func auditRow(e events.Envelope) (Row, error) {
	data, err := events.Redacted(e.Data)
	if err != nil {
		return Row{}, fmt.Errorf("audit %s (seq %d): %w", e.Type, e.Sequence, err)
	}
	row := Row{
		Sequence: e.Sequence, EventID: e.ID, Type: string(e.Type), Aggregate: e.Subject,
		Actor: e.Metadata.Actor, RequestID: e.Metadata.RequestID, SourceIP: e.Metadata.SourceIP,
		UserAgent: e.Metadata.UserAgent, OccurredAt: e.Time.UTC(), SchemaVersion: e.WrittenVersion, Data: string(data),
	}
	if id, ok := payloadUserID(e.Data); ok {
		row.UserID = &id
	} else {
		// A type payloadUserID does not list yet: the payload's user_id, if any.
		var owner struct {
			UserID *uuid.UUID `json:"user_id"`
		}
		if json.Unmarshal(data, &owner) == nil && owner.UserID != nil {
			row.UserID = owner.UserID
		}
	}
	return row, nil
}

// payloadUserID is the user_id of an event's payload, read without decoding JSON again (the
// audit row is built for every event, also in bulk rebuilds).
func payloadUserID(ev events.Event) (uuid.UUID, bool) {
	switch e := ev.(type) {
	case events.UserRegistered:
		return e.UserID, true
	case events.UserRenamed:
		return e.UserID, true
	case events.PasswordSet:
		return e.UserID, true
	case events.TokenCreated:
		return e.UserID, true
	case events.TokenRevoked:
		return e.UserID, true
	case events.SessionStarted:
		return e.UserID, true
	case events.SessionEnded:
		return e.UserID, true
	case events.UserDeleted:
		return e.UserID, true
	case events.AdminGranted:
		return e.UserID, true
	case events.AdminRevoked:
		return e.UserID, true
	case events.EmailClaimed:
		return e.UserID, true
	case events.EmailReleased:
		return e.UserID, true
	}
	return uuid.Nil, false
}
