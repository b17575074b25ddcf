package engine_test

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"fmt"
	"strings"
	"testing"
	"time"

	"github.com/google/uuid"
	"github.com/uptrace/bun"

	"github.com/identityd/identityd/events"
	. "github.com/identityd/identityd/projections" //nolint:revive // the registered read models, under the names the fixtures use
	"github.com/identityd/identityd/projections/dbtest"
)

// Fixtures of the engine's tests that need the registered read models (users, audit): the
// same events and rows as the projections package's tests.

type testBackend struct {
	name string
	url  func(testing.TB) string
}

var testBackends = []testBackend{
	{name: "postgres", url: dbtest.PostgresURL},
	{name: "sqlite", url: dbtest.SQLiteURL},
}

// newSchemaDB is a fresh database of the backend with the given generations' schema.
func newSchemaDB(t testing.TB, b testBackend, gens ...Tables) (*bun.DB, string) {
	t.Helper()
	u := b.url(t)
	db := dbtest.Open(t, u)
	for _, g := range gens {
		if err := CreateSchema(context.Background(), db, g); err != nil {
			t.Fatalf("CreateSchema(%s): %v", g.Suffix, err)
		}
	}
	return db, u
}

func applyBatch(ctx context.Context, db *bun.DB, t Tables, batch []events.Envelope) (uint64, error) {
	return ApplyBatch(ctx, db, t, batch)
}

func tableOf(g Tables, base string) string { return g.Name(base) }

// --- Events ----------------------------------------------------------------------------------

// Times are whole microseconds (PostgreSQL keeps no more) and event times are given in a zone
// other than UTC, so the tests see that the reducers store instants, not wall clocks.
var (
	t0   = time.Date(2025, 3, 4, 5, 6, 7, 123456000, time.UTC)
	zone = time.FixedZone("UTC+5:30", 5*3600+30*60)
)

// evTime is the envelope time of the event at stream sequence seq.
func evTime(seq uint64) time.Time { return t0.Add(time.Duration(seq) * time.Second) }

// envelopes numbers events from stream sequence first on, as the subscriber delivers them.
func envelopes(first uint64, evs ...events.Event) []events.Envelope {
	out := make([]events.Envelope, len(evs))
	for i, ev := range evs {
		seq := first + uint64(i)
		out[i] = events.Envelope{
			ID:       fmt.Sprintf("event-%d", seq),
			Type:     ev.EventType(),
			Subject:  ev.Aggregate().String(),
			Time:     evTime(seq).In(zone),
			Metadata: events.Metadata{Actor: "system"},
			Data:     ev,
			Sequence: seq,
			NATSSubj: events.Subject(ev),
		}
	}
	return out
}

func digestOf(secret string) string {
	sum := sha256.Sum256([]byte(secret))
	return hex.EncodeToString(sum[:])
}

func ptr[T any](v T) *T { return &v }

var (
	aliceID = uuid.MustParse("a11ce000-0000-4000-8000-000000000001")
	bobID   = uuid.MustParse("b0b00000-0000-4000-8000-000000000002")
	carolID = uuid.MustParse("ca401000-0000-4000-8000-000000000003")

	tokA1 = uuid.MustParse("10000000-0000-4000-8000-0000000000a1")
	tokA2 = uuid.MustParse("10000000-0000-4000-8000-0000000000a2")
	tokA3 = uuid.MustParse("10000000-0000-4000-8000-0000000000a3")
	tokAR = uuid.MustParse("10000000-0000-4000-8000-0000000000af")
	tokB1 = uuid.MustParse("10000000-0000-4000-8000-0000000000b1")
	tokC1 = uuid.MustParse("10000000-0000-4000-8000-0000000000c1")

	sesA1 = uuid.MustParse("20000000-0000-4000-8000-0000000000a1")
	sesA2 = uuid.MustParse("20000000-0000-4000-8000-0000000000a2")
	sesB1 = uuid.MustParse("20000000-0000-4000-8000-0000000000b1")
	sesC1 = uuid.MustParse("20000000-0000-4000-8000-0000000000c1")
)

