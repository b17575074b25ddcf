package projections

import (
	"context"
	"fmt"
	"testing"

	"github.com/uptrace/bun"

	"github.com/identityd/identityd/events"
	"github.com/identityd/identityd/projections/engine"
	"github.com/identityd/identityd/projections/projectiontest"
)

// eventCountRow is how many events of one type the stream holds: the smallest read model that
// shows what adding one takes.
type eventCountRow struct {
	bun.BaseModel `bun:"table:event_counts,alias:ec"`

	Type  string `bun:"type,pk"`
	Count int64  `bun:"count,notnull"`
}

// eventCounts is a projection used only by this test: a type, its table and a fold.
type eventCounts struct{}

func (eventCounts) Name() string { return "event_counts" }

func (eventCounts) Tables() []engine.Table {
	return []engine.Table{{Name: "event_counts", Model: (*eventCountRow)(nil)}}
}

func (eventCounts) NewFold(g engine.Tables) engine.Fold {
	return &countFold{table: g.Name("event_counts"), counts: map[string]*eventCountRow{}}
}

type countFold struct {
	table  string
	counts map[string]*eventCountRow
}

func (f *countFold) Load(ctx context.Context, db bun.IDB, _ []events.Envelope) error {
	var rows []eventCountRow
	if err := db.NewSelect().Model(&rows).ModelTableExpr(f.table + " AS ec").Scan(ctx); err != nil {
		return err
	}
	for i := range rows {
		f.counts[rows[i].Type] = &rows[i]
	}
	return nil
}

func (f *countFold) Apply(e events.Envelope) error {
	c := f.counts[string(e.Type)]
	if c == nil {
		c = &eventCountRow{Type: string(e.Type)}
		f.counts[c.Type] = c
	}
	c.Count++
	return nil
}

func (f *countFold) Write(ctx context.Context, db bun.IDB, w engine.Writer) error {
	rows := engine.Values(f.counts)
	if len(rows) == 0 {
		return nil
	}
	return w.Add(ctx, db.NewInsert().Model(&rows).ModelTableExpr(f.table).
		On("CONFLICT (type) DO UPDATE").Set("count = EXCLUDED.count"))
}

func (f *countFold) Stream() []engine.RowSet { return nil }

func (f *countFold) Final() []engine.RowSet {
	return []engine.RowSet{engine.Rows(f.table, engine.Values(f.counts))}
}

// TestANewReadModelIsOneRegistration: a projection registered next to the real ones is
// created, applied batch by batch under the shared checkpoint, and rebuilt, with no other
// change to the engine.
func TestANewReadModelIsOneRegistration(t *testing.T) {
	projs := append(All(), eventCounts{}) // the registration line
	alice, bob := projectiontest.AliceID, projectiontest.BobID
	evs := projectiontest.Envelopes(1,
		projectiontest.Registered(alice, "Alice"), projectiontest.Registered(bob, "Bob"),
		events.UserRenamed{UserID: alice, Name: "Alice B."}, events.UserRenamed{UserID: bob, Name: "Bobby"},
		events.UserRenamed{UserID: alice, Name: "Alice C."},
	)
	want := map[string]int64{string(events.TypeUserRegistered): 2, string(events.TypeUserRenamed): 3}
	counts := func(t *testing.T, db *bun.DB) map[string]int64 {
		t.Helper()
		var rows []eventCountRow
		if err := db.NewSelect().Model(&rows).ModelTableExpr(CurrentTables.Name("event_counts") + " AS ec").Scan(context.Background()); err != nil {
			t.Fatal(err)
		}
		out := map[string]int64{}
		for _, r := range rows {
			out[r.Type] = r.Count
		}
		return out
	}
	for _, b := range testBackends {
		t.Run(b.name, func(t *testing.T) {
			ctx := context.Background()
			db, _ := newSchemaDB(t, b)
			if err := engine.CreateSchema(ctx, db, projs, CurrentTables); err != nil {
				t.Fatal(err)
			}
			// Live: two batches, each event in; the counts and the real read models out.
			for _, batch := range [][]events.Envelope{evs[:2], evs[2:]} {
				if _, err := engine.ApplyBatch(ctx, db, projs, CurrentTables, batch); err != nil {
					t.Fatal(err)
				}
			}
			if got := counts(t, db); fmt.Sprint(got) != fmt.Sprint(want) {
				t.Fatalf("live: counts %v, want %v", got, want)
			}
			if u := projectiontest.ReadUsers(t, db, CurrentTables); len(u) != 2 {
				t.Fatalf("live: %d users next to the new read model, want 2", len(u))
			}
			// Rebuild: the bulk path folds the whole stream into fresh tables and swaps them in.
			read := func(_ context.Context, from uint64, limit int) ([]events.Envelope, error) {
				if from > uint64(len(evs)) {
					return nil, nil
				}
				return evs[from-1 : min(int(from)-1+limit, len(evs))], nil
			}
			last := func(context.Context) (uint64, error) { return uint64(len(evs)), nil }
			if _, err := engine.Rebuild(ctx, engine.RebuildConfig{DB: db, Projections: projs, Read: read, Last: last}); err != nil {
				t.Fatal(err)
			}
			if got := counts(t, db); fmt.Sprint(got) != fmt.Sprint(want) {
				t.Fatalf("rebuilt: counts %v, want %v", got, want)
			}
		})
	}
}
