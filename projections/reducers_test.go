package projections

import (
	"context"
	"crypto/sha256"
	"database/sql"
	"encoding/hex"
	"fmt"
	"net/url"
	"os"
	"path/filepath"
	"sort"
	"strings"
	"testing"
	"time"

	"github.com/google/uuid"
	"github.com/uptrace/bun"
	"github.com/uptrace/bun/driver/pgdriver"

	"github.com/identityd/identityd/events"
)

// --- Databases -----------------------------------------------------------------------------
//
// These tests are internal (they drive applyBatch directly), so they cannot import
// projections/dbtest: dbtest imports projections, and Go refuses that cycle in a test build.
// testBackends mirrors dbtest.Backends: a fresh PostgreSQL database per test (on the server named
// by IDENTITYD_TEST_DATABASE_URL, dropped afterwards) and a fresh SQLite file. Like dbtest it
// never skips.

const testDefaultAdminURL = "postgres://postgres@127.0.0.1:5432/postgres?sslmode=disable"

type testBackend struct {
	name string
	url  func(testing.TB) string
}

var testBackends = []testBackend{
	{name: "postgres", url: testPostgresURL},
	{name: "sqlite", url: testSQLiteURL},
}

func testPostgresURL(t testing.TB) string {
	t.Helper()
	admin := os.Getenv("IDENTITYD_TEST_DATABASE_URL")
	if admin == "" {
		admin = testDefaultAdminURL
	}
	adb := sql.OpenDB(pgdriver.NewConnector(pgdriver.WithDSN(admin), pgdriver.WithTimeout(5*time.Second)))
	ctx, cancel := context.WithTimeout(context.Background(), 15*time.Second)
	defer cancel()
	if err := adb.PingContext(ctx); err != nil {
		_ = adb.Close()
		t.Fatalf("PostgreSQL is required for this test and did not answer at %s: %v\n"+
			"run the tests with `make test`, or set IDENTITYD_TEST_DATABASE_URL", redact(admin), err)
	}
	name := "identityd_test_" + strings.ReplaceAll(uuid.NewString(), "-", "")[:16]
	if _, err := adb.ExecContext(ctx, "CREATE DATABASE "+name); err != nil {
		_ = adb.Close()
		t.Fatalf("create test database: %v", err)
	}
	t.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
		defer cancel()
		if _, err := adb.ExecContext(ctx, "DROP DATABASE IF EXISTS "+name+" WITH (FORCE)"); err != nil {
			t.Logf("drop test database %s: %v", name, err)
		}
		_ = adb.Close()
	})
	u, err := url.Parse(admin)
	if err != nil {
		t.Fatalf("IDENTITYD_TEST_DATABASE_URL: %v", err)
	}
	u.Path = "/" + name
	return u.String()
}

func testSQLiteURL(t testing.TB) string {
	t.Helper()
	return SQLiteURL(filepath.Join(t.TempDir(), "readmodel.db"))
}

// openTestDB opens a database URL for the test and closes it afterwards.
func openTestDB(t testing.TB, dbURL string) *bun.DB {
	t.Helper()
	db, err := OpenDB(context.Background(), DBConfig{URL: dbURL})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = db.Close() })
	return db
}

// newSchemaDB is a fresh database of the backend with the given generations' schema.
func newSchemaDB(t testing.TB, b testBackend, gens ...Tables) (*bun.DB, string) {
	t.Helper()
	u := b.url(t)
	db := openTestDB(t, u)
	for _, g := range gens {
		if err := CreateSchema(context.Background(), db, g); err != nil {
			t.Fatalf("CreateSchema(%s): %v", g.Suffix, err)
		}
	}
	return db, u
}

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
	err := db.NewSelect().Model((*checkpointRow)(nil)).Column("position").Where("name = ?", g.Checkpoint()).Scan(context.Background(), &pos)
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
func assertNothingContains(t testing.TB, db *bun.DB, g Tables, secret string) {
	t.Helper()
	for _, table := range []string{tableOf(g, "users"), tableOf(g, "api_tokens"), tableOf(g, "sessions"), "projection_checkpoints", "token_usage"} {
		for _, row := range rowStrings(t, db, table) {
			for col, v := range row {
				if strings.Contains(v, secret) || strings.Contains(col, secret) {
					t.Errorf("%s.%s holds the secret: %q", table, col, v)
				}
			}
		}
	}
}

