package engine_test

import (
	"context"
	"testing"

	"github.com/uptrace/bun"

	"github.com/identityd/identityd/events"
	. "github.com/identityd/identityd/projections" //nolint:revive // the registered read models, under the names the fixtures use
	"github.com/identityd/identityd/projections/dbtest"
)

// The engine's tests run on both backends and reach the registered read models (users,
// audit) through the projections package; their events, ids and row readers are the shared
// fixtures of projections/projectiontest.

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
