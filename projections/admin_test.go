package projections

import (
	"context"
	"strings"
	"testing"

	"github.com/identityd/identityd/events"
	"github.com/identityd/identityd/projections/projectiontest"
)

// A users table created before the admin column existed gets it, false in every row (what a
// rebuild of a stream without administrator events stores), and then takes admin events.
func TestCreateSchemaAddsTheAdminColumn(t *testing.T) {
	for _, b := range testBackends {
		t.Run(b.name, func(t *testing.T) {
			t.Parallel()
			ctx := context.Background()
			db := openTestDB(t, b.url(t))
			g := Tables{Suffix: "old"}
			typ := "TIMESTAMPTZ"
			if !isPG(db) {
				typ = "TIMESTAMP"
			}
			// The table as builds before administrator events created it.
			if _, err := db.ExecContext(ctx, "CREATE TABLE "+tableOf(g, "users")+" (id UUID PRIMARY KEY, email VARCHAR NOT NULL, name VARCHAR NOT NULL, "+
				"personal_org_slug VARCHAR NOT NULL, created_at "+typ+" NOT NULL, updated_at "+typ+" NOT NULL, version BIGINT NOT NULL)"); err != nil {
				t.Fatal(err)
			}
			old := projectiontest.UserRow(projectiontest.AliceID, "Alice", 1)
			if _, err := db.NewInsert().Model(&old).ModelTableExpr(tableOf(g, "users")).ExcludeColumn("admin").Exec(ctx); err != nil {
				t.Fatal(err)
			}
			for range 2 { // idempotent, like every start
				if err := CreateSchema(ctx, db, g); err != nil {
					t.Fatalf("CreateSchema on the old table: %v", err)
				}
			}
			projectiontest.CheckRows(t, tableOf(g, "users"), projectiontest.ReadUsers(t, db, g), []UserRow{old}, projectiontest.SameUser, projectiontest.FmtUser)
			// Alice's registration was applied at 1 already (the checkpoint says so).
			if _, err := db.NewUpdate().Model((*checkpointRow)(nil)).Set("position = 1").Where("name = ?", g.Checkpoint()).Exec(ctx); err != nil {
				t.Fatal(err)
			}
			batch := projectiontest.Envelopes(1, projectiontest.Registered(projectiontest.AliceID, "Alice"), events.AdminGranted{Versioned: events.V(), UserID: projectiontest.AliceID})
			if _, err := applyBatch(ctx, db, g, batch); err != nil {
				t.Fatal(err)
			}
			want := old
			want.Admin, want.UpdatedAt, want.Version = true, projectiontest.EvTime(2), 2
			projectiontest.CheckRows(t, tableOf(g, "users"), projectiontest.ReadUsers(t, db, g), []UserRow{want}, projectiontest.SameUser, projectiontest.FmtUser)
		})
	}
}

// verify compares the admin flag of every user with the stream's: a read model that says a
// user is an administrator when the stream does not (or the reverse) is a difference.
func TestVerifyReportsATamperedAdminFlag(t *testing.T) {
	ctx := context.Background()
	evs := projectiontest.Envelopes(1, projectiontest.Registered(projectiontest.AliceID, "Alice"), projectiontest.Registered(projectiontest.BobID, "Bob"), events.AdminGranted{Versioned: events.V(), UserID: projectiontest.AliceID})
	db, _ := newSchemaDB(t, testBackends[1], CurrentTables)
	if _, err := applyBatch(ctx, db, CurrentTables, evs); err != nil {
		t.Fatal(err)
	}
	verify := func() []Difference {
		t.Helper()
		rep, err := Verify(ctx, VerifyConfig{
			DB: db,
			Read: func(_ context.Context, from uint64, limit int) ([]events.Envelope, error) {
				if from > uint64(len(evs)) {
					return nil, nil
				}
				return evs[from-1 : min(len(evs), int(from-1)+limit)], nil
			},
			Last: func(context.Context) (uint64, error) { return uint64(len(evs)), nil },
		})
		if err != nil {
			t.Fatal(err)
		}
		return rep.Differences
	}
	if d := verify(); len(d) != 0 {
		t.Fatalf("differences before tampering: %+v", d)
	}
	// Bob made an administrator in the database only; Alice's rights taken away there only.
	if _, err := db.ExecContext(ctx, "UPDATE "+tableOf(CurrentTables, "users")+" SET admin = NOT admin"); err != nil {
		t.Fatal(err)
	}
	d := verify()
	if len(d) != 2 {
		t.Fatalf("differences: %+v, want one per user", d)
	}
	for _, diff := range d {
		if diff.Kind != "user_field" || !strings.HasPrefix(diff.Detail, "admin:") {
			t.Errorf("difference %+v, want the admin field", diff)
		}
	}
}