// --- Event in, row out ------------------------------------------------------------------------

type reducerCase struct {
	name     string
	events   []events.Event // applied from stream sequence 1 on
	users    []UserRow
	tokens   []TokenRow
	sessions []SessionRow
	check    func(t *testing.T, db *bun.DB, g Tables) // optional, after the rows are compared
}

func reducerCases() []reducerCase {
	tokNoExp := tokenCreated(aliceID, tokA1, t0.Add(time.Minute), nil)
	tokExp := tokenCreated(aliceID, tokA2, t0.Add(2*time.Minute), ptr(t0.Add(90*24*time.Hour).In(zone)))
	tokBob := tokenCreated(bobID, tokB1, t0.Add(3*time.Minute), nil)
	sesA := sessionStarted(aliceID, sesA1, t0.Add(4*time.Minute))
	sesA2 := sessionStarted(aliceID, sesA2, t0.Add(5*time.Minute))
	sesBob := sessionStarted(bobID, sesB1, t0.Add(6*time.Minute))
	const hash = "$argon2id$v=19$m=65536,t=3,p=4$c2FsdHNhbHRzYWx0$aGFzaGhhc2hoYXNoaGFzaGhhc2hoYXNo"

	renamed := userRow(aliceID, "Alice", 1)
	renamed.Name, renamed.UpdatedAt, renamed.Version = "Alice Liddell", evTime(2), 2
	pwSet := userRow(aliceID, "Alice", 1)
	pwSet.UpdatedAt, pwSet.Version = evTime(2), 2
	granted := events.AdminGranted{Versioned: events.V(), UserID: aliceID}
	revoked := events.AdminRevoked{Versioned: events.V(), UserID: aliceID}
	// admin at seq n: Alice (registered at 1) as an administrator after the event at n.
	admin := func(on bool, seq uint64) UserRow {
		u := userRow(aliceID, "Alice", 1)
		u.Admin, u.UpdatedAt, u.Version = on, evTime(seq), seq
		return u
	}

	return []reducerCase{
		{
			name:   "UserRegistered",
			events: []events.Event{registered(aliceID, "Alice")},
			users:  []UserRow{userRow(aliceID, "Alice", 1)},
		},
		{
			name: "UserRenamed",
			events: []events.Event{
				registered(aliceID, "Alice"),
				events.Renamed(aliceID, "Alice", "Alice Liddell"),
			},
			users: []UserRow{renamed},
		},
		{
			name: "PasswordSet",
			events: []events.Event{
				registered(aliceID, "Alice"),
				events.PasswordSet{Versioned: events.V(), UserID: aliceID, PasswordHash: hash},
			},
			users: []UserRow{pwSet},
			check: func(t *testing.T, db *bun.DB, g Tables) {
				assertNothingContains(t, db, g, hash)
				assertNothingContains(t, db, g, "argon2id")
				// The users table has the public columns only: no place for a hash to land.
				rows := rowStrings(t, db, tableOf(g, "users"))
				if len(rows) != 1 {
					t.Fatalf("%d users rows, want 1", len(rows))
				}
				var cols []string
				for c := range rows[0] {
					cols = append(cols, c)
				}
				sort.Strings(cols)
				if got, want := strings.Join(cols, ","), "admin,created_at,email,id,name,personal_org_slug,updated_at,version"; got != want {
					t.Errorf("users columns = %s, want %s", got, want)
				}
			},
		},
		{
			name:   "TokenCreated without expiry",
			events: []events.Event{registered(aliceID, "Alice"), tokNoExp},
			// Token and session events move the user's version (the aggregate's last sequence)
			// but not its profile or updated_at.
			users:  []UserRow{versioned(userRow(aliceID, "Alice", 1), 2)},
			tokens: []TokenRow{tokenRow(tokNoExp)},
		},
		{
			name:   "TokenCreated with expiry",
			events: []events.Event{registered(aliceID, "Alice"), tokExp},
			users:  []UserRow{versioned(userRow(aliceID, "Alice", 1), 2)},
			tokens: []TokenRow{tokenRow(tokExp)},
		},
		{
			name: "TokenRevoked",
			events: []events.Event{
				registered(aliceID, "Alice"), tokNoExp, tokExp,
				events.TokenRevoked{Versioned: events.V(), UserID: aliceID, TokenID: tokA1},
			},
			users:  []UserRow{versioned(userRow(aliceID, "Alice", 1), 4)},
			tokens: []TokenRow{tokenRow(tokExp)},
		},
		{
			name:     "SessionStarted",
			events:   []events.Event{registered(aliceID, "Alice"), sesA},
			users:    []UserRow{versioned(userRow(aliceID, "Alice", 1), 2)},
			sessions: []SessionRow{sessionRow(sesA)},
		},
		{
			name: "SessionEnded",
			events: []events.Event{
				registered(aliceID, "Alice"), sesA, sesA2,
				events.SessionEnded{Versioned: events.V(), UserID: aliceID, SessionID: sesA1},
			},
			users:    []UserRow{versioned(userRow(aliceID, "Alice", 1), 4)},
			sessions: []SessionRow{sessionRow(sesA2)},
		},
		{
			name: "UserDeleted",
			events: []events.Event{
				registered(aliceID, "Alice"), registered(bobID, "Bob"),
				tokNoExp, tokExp, tokBob, sesA, sesA2, sesBob,
				events.UserDeleted{Versioned: events.V(), UserID: aliceID},
			},
			users:    []UserRow{versioned(userRow(bobID, "Bob", 2), 8)}, // bob's last event: his session, seq 8
			tokens:   []TokenRow{tokenRow(tokBob)},
			sessions: []SessionRow{sessionRow(sesBob)},
		},
		{
			name:   "AdminGranted",
			events: []events.Event{registered(aliceID, "Alice"), registered(bobID, "Bob"), granted},
			users:  []UserRow{admin(true, 3), userRow(bobID, "Bob", 2)}, // Bob's row untouched
		},
		{
			name:   "AdminRevoked",
			events: []events.Event{registered(aliceID, "Alice"), granted, revoked},
			users:  []UserRow{admin(false, 3)},
		},
		{
			name:   "AdminGranted again after a revocation",
			events: []events.Event{registered(aliceID, "Alice"), granted, revoked, granted},
			users:  []UserRow{admin(true, 4)},
		},
		{
			// Deletion ends the rights; a user registered later (another id, maybe the same
			// address) starts without them.
			name:   "UserDeleted ends admin rights",
			events: []events.Event{registered(aliceID, "Alice"), granted, events.UserDeleted{Versioned: events.V(), UserID: aliceID}, registered(carolID, "Alice")},
			users:  []UserRow{userRow(carolID, "Alice", 4)},
		},
		{
			name: "EmailClaimed and EmailReleased",
			events: []events.Event{
				registered(aliceID, "Alice"),
				events.EmailClaimed{Versioned: events.V(), EmailHash: events.EmailAggregate("alice@example.com").ID, UserID: aliceID},
				events.EmailReleased{Versioned: events.V(), EmailHash: events.EmailAggregate("old@example.com").ID, UserID: aliceID},
			},
			users: []UserRow{userRow(aliceID, "Alice", 1)}, // unchanged, version still 1
		},
	}
}