// registeredAt is when a user registered, as the payload says; deliberately not the envelope
// time, which the reducer uses for updated_at.
func registeredAt(id uuid.UUID) time.Time {
	return t0.Add(-time.Duration(id[0]) * time.Minute).In(zone)
}

func registered(id uuid.UUID, name string) events.UserRegistered {
	return events.UserRegistered{
		Versioned: events.V(), UserID: id, Email: strings.ToLower(name) + "@example.com",
		Name: name, PersonalOrgSlug: strings.ToLower(name), RegisteredAt: registeredAt(id),
	}
}

// userRow is the row UserRegistered at stream sequence seq creates.
func userRow(id uuid.UUID, name string, seq uint64) UserRow {
	return UserRow{
		ID: id, Email: strings.ToLower(name) + "@example.com", Name: name, PersonalOrgSlug: strings.ToLower(name),
		CreatedAt: registeredAt(id), UpdatedAt: evTime(seq), Version: seq,
	}
}

// versioned is u after later events of its aggregate that leave the profile alone (tokens,
// sessions) moved its version to seq.
func versioned(u UserRow, seq uint64) UserRow {
	u.Version = seq
	return u
}

func tokenCreated(user, id uuid.UUID, created time.Time, expires *time.Time) events.TokenCreated {
	return events.TokenCreated{
		Versioned: events.V(), UserID: user, TokenID: id, Description: "token " + id.String()[34:],
		Digest: digestOf("token-secret-" + id.String()), CreatedAt: created.In(zone), ExpiresAt: expires,
	}
}

func tokenRow(ev events.TokenCreated) TokenRow {
	return TokenRow{ID: ev.TokenID, UserID: ev.UserID, Description: ev.Description, Digest: ev.Digest,
		CreatedAt: ev.CreatedAt, ExpiresAt: ev.ExpiresAt}
}

func sessionStarted(user, id uuid.UUID, started time.Time) events.SessionStarted {
	return events.SessionStarted{
		Versioned: events.V(), UserID: user, SessionID: id, Digest: digestOf("session-secret-" + id.String()),
		StartedAt: started.In(zone), ExpiresAt: started.Add(24 * time.Hour).In(zone),
	}
}

func sessionRow(ev events.SessionStarted) SessionRow {
	return SessionRow{ID: ev.SessionID, UserID: ev.UserID, Digest: ev.Digest, CreatedAt: ev.StartedAt, ExpiresAt: ev.ExpiresAt}
}

// --- Reading rows back ----------------------------------------------------------------------

func readUsers(t testing.TB, db *bun.DB, g Tables) []UserRow {
	t.Helper()
	var rows []UserRow
	if err := db.NewSelect().Model(&rows).ModelTableExpr(tableOf(g, "users") + " AS u").OrderExpr("u.id").Scan(context.Background()); err != nil {
		t.Fatalf("read %s: %v", tableOf(g, "users"), err)
	}
	return rows
}

func readTokens(t testing.TB, db *bun.DB, g Tables) []TokenRow {
	t.Helper()
	var rows []TokenRow
	if err := db.NewSelect().Model(&rows).ModelTableExpr(tableOf(g, "api_tokens") + " AS t").OrderExpr("t.id").Scan(context.Background()); err != nil {
		t.Fatalf("read %s: %v", tableOf(g, "api_tokens"), err)
	}
	return rows
}

func readSessions(t testing.TB, db *bun.DB, g Tables) []SessionRow {
	t.Helper()
	var rows []SessionRow
	if err := db.NewSelect().Model(&rows).ModelTableExpr(tableOf(g, "sessions") + " AS s").OrderExpr("s.id").Scan(context.Background()); err != nil {
		t.Fatalf("read %s: %v", tableOf(g, "sessions"), err)
	}
	return rows
}

