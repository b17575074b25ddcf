package projections

import (
	"context"
	"testing"

	"github.com/google/uuid"

	"github.com/identityd/identityd/events"
	"github.com/identityd/identityd/projections/projectiontest"
)

// TestVerifyHashChains: events written before tamper evidence (no chain hash) are accepted,
// but once an aggregate's chain has begun, an event without a hash, or with a wrong one, is
// reported.
func TestVerifyHashChains(t *testing.T) {
	ctx := context.Background()
	alice := uuid.New()
	batch := projectiontest.Envelopes(1, projectiontest.Registered(alice, "Alice"), events.Renamed(alice, "Alice", "A"), events.Renamed(alice, "A", "B"), events.Renamed(alice, "B", "C"))
	chain := ""
	for i := range batch {
		if i == 0 {
			continue // a legacy event: no hash
		}
		batch[i].ContentHash = "content-" + batch[i].ID
		chain = events.ChainHash(chain, batch[i].ContentHash)
		batch[i].ChainHash = chain
	}
	replayed := batch[1]
	replayed.Sequence = uint64(len(batch) + 1)
	for _, c := range []struct {
		name   string
		mutate func([]events.Envelope) []events.Envelope
		// applied is how many of the events the projector applies (the rest it refuses and
		// passes); 0: all of them.
		applied int
		broken  uint64 // sequence reported first, 0 for none
	}{
		{"intact", func(b []events.Envelope) []events.Envelope { return b }, 0, 0},
		{"hash removed after the chain began", func(b []events.Envelope) []events.Envelope { b[3].ChainHash = ""; return b }, 0, 4},
		// Stored bytes altered: the signature fails too, so the projector refused the event
		// and, the chain broken, every later one of the aggregate.
		{"content altered", func(b []events.Envelope) []events.Envelope { b[2].ContentHash = "forged"; return b }, 2, 3},
		// A genuine event appended again: the projector drops it by its id, verify by its
		// chain; nothing else differs.
		{"replayed", func(b []events.Envelope) []events.Envelope { return append(b, replayed) }, 0, replayed.Sequence},
	} {
		t.Run(c.name, func(t *testing.T) {
			db, _ := newSchemaDB(t, testBackends[1], CurrentTables)
			evs := c.mutate(append([]events.Envelope(nil), batch...))
			if c.applied == 0 {
				if _, err := applyBatch(ctx, db, CurrentTables, evs); err != nil {
					t.Fatal(err)
				}
			} else {
				if _, err := applyBatch(ctx, db, CurrentTables, evs[:c.applied]); err != nil {
					t.Fatal(err)
				}
				if err := skipPast(ctx, db, CurrentTables, uint64(len(evs))); err != nil {
					t.Fatal(err)
				}
			}
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
			var got uint64
			for _, d := range rep.Differences {
				if d.Kind == "hash_chain_broken" && got == 0 {
					got = d.Sequence
				} else if d.Kind != "hash_chain_broken" {
					t.Errorf("unexpected difference %+v", d)
				}
			}
			if got != c.broken {
				t.Fatalf("broken chain reported at %d, want %d (%+v)", got, c.broken, rep.Differences)
			}
		})
	}
}