// TestReducers applies each case's events to a fresh database and compares every row of the
// read model with what the events imply. Each case runs twice in the same database, into two
// generations of tables: as one batch, and one event per batch; both must give the same rows.
func TestReducers(t *testing.T) {
	for _, b := range testBackends {
		t.Run(b.name, func(t *testing.T) {
			t.Parallel()
			for _, tc := range reducerCases() {
				t.Run(tc.name, func(t *testing.T) {
					t.Parallel()
					split := Tables{Suffix: "split"}
					db, _ := newSchemaDB(t, b, CurrentTables, split)
					ctx := context.Background()
					batch := envelopes(1, tc.events...)
					last := batch[len(batch)-1].Sequence

					pos, err := applyBatch(ctx, db, CurrentTables, batch)
					if err != nil {
						t.Fatalf("applyBatch: %v", err)
					}
					if pos != last {
						t.Errorf("applyBatch returned position %d, want %d", pos, last)
					}
					for _, e := range batch {
						got, err := applyBatch(ctx, db, split, []events.Envelope{e})
						if err != nil || got != e.Sequence {
							t.Fatalf("applyBatch(seq %d alone) = %d, %v; want %d, nil", e.Sequence, got, err, e.Sequence)
						}
					}

					for _, g := range []Tables{CurrentTables, split} {
						t.Run(g.Suffix, func(t *testing.T) {
							checkRows(t, tableOf(g, "users"), readUsers(t, db, g), tc.users, sameUser, fmtUser)
							checkRows(t, tableOf(g, "api_tokens"), readTokens(t, db, g), tc.tokens, sameToken, fmtToken)
							checkRows(t, tableOf(g, "sessions"), readSessions(t, db, g), tc.sessions, sameSession, fmtSession)
							if cp := checkpointOf(t, db, g); cp != last {
								t.Errorf("checkpoint = %d, want %d (the batch's last sequence)", cp, last)
							}
							if tc.check != nil {
								tc.check(t, db, g)
							}
						})
					}
				})
			}
		})
	}
}