// checkpointOf reads the generation's checkpoint straight from the table.
func checkpointOf(t testing.TB, db *bun.DB, g Tables) uint64 {
	t.Helper()
	var pos uint64
	err := db.NewSelect().Table("projection_checkpoints").Column("position").Where("name = ?", g.Checkpoint()).Scan(context.Background(), &pos)
	if err != nil {
		t.Fatalf("read checkpoint %s: %v", g.Checkpoint(), err)
	}
	return pos
}

func fmtTime(tm time.Time) string { return tm.UTC().Format(time.RFC3339Nano) }

func fmtTimePtr(tm *time.Time) string {
	if tm == nil {
		return "<nil>"
	}
	return fmtTime(*tm)
}

func sameTime(a, b time.Time) bool { return a.UTC().Equal(b.UTC()) }

func sameTimePtr(a, b *time.Time) bool {
	if a == nil || b == nil {
		return a == nil && b == nil
	}
	return sameTime(*a, *b)
}

func fmtUser(u UserRow) string {
	return fmt.Sprintf("{id=%s email=%q name=%q slug=%q created=%s updated=%s version=%d admin=%v}",
		u.ID, u.Email, u.Name, u.PersonalOrgSlug, fmtTime(u.CreatedAt), fmtTime(u.UpdatedAt), u.Version, u.Admin)
}

func sameUser(a, b UserRow) bool {
	return a.ID == b.ID && a.Email == b.Email && a.Name == b.Name && a.PersonalOrgSlug == b.PersonalOrgSlug &&
		sameTime(a.CreatedAt, b.CreatedAt) && sameTime(a.UpdatedAt, b.UpdatedAt) && a.Version == b.Version &&
		a.Admin == b.Admin
}

func fmtToken(r TokenRow) string {
	return fmt.Sprintf("{id=%s user=%s desc=%q digest=%s created=%s expires=%s}",
		r.ID, r.UserID, r.Description, r.Digest, fmtTime(r.CreatedAt), fmtTimePtr(r.ExpiresAt))
}

func sameToken(a, b TokenRow) bool {
	return a.ID == b.ID && a.UserID == b.UserID && a.Description == b.Description && a.Digest == b.Digest &&
		sameTime(a.CreatedAt, b.CreatedAt) && sameTimePtr(a.ExpiresAt, b.ExpiresAt)
}

func fmtSession(r SessionRow) string {
	return fmt.Sprintf("{id=%s user=%s digest=%s created=%s expires=%s}",
		r.ID, r.UserID, r.Digest, fmtTime(r.CreatedAt), fmtTime(r.ExpiresAt))
}

func sameSession(a, b SessionRow) bool {
	return a.ID == b.ID && a.UserID == b.UserID && a.Digest == b.Digest &&
		sameTime(a.CreatedAt, b.CreatedAt) && sameTime(a.ExpiresAt, b.ExpiresAt)
}

// checkRows compares got with want (both in id order), reporting every difference.
func checkRows[R any](t testing.TB, what string, got, want []R, same func(a, b R) bool, format func(R) string) {
	t.Helper()
	ok := len(got) == len(want)
	for i := 0; ok && i < len(got); i++ {
		ok = same(got[i], want[i])
	}
	if ok {
		return
	}
	var g, w []string
	for _, r := range got {
		g = append(g, format(r))
	}
	for _, r := range want {
		w = append(w, format(r))
	}
	t.Errorf("%s rows:\n got  %s\n want %s", what, strings.Join(g, "\n      "), strings.Join(w, "\n      "))
}

// rowStrings reads every row of a table as column → text, whatever the column types.
func rowStrings(t testing.TB, db *bun.DB, table string) []map[string]string {
	t.Helper()
	var rows []map[string]any
	if err := db.NewSelect().TableExpr(table).Scan(context.Background(), &rows); err != nil {
		t.Fatalf("read %s: %v", table, err)
	}
	out := make([]map[string]string, len(rows))
	for i, r := range rows {
		out[i] = map[string]string{}
		for k, v := range r {
			if b, ok := v.([]byte); ok {
				out[i][k] = string(b)
			} else {
				out[i][k] = fmt.Sprint(v)
			}
		}
	}
	return out
}

// assertNothingContains fails if any column of any read-model table holds secret.
