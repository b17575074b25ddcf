package projections_test

import (
	"context"
	"flag"
	"fmt"
	"testing"
	"time"

	"github.com/google/uuid"
	"github.com/nats-io/nats.go/jetstream"
	"github.com/uptrace/bun"

	"github.com/identityd/identityd/events"
	"github.com/identityd/identityd/events/embedded"
	"github.com/identityd/identityd/events/eventstore"
	"github.com/identityd/identityd/events/eventstoretest"
	"github.com/identityd/identityd/projections"
	"github.com/identityd/identityd/projections/dbtest"
)

// rebuildEvents is the size of the stream the rebuild benchmark replays; the full size
// is `go test -bench Rebuild -args -rebuild-events 1000000`.
var rebuildEvents = flag.Int("rebuild-events", 100_000, "events in the stream BenchmarkRebuild replays")

// seedStream publishes a realistic history of n events: users who register, set a password,
// log in, rename themselves, and create and revoke API tokens.
func seedStream(b *testing.B, n int) *eventstore.Store {
	b.Helper()
	st, _ := eventstoretest.Start(b, embedded.Config{SyncInterval: time.Minute}) // seeding need not fsync each event
	js, err := jetstream.New(st.Conn(), jetstream.WithPublishAsyncMaxPending(4096))
	if err != nil {
		b.Fatal(err)
	}
	at := time.Now().UTC().Truncate(time.Microsecond)
	meta := events.Metadata{Actor: "system", RequestID: "bench"}
	chains := map[uuid.UUID]string{}
	publish := func(user uuid.UUID, e events.Event) {
		m, chain, err := events.Encode(eventstoretest.Signer, uuid.NewString(), at, meta, chains[user], e)
		if err != nil {
			b.Fatal(err)
		}
		chains[user] = chain
		if _, err := js.PublishMsgAsync(m); err != nil {
			b.Fatal(err)
		}
	}
	for i := 0; i < n; {
		id := uuid.New()
		tok := uuid.New()
		perUser := []events.Event{
			events.UserRegistered{UserID: id, Email: fmt.Sprintf("u%d@example.com", i), Name: "User", PersonalOrgSlug: fmt.Sprint("user-", i), RegisteredAt: at},
			events.PasswordSet{UserID: id, PasswordHash: "$argon2id$v=19$m=64,t=1,p=1$c2FsdA$aGFzaA"},
			events.SessionStarted{UserID: id, SessionID: uuid.New(), Digest: uuid.NewString() + uuid.NewString(), StartedAt: at, ExpiresAt: at.Add(time.Hour)},
			events.Renamed(id, "User", "Renamed"),
			events.TokenCreated{UserID: id, TokenID: tok, Description: "ci", Digest: uuid.NewString() + uuid.NewString(), CreatedAt: at},
			events.TokenCreated{UserID: id, TokenID: uuid.New(), Description: "laptop", Digest: uuid.NewString() + uuid.NewString(), CreatedAt: at},
			events.TokenRevoked{UserID: id, TokenID: tok},
			events.Renamed(id, "Renamed", "Final"),
		}
		for _, e := range perUser {
			if i == n {
				break
			}
			publish(id, e)
			i++
		}
	}
	select {
	case <-js.PublishAsyncComplete():
	case <-time.After(time.Duration(n/500+60) * time.Second):
		b.Fatal("seeding the stream timed out")
	}
	if last, err := st.LastSequence(context.Background()); err != nil || last != uint64(n) {
		b.Fatalf("stream holds %d events (err %v), want %d", last, err, n)
	}
	return st
}

// BenchmarkRebuild replays a 100,000-event stream (-rebuild-events) into fresh read-model tables and switches
// over, as `identityctl projections rebuild` does; it reports events/s. Right after, on the
// same database, it times the baseline the target is set against (`make bench`'s: a plain bun
// bulk insert of as many user rows, 1,000 per INSERT) and reports it (insert-rows/s) and the
// ratio (x-insert; the target is ≥ 0.5), which says more than either figure on a shared,
// noisy machine. Run with `make bench-rebuild` (PostgreSQL and SQLite).
func BenchmarkRebuild(b *testing.B) {
	benchEvents := *rebuildEvents
	st := seedStream(b, benchEvents)
	for _, backend := range dbtest.Backends {
		b.Run(backend.Name, func(b *testing.B) {
			db := dbtest.Open(b, backend.URL(b))
			ctx := context.Background()
			if err := projections.CreateSchema(ctx, db, projections.CurrentTables); err != nil {
				b.Fatal(err)
			}
			b.ResetTimer()
			var total time.Duration
			for i := 0; i < b.N; i++ {
				res, err := projections.Rebuild(ctx, projections.RebuildConfig{
					DB:     db,
					Read:   st.ReadAll,
					Replay: st.Replay,
					Last:   st.LastSequence,
				})
				if err != nil {
					b.Fatal(err)
				}
				if res.Events != uint64(benchEvents) {
					b.Fatalf("replayed %d events, want %d", res.Events, benchEvents)
				}
				total += res.Duration
				b.Logf("rebuild of %d events: %v %v", res.Events, res.Duration.Round(time.Millisecond), res.Phases)
			}
			b.StopTimer()
			rate := float64(benchEvents*b.N) / total.Seconds()
			baseline := bulkInsertBaseline(b, db, benchEvents)
			b.ReportMetric(rate, "events/s")
			b.ReportMetric(baseline, "insert-rows/s")
			b.ReportMetric(rate/baseline, "x-insert")
		})
	}
}

// bulkInsertBaseline times a plain bun bulk insert of n user-like rows, 1,000 per INSERT, into
// a table with a primary key (bench/cmd/identityd-bench's baseline) and returns rows/s.
func bulkInsertBaseline(b *testing.B, db *bun.DB, n int) float64 {
	b.Helper()
	ctx := context.Background()
	// The users table's shape (projections.UserRow), under a scratch name.
	if _, err := db.NewDropTable().Model((*projections.UserRow)(nil)).ModelTableExpr("bench_bulk").IfExists().Exec(ctx); err != nil {
		b.Fatal(err)
	}
	if _, err := db.NewCreateTable().Model((*projections.UserRow)(nil)).ModelTableExpr("bench_bulk").Exec(ctx); err != nil {
		b.Fatal(err)
	}
	now := time.Now().UTC()
	start := time.Now()
	for from := 0; from < n; from += 1000 {
		rows := make([]projections.UserRow, 0, 1000)
		for i := from; i < min(from+1000, n); i++ {
			rows = append(rows, projections.UserRow{ID: uuid.New(), Email: fmt.Sprint("bulk", i, "@example.com"), Name: "Bulk User",
				PersonalOrgSlug: fmt.Sprint("bulk-user-", i), CreatedAt: now, UpdatedAt: now, Version: uint64(i)})
		}
		if _, err := db.NewInsert().Model(&rows).ModelTableExpr("bench_bulk").Exec(ctx); err != nil {
			b.Fatal(err)
		}
	}
	rate := float64(n) / time.Since(start).Seconds()
	if _, err := db.NewDropTable().Model((*projections.UserRow)(nil)).ModelTableExpr("bench_bulk").Exec(ctx); err != nil {
		b.Fatal(err)
	}
	return rate
}