// --- Exactly once -----------------------------------------------------------------------------

func TestApplyBatchExactlyOnce(t *testing.T) {
	g := CurrentTables
	tok := tokenCreated(aliceID, tokA1, t0.Add(time.Minute), nil)
	ses := sessionStarted(aliceID, sesA1, t0.Add(2*time.Minute))
	history := []events.Event{registered(aliceID, "Alice"), tok, ses}

	for _, b := range testBackends {
		t.Run(b.name, func(t *testing.T) {
			t.Parallel()

			t.Run("same batch twice", func(t *testing.T) {
				t.Parallel()
				db, _ := newSchemaDB(t, b, g)
				ctx := context.Background()
				batch := envelopes(1, history...)
				for i := 1; i <= 2; i++ {
					pos, err := applyBatch(ctx, db, g, batch)
					if err != nil || pos != 3 {
						t.Fatalf("application %d: applyBatch = %d, %v; want 3, nil", i, pos, err)
					}
				}
				// A batch wholly below the checkpoint, and an empty one, change nothing either.
				for _, again := range [][]events.Envelope{batch[:1], nil} {
					if pos, err := applyBatch(ctx, db, g, again); err != nil || pos != 3 {
						t.Fatalf("applyBatch(%d old events) = %d, %v; want 3, nil", len(again), pos, err)
					}
				}
				checkRows(t, "users", readUsers(t, db, g), []UserRow{versioned(userRow(aliceID, "Alice", 1), 3)}, sameUser, fmtUser)
				checkRows(t, "tokens", readTokens(t, db, g), []TokenRow{tokenRow(tok)}, sameToken, fmtToken)
				checkRows(t, "sessions", readSessions(t, db, g), []SessionRow{sessionRow(ses)}, sameSession, fmtSession)
				if cp := checkpointOf(t, db, g); cp != 3 {
					t.Errorf("checkpoint = %d, want 3", cp)
				}
			})

			t.Run("overlapping batch applies only the tail", func(t *testing.T) {
				t.Parallel()
				db, _ := newSchemaDB(t, b, g)
				ctx := context.Background()
				if pos, err := applyBatch(ctx, db, g, envelopes(1, history...)); err != nil || pos != 3 {
					t.Fatalf("first batch: %d, %v", pos, err)
				}
				// Redelivery of 2..3 with the new events 4..5. Were 2..3 applied again, the
				// inserts of the token and session would collide with their rows.
				tok2 := tokenCreated(aliceID, tokA2, t0.Add(3*time.Minute), nil)
				overlap := envelopes(2, tok, ses,
					events.Renamed(aliceID, "Alice", "Alice Liddell"),
					tok2)
				pos, err := applyBatch(ctx, db, g, overlap)
				if err != nil || pos != 5 {
					t.Fatalf("overlapping batch: applyBatch = %d, %v; want 5, nil", pos, err)
				}
				want := userRow(aliceID, "Alice", 1)
				want.Name, want.UpdatedAt, want.Version = "Alice Liddell", evTime(4), 5
				checkRows(t, "users", readUsers(t, db, g), []UserRow{want}, sameUser, fmtUser)
				checkRows(t, "tokens", readTokens(t, db, g), []TokenRow{tokenRow(tok), tokenRow(tok2)}, sameToken, fmtToken)
				checkRows(t, "sessions", readSessions(t, db, g), []SessionRow{sessionRow(ses)}, sameSession, fmtSession)
				if cp := checkpointOf(t, db, g); cp != 5 {
					t.Errorf("checkpoint = %d, want 5", cp)
				}
			})

			t.Run("failing batch rolls back rows and checkpoint", func(t *testing.T) {
				t.Parallel()
				db, _ := newSchemaDB(t, b, g)
				ctx := context.Background()
				if pos, err := applyBatch(ctx, db, g, envelopes(1, registered(aliceID, "Alice"))); err != nil || pos != 1 {
					t.Fatalf("first batch: %d, %v", pos, err)
				}
				first := tokenCreated(aliceID, tokA1, t0.Add(time.Minute), nil)
				clash := tokenCreated(aliceID, tokA1, t0.Add(2*time.Minute), nil) // same token id
				clash.Digest = digestOf("another secret")
				pos, err := applyBatch(ctx, db, g, envelopes(2, first, clash))
				if err == nil {
					t.Fatalf("applyBatch of two tokens with one id succeeded (position %d)", pos)
				}
				if !strings.Contains(err.Error(), "seq 3") {
					t.Errorf("error %q does not name the failing event (seq 3)", err)
				}
				if cp := checkpointOf(t, db, g); cp != 1 {
					t.Errorf("checkpoint = %d after a failed batch, want 1", cp)
				}
				checkRows(t, "tokens", readTokens(t, db, g), nil, sameToken, fmtToken)
				// The first token's version bump is rolled back with it.
				checkRows(t, "users", readUsers(t, db, g), []UserRow{userRow(aliceID, "Alice", 1)}, sameUser, fmtUser)

				// Redelivered with the fault fixed, the batch applies from the old checkpoint.
				fixed := tokenCreated(aliceID, tokA2, t0.Add(2*time.Minute), nil)
				if pos, err := applyBatch(ctx, db, g, envelopes(2, first, fixed)); err != nil || pos != 3 {
					t.Fatalf("retry: applyBatch = %d, %v; want 3, nil", pos, err)
				}
				checkRows(t, "tokens", readTokens(t, db, g), []TokenRow{tokenRow(first), tokenRow(fixed)}, sameToken, fmtToken)
				checkRows(t, "users", readUsers(t, db, g), []UserRow{versioned(userRow(aliceID, "Alice", 1), 3)}, sameUser, fmtUser)
			})
		})
	}
}

