package projections

import (
	"context"
	"database/sql"
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
	"github.com/identityd/identityd/projections/projectiontest"
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
	tokNoExp := projectiontest.TokenCreated(projectiontest.AliceID, projectiontest.TokA1, projectiontest.T0.Add(time.Minute), nil)
	tokExp := projectiontest.TokenCreated(projectiontest.AliceID, projectiontest.TokA2, projectiontest.T0.Add(2*time.Minute), projectiontest.Ptr(projectiontest.T0.Add(90*24*time.Hour).In(projectiontest.Zone)))
	tokBob := projectiontest.TokenCreated(projectiontest.BobID, projectiontest.TokB1, projectiontest.T0.Add(3*time.Minute), nil)
	sesA := projectiontest.SessionStarted(projectiontest.AliceID, projectiontest.SesA1, projectiontest.T0.Add(4*time.Minute))
	sesA2 := projectiontest.SessionStarted(projectiontest.AliceID, projectiontest.SesA2, projectiontest.T0.Add(5*time.Minute))
	sesBob := projectiontest.SessionStarted(projectiontest.BobID, projectiontest.SesB1, projectiontest.T0.Add(6*time.Minute))
	const hash = "$argon2id$v=19$m=65536,t=3,p=4$c2FsdHNhbHRzYWx0$aGFzaGhhc2hoYXNoaGFzaGhhc2hoYXNo"

	renamed := projectiontest.UserRow(projectiontest.AliceID, "Alice", 1)
	renamed.Name, renamed.UpdatedAt, renamed.Version = "Alice Liddell", projectiontest.EvTime(2), 2
	pwSet := projectiontest.UserRow(projectiontest.AliceID, "Alice", 1)
	pwSet.UpdatedAt, pwSet.Version = projectiontest.EvTime(2), 2
	granted := events.AdminGranted{Versioned: events.V(), UserID: projectiontest.AliceID}
	revoked := events.AdminRevoked{Versioned: events.V(), UserID: projectiontest.AliceID}
	// admin at seq n: Alice (registered at 1) as an administrator after the event at n.
	admin := func(on bool, seq uint64) UserRow {
		u := projectiontest.UserRow(projectiontest.AliceID, "Alice", 1)
		u.Admin, u.UpdatedAt, u.Version = on, projectiontest.EvTime(seq), seq
		return u
	}

	return []reducerCase{
		{
			name:   "UserRegistered",
			events: []events.Event{projectiontest.Registered(projectiontest.AliceID, "Alice")},
			users:  []UserRow{projectiontest.UserRow(projectiontest.AliceID, "Alice", 1)},
		},
		{
			name: "UserRenamed",
			events: []events.Event{
				projectiontest.Registered(projectiontest.AliceID, "Alice"),
				events.Renamed(projectiontest.AliceID, "Alice", "Alice Liddell"),
			},
			users: []UserRow{renamed},
		},
		{
			name: "PasswordSet",
			events: []events.Event{
				projectiontest.Registered(projectiontest.AliceID, "Alice"),
				events.PasswordSet{Versioned: events.V(), UserID: projectiontest.AliceID, PasswordHash: hash},
			},
			users: []UserRow{pwSet},
			check: func(t *testing.T, db *bun.DB, g Tables) {
				projectiontest.AssertNothingContains(t, db, g, hash)
				projectiontest.AssertNothingContains(t, db, g, "argon2id")
				// The users table has the public columns only: no place for a hash to land.
				rows := projectiontest.RowStrings(t, db, tableOf(g, "users"))
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
			events: []events.Event{projectiontest.Registered(projectiontest.AliceID, "Alice"), tokNoExp},
			// Token and session events move the user's version (the aggregate's last sequence)
			// but not its profile or updated_at.
			users:  []UserRow{projectiontest.Versioned(projectiontest.UserRow(projectiontest.AliceID, "Alice", 1), 2)},
			tokens: []TokenRow{projectiontest.TokenRow(tokNoExp)},
		},
		{
			name:   "TokenCreated with expiry",
			events: []events.Event{projectiontest.Registered(projectiontest.AliceID, "Alice"), tokExp},
			users:  []UserRow{projectiontest.Versioned(projectiontest.UserRow(projectiontest.AliceID, "Alice", 1), 2)},
			tokens: []TokenRow{projectiontest.TokenRow(tokExp)},
		},
		{
			name: "TokenRevoked",
			events: []events.Event{
				projectiontest.Registered(projectiontest.AliceID, "Alice"), tokNoExp, tokExp,
				events.TokenRevoked{Versioned: events.V(), UserID: projectiontest.AliceID, TokenID: projectiontest.TokA1},
			},
			users:  []UserRow{projectiontest.Versioned(projectiontest.UserRow(projectiontest.AliceID, "Alice", 1), 4)},
			tokens: []TokenRow{projectiontest.TokenRow(tokExp)},
		},
		{
			name:     "SessionStarted",
			events:   []events.Event{projectiontest.Registered(projectiontest.AliceID, "Alice"), sesA},
			users:    []UserRow{projectiontest.Versioned(projectiontest.UserRow(projectiontest.AliceID, "Alice", 1), 2)},
			sessions: []SessionRow{projectiontest.SessionRow(sesA)},
		},
		{
			name: "SessionEnded",
			events: []events.Event{
				projectiontest.Registered(projectiontest.AliceID, "Alice"), sesA, sesA2,
				events.SessionEnded{Versioned: events.V(), UserID: projectiontest.AliceID, SessionID: projectiontest.SesA1},
			},
			users:    []UserRow{projectiontest.Versioned(projectiontest.UserRow(projectiontest.AliceID, "Alice", 1), 4)},
			sessions: []SessionRow{projectiontest.SessionRow(sesA2)},
		},
		{
			name: "UserDeleted",
			events: []events.Event{
				projectiontest.Registered(projectiontest.AliceID, "Alice"), projectiontest.Registered(projectiontest.BobID, "Bob"),
				tokNoExp, tokExp, tokBob, sesA, sesA2, sesBob,
				events.UserDeleted{Versioned: events.V(), UserID: projectiontest.AliceID},
			},
			users:    []UserRow{projectiontest.Versioned(projectiontest.UserRow(projectiontest.BobID, "Bob", 2), 8)}, // bob's last event: his session, seq 8
			tokens:   []TokenRow{projectiontest.TokenRow(tokBob)},
			sessions: []SessionRow{projectiontest.SessionRow(sesBob)},
		},
		{
			name:   "AdminGranted",
			events: []events.Event{projectiontest.Registered(projectiontest.AliceID, "Alice"), projectiontest.Registered(projectiontest.BobID, "Bob"), granted},
			users:  []UserRow{admin(true, 3), projectiontest.UserRow(projectiontest.BobID, "Bob", 2)}, // Bob's row untouched
		},
		{
			name:   "AdminRevoked",
			events: []events.Event{projectiontest.Registered(projectiontest.AliceID, "Alice"), granted, revoked},
			users:  []UserRow{admin(false, 3)},
		},
		{
			name:   "AdminGranted again after a revocation",
			events: []events.Event{projectiontest.Registered(projectiontest.AliceID, "Alice"), granted, revoked, granted},
			users:  []UserRow{admin(true, 4)},
		},
		{
			// Deletion ends the rights; a user registered later (another id, maybe the same
			// address) starts without them.
			name:   "UserDeleted ends admin rights",
			events: []events.Event{projectiontest.Registered(projectiontest.AliceID, "Alice"), granted, events.UserDeleted{Versioned: events.V(), UserID: projectiontest.AliceID}, projectiontest.Registered(projectiontest.CarolID, "Alice")},
			users:  []UserRow{projectiontest.UserRow(projectiontest.CarolID, "Alice", 4)},
		},
		{
			name: "EmailClaimed and EmailReleased",
			events: []events.Event{
				projectiontest.Registered(projectiontest.AliceID, "Alice"),
				events.EmailClaimed{Versioned: events.V(), EmailHash: events.EmailAggregate("alice@example.com").ID, UserID: projectiontest.AliceID},
				events.EmailReleased{Versioned: events.V(), EmailHash: events.EmailAggregate("old@example.com").ID, UserID: projectiontest.AliceID},
			},
			users: []UserRow{projectiontest.UserRow(projectiontest.AliceID, "Alice", 1)}, // unchanged, version still 1
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
					batch := projectiontest.Envelopes(1, tc.events...)
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
							projectiontest.CheckRows(t, tableOf(g, "users"), projectiontest.ReadUsers(t, db, g), tc.users, projectiontest.SameUser, projectiontest.FmtUser)
							projectiontest.CheckRows(t, tableOf(g, "api_tokens"), projectiontest.ReadTokens(t, db, g), tc.tokens, projectiontest.SameToken, projectiontest.FmtToken)
							projectiontest.CheckRows(t, tableOf(g, "sessions"), projectiontest.ReadSessions(t, db, g), tc.sessions, projectiontest.SameSession, projectiontest.FmtSession)
							if cp := projectiontest.CheckpointOf(t, db, g); cp != last {
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
	tok := projectiontest.TokenCreated(projectiontest.AliceID, projectiontest.TokA1, projectiontest.T0.Add(time.Minute), nil)
	ses := projectiontest.SessionStarted(projectiontest.AliceID, projectiontest.SesA1, projectiontest.T0.Add(2*time.Minute))
	history := []events.Event{projectiontest.Registered(projectiontest.AliceID, "Alice"), tok, ses}

	for _, b := range testBackends {
		t.Run(b.name, func(t *testing.T) {
			t.Parallel()

			t.Run("same batch twice", func(t *testing.T) {
				t.Parallel()
				db, _ := newSchemaDB(t, b, g)
				ctx := context.Background()
				batch := projectiontest.Envelopes(1, history...)
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
				projectiontest.CheckRows(t, "users", projectiontest.ReadUsers(t, db, g), []UserRow{projectiontest.Versioned(projectiontest.UserRow(projectiontest.AliceID, "Alice", 1), 3)}, projectiontest.SameUser, projectiontest.FmtUser)
				projectiontest.CheckRows(t, "tokens", projectiontest.ReadTokens(t, db, g), []TokenRow{projectiontest.TokenRow(tok)}, projectiontest.SameToken, projectiontest.FmtToken)
				projectiontest.CheckRows(t, "sessions", projectiontest.ReadSessions(t, db, g), []SessionRow{projectiontest.SessionRow(ses)}, projectiontest.SameSession, projectiontest.FmtSession)
				if cp := projectiontest.CheckpointOf(t, db, g); cp != 3 {
					t.Errorf("checkpoint = %d, want 3", cp)
				}
			})

			t.Run("overlapping batch applies only the tail", func(t *testing.T) {
				t.Parallel()
				db, _ := newSchemaDB(t, b, g)
				ctx := context.Background()
				if pos, err := applyBatch(ctx, db, g, projectiontest.Envelopes(1, history...)); err != nil || pos != 3 {
					t.Fatalf("first batch: %d, %v", pos, err)
				}
				// Redelivery of 2..3 with the new events 4..5. Were 2..3 applied again, the
				// inserts of the token and session would collide with their rows.
				tok2 := projectiontest.TokenCreated(projectiontest.AliceID, projectiontest.TokA2, projectiontest.T0.Add(3*time.Minute), nil)
				overlap := projectiontest.Envelopes(2, tok, ses,
					events.Renamed(projectiontest.AliceID, "Alice", "Alice Liddell"),
					tok2)
				pos, err := applyBatch(ctx, db, g, overlap)
				if err != nil || pos != 5 {
					t.Fatalf("overlapping batch: applyBatch = %d, %v; want 5, nil", pos, err)
				}
				want := projectiontest.UserRow(projectiontest.AliceID, "Alice", 1)
				want.Name, want.UpdatedAt, want.Version = "Alice Liddell", projectiontest.EvTime(4), 5
				projectiontest.CheckRows(t, "users", projectiontest.ReadUsers(t, db, g), []UserRow{want}, projectiontest.SameUser, projectiontest.FmtUser)
				projectiontest.CheckRows(t, "tokens", projectiontest.ReadTokens(t, db, g), []TokenRow{projectiontest.TokenRow(tok), projectiontest.TokenRow(tok2)}, projectiontest.SameToken, projectiontest.FmtToken)
				projectiontest.CheckRows(t, "sessions", projectiontest.ReadSessions(t, db, g), []SessionRow{projectiontest.SessionRow(ses)}, projectiontest.SameSession, projectiontest.FmtSession)
				if cp := projectiontest.CheckpointOf(t, db, g); cp != 5 {
					t.Errorf("checkpoint = %d, want 5", cp)
				}
			})

			t.Run("failing batch rolls back rows and checkpoint", func(t *testing.T) {
				t.Parallel()
				db, _ := newSchemaDB(t, b, g)
				ctx := context.Background()
				if pos, err := applyBatch(ctx, db, g, projectiontest.Envelopes(1, projectiontest.Registered(projectiontest.AliceID, "Alice"))); err != nil || pos != 1 {
					t.Fatalf("first batch: %d, %v", pos, err)
				}
				first := projectiontest.TokenCreated(projectiontest.AliceID, projectiontest.TokA1, projectiontest.T0.Add(time.Minute), nil)
				clash := projectiontest.TokenCreated(projectiontest.AliceID, projectiontest.TokA1, projectiontest.T0.Add(2*time.Minute), nil) // same token id
				clash.Digest = projectiontest.DigestOf("another secret")
				pos, err := applyBatch(ctx, db, g, projectiontest.Envelopes(2, first, clash))
				if err == nil {
					t.Fatalf("applyBatch of two tokens with one id succeeded (position %d)", pos)
				}
				if !strings.Contains(err.Error(), "seq 3") {
					t.Errorf("error %q does not name the failing event (seq 3)", err)
				}
				if cp := projectiontest.CheckpointOf(t, db, g); cp != 1 {
					t.Errorf("checkpoint = %d after a failed batch, want 1", cp)
				}
				projectiontest.CheckRows(t, "tokens", projectiontest.ReadTokens(t, db, g), nil, projectiontest.SameToken, projectiontest.FmtToken)
				// The first token's version bump is rolled back with it.
				projectiontest.CheckRows(t, "users", projectiontest.ReadUsers(t, db, g), []UserRow{projectiontest.UserRow(projectiontest.AliceID, "Alice", 1)}, projectiontest.SameUser, projectiontest.FmtUser)

				// Redelivered with the fault fixed, the batch applies from the old checkpoint.
				fixed := projectiontest.TokenCreated(projectiontest.AliceID, projectiontest.TokA2, projectiontest.T0.Add(2*time.Minute), nil)
				if pos, err := applyBatch(ctx, db, g, projectiontest.Envelopes(2, first, fixed)); err != nil || pos != 3 {
					t.Fatalf("retry: applyBatch = %d, %v; want 3, nil", pos, err)
				}
				projectiontest.CheckRows(t, "tokens", projectiontest.ReadTokens(t, db, g), []TokenRow{projectiontest.TokenRow(first), projectiontest.TokenRow(fixed)}, projectiontest.SameToken, projectiontest.FmtToken)
				projectiontest.CheckRows(t, "users", projectiontest.ReadUsers(t, db, g), []UserRow{projectiontest.Versioned(projectiontest.UserRow(projectiontest.AliceID, "Alice", 1), 3)}, projectiontest.SameUser, projectiontest.FmtUser)
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
			evs := []events.Event{projectiontest.Registered(id, "Plain")}
			prev := "Plain"
			for _, name := range hostile {
				evs = append(evs, events.Renamed(id, prev, name))
				prev = name
			}
			created := projectiontest.TokenCreated(id, tok, projectiontest.T0, nil)
			created.Description = strings.Join(hostile, " | ")
			evs = append(evs, created)
			if _, err := applyBatch(ctx, db, CurrentTables, projectiontest.Envelopes(1, evs...)); err != nil {
				t.Fatal(err)
			}
			users, tokens := projectiontest.ReadUsers(t, db, CurrentTables), projectiontest.ReadTokens(t, db, CurrentTables)
			if len(users) != 1 || users[0].Name != prev {
				t.Fatalf("users %+v, want one named %q", users, prev)
			}
			if len(tokens) != 1 || tokens[0].Description != created.Description {
				t.Fatalf("tokens %+v, want one described %q", tokens, created.Description)
			}
			if cp := projectiontest.CheckpointOf(t, db, CurrentTables); cp != uint64(len(evs)) {
				t.Fatalf("checkpoint %d, want %d", cp, len(evs))
			}
		})
	}
}