// TestApplyBatchHostileValues: values that look like SQL, placeholders or statement separators
// reach the rows intact. On PostgreSQL a batch's writes go out as one multi-statement query
// rendered client-side, so this is the test that its quoting holds.
func TestApplyBatchHostileValues(t *testing.T) {
	hostile := []string{`a?b ?0 ?TableName`, `$1 $$x$$ \'`, `'); DROP TABLE users_v1; --`, "semi;colon\nnew line", `back\\slash "quoted"`}
	for _, b := range testBackends {
		t.Run(b.name, func(t *testing.T) {
			db, _ := newSchemaDB(t, b, CurrentTables)
			ctx := context.Background()
			id, tok := uuid.New(), uuid.New()
			evs := []events.Event{registered(id, "Plain")}
			prev := "Plain"
			for _, name := range hostile {
				evs = append(evs, events.Renamed(id, prev, name))
				prev = name
			}
			created := tokenCreated(id, tok, t0, nil)
			created.Description = strings.Join(hostile, " | ")
			evs = append(evs, created)
			if _, err := applyBatch(ctx, db, CurrentTables, envelopes(1, evs...)); err != nil {
				t.Fatal(err)
			}
			users, tokens := readUsers(t, db, CurrentTables), readTokens(t, db, CurrentTables)
			if len(users) != 1 || users[0].Name != prev {
				t.Fatalf("users %+v, want one named %q", users, prev)
			}
			if len(tokens) != 1 || tokens[0].Description != created.Description {
				t.Fatalf("tokens %+v, want one described %q", tokens, created.Description)
			}
			if cp := checkpointOf(t, db, CurrentTables); cp != uint64(len(evs)) {
				t.Fatalf("checkpoint %d, want %d", cp, len(evs))
			}
		})
	}
}
