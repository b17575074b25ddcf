package engine_test

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/google/uuid"
	"github.com/uptrace/bun"

	"github.com/identityd/identityd/events"
	. "github.com/identityd/identityd/projections" //nolint:revive // the registered read models, under the names the fixtures use
	"github.com/identityd/identityd/projections/engine"
	"github.com/identityd/identityd/projections/projectiontest"
)

// The bulk load's pipeline (read-ahead, fold, audit writer) on a history small enough for unit
// tests, with chunks small enough that every stage runs many times.

// pipelineHistory is a history of n users: registration, password, two tokens (one revoked),
// a session started and ended, an email claim, a rename; every third user is deleted.
func pipelineHistory(n int) []events.Envelope {
	var evs []events.Event
	for i := range n {
		id := uuid.New()
		tok, tok2, ses := uuid.New(), uuid.New(), uuid.New()
		evs = append(evs,
			events.EmailClaimed{Versioned: events.V(), EmailHash: strings.Repeat(fmt.Sprintf("%02x", i%256), 32), UserID: id},
			projectiontest.Registered(id, fmt.Sprintf("User%d", i)),
			events.PasswordSet{Versioned: events.V(), UserID: id, PasswordHash: "$argon2id$v=19$m=64,t=1,p=1$c2FsdA$aGFzaA"},
			projectiontest.TokenCreated(id, tok, projectiontest.T0, nil),
			projectiontest.TokenCreated(id, tok2, projectiontest.T0, projectiontest.Ptr(projectiontest.T0.Add(time.Hour))),
			projectiontest.SessionStarted(id, ses, projectiontest.T0),
			events.TokenRevoked{Versioned: events.V(), UserID: id, TokenID: tok},
			events.Renamed(id, fmt.Sprintf("User%d", i), fmt.Sprintf("Renamed\t%d\\", i)),
			events.SessionEnded{Versioned: events.V(), UserID: id, SessionID: ses},
		)
		if i%3 == 0 {
			evs = append(evs, events.UserDeleted{Versioned: events.V(), UserID: id})
		}
	}
	out := projectiontest.Envelopes(1, evs...)
	for i := range out {
		out[i].Metadata = events.Metadata{Actor: fmt.Sprintf("user:%d", i%7), RequestID: fmt.Sprint("req\n", i), UserAgent: "ua\t1"}
	}
	return out
}

// fakeStream serves a history as a StreamReader does: from a sequence on, skipping absent
// sequences (deleted messages), up to a limit.
type fakeStream struct {
	evs     []events.Envelope
	visible uint64 // the reader sees nothing after this sequence (0: everything)
	failAt  uint64 // a read that would return this sequence fails instead (0: never)

	mu    sync.Mutex
	reads int
}

func (s *fakeStream) Read(ctx context.Context, from uint64, limit int) ([]events.Envelope, error) {
	if err := ctx.Err(); err != nil {
		return nil, err
	}
	s.mu.Lock()
	s.reads++
	s.mu.Unlock()
	var out []events.Envelope
	for _, e := range s.evs {
		if e.Sequence < from || (s.visible > 0 && e.Sequence > s.visible) {
			continue
		}
		if e.Sequence == s.failAt {
			return nil, fmt.Errorf("%w: seq %d: test", events.ErrUndecodable, e.Sequence)
		}
		if out = append(out, e); len(out) == limit {
			break
		}
	}
	return out, nil
}

// Replay serves the history as a StreamReplayer does, on top of Read: batches in order, up to
// end, ending quietly where the reader sees nothing more.
func (s *fakeStream) Replay(ctx context.Context, from, end uint64, batch int, each func([]events.Envelope) error) error {
	for from <= end {
		evs, err := s.Read(ctx, from, batch)
		if err != nil {
			return err
		}
		for len(evs) > 0 && evs[len(evs)-1].Sequence > end {
			evs = evs[:len(evs)-1]
		}
		if len(evs) == 0 {
			return nil
		}
		if err := each(evs); err != nil {
			return err
		}
		from = evs[len(evs)-1].Sequence + 1
	}
	return nil
}

func (s *fakeStream) Last(context.Context) (uint64, error) {
	return s.evs[len(s.evs)-1].Sequence, nil
}

// smallChunks makes the audit writer write a chunk every few rows.
func smallChunks(t *testing.T) {
	t.Helper()
	t.Cleanup(engine.SetChunks(700, 3))
}

// dumpGeneration renders every table of a generation and its checkpoint comparably.
func dumpGeneration(t *testing.T, db *bun.DB, g Tables) string {
	t.Helper()
	var b strings.Builder
	for _, u := range projectiontest.ReadUsers(t, db, g) {
		fmt.Fprintln(&b, projectiontest.FmtUser(u))
	}
	for _, r := range projectiontest.ReadTokens(t, db, g) {
		fmt.Fprintln(&b, projectiontest.FmtToken(r))
	}
	for _, r := range projectiontest.ReadSessions(t, db, g) {
		fmt.Fprintln(&b, projectiontest.FmtSession(r))
	}
	audit, err := NewReadModel(db, g).AuditEvents(context.Background(), AuditFilter{Limit: 1 << 20})
	if err != nil {
		t.Fatal(err)
	}
	for _, r := range audit {
		uid := "<nil>"
		if r.UserID != nil {
			uid = r.UserID.String()
		}
		fmt.Fprintf(&b, "audit %d %s %s %s %s %q %q %q %q %s %d %s\n", r.Sequence, r.EventID, r.Type, r.Aggregate, uid,
			r.Actor, r.RequestID, r.SourceIP, r.UserAgent, projectiontest.FmtTime(r.OccurredAt), r.SchemaVersion, r.Data)
	}
	fmt.Fprintf(&b, "checkpoint %d\n", projectiontest.CheckpointOf(t, db, g))
	return b.String()
}

// liveDump is what the live projector's path (applyBatch) makes of a history.
func liveDump(t *testing.T, b testBackend, evs []events.Envelope) string {
	t.Helper()
	db, _ := newSchemaDB(t, b, CurrentTables)
	for len(evs) > 0 {
		n := min(10, len(evs))
		if _, err := applyBatch(context.Background(), db, CurrentTables, evs[:n]); err != nil {
			t.Fatal(err)
		}
		evs = evs[n:]
	}
	return dumpGeneration(t, db, CurrentTables)
}

// TestBulkPipelineEqualsLive: whatever the batch size, and with sequences missing from the
// stream (deleted messages, which the reader skips), the pipelined bulk load with many small
// audit chunks builds exactly the tables the live projector builds.
func TestBulkPipelineEqualsLive(t *testing.T) {
	smallChunks(t)
	full := pipelineHistory(40)
	var holed []events.Envelope // every 11th sequence deleted, and a run of 20
	for _, e := range full {
		if e.Sequence%11 != 5 && (e.Sequence < 100 || e.Sequence > 119) {
			holed = append(holed, e)
		}
	}
	for _, b := range testBackends {
		t.Run(b.name, func(t *testing.T) {
			for name, evs := range map[string][]events.Envelope{"whole": full, "holes": holed} {
				want := liveDump(t, b, evs)
				for _, batch := range []int{1, 4, 9, 64, 1000} {
					for _, replay := range []bool{false, true} { // range reads, then one replay
						db, _ := newSchemaDB(t, b)
						s := &fakeStream{evs: evs}
						cfg := RebuildConfig{DB: db, Read: s.Read, Last: s.Last, Batch: batch}
						if replay {
							cfg.Replay = s.Replay
						}
						res, err := Rebuild(context.Background(), cfg)
						if err != nil {
							t.Fatalf("%s, batch %d, replay %v: %v", name, batch, replay, err)
						}
						last := evs[len(evs)-1].Sequence
						if res.Position != last || res.Events != uint64(len(evs)) {
							t.Fatalf("%s, batch %d, replay %v: %+v, want position %d, %d events", name, batch, replay, res, last, len(evs))
						}
						if got := dumpGeneration(t, db, CurrentTables); got != want {
							t.Fatalf("%s, batch %d, replay %v: rebuilt tables differ from the projected ones:\nprojected:\n%s\nrebuilt:\n%s", name, batch, replay, want, got)
						}
					}
				}
			}
		})
	}
}

// TestRebuildEmptyStream: nothing to replay still makes (empty) tables and switches over.
func TestRebuildEmptyStream(t *testing.T) {
	for _, b := range testBackends {
		t.Run(b.name, func(t *testing.T) {
			db, _ := newSchemaDB(t, b)
			read := func(context.Context, uint64, int) ([]events.Envelope, error) { return nil, nil }
			last := func(context.Context) (uint64, error) { return 0, nil }
			res, err := Rebuild(context.Background(), RebuildConfig{DB: db, Read: read, Last: last})
			if err != nil || res.Events != 0 || res.Position != 0 {
				t.Fatalf("%+v, %v", res, err)
			}
			if got := dumpGeneration(t, db, CurrentTables); got != "checkpoint 0\n" {
				t.Fatalf("tables: %q", got)
			}
		})
	}
}

// TestBulkShortReadAborts: when the reader (range reads, then a replay) cannot see the events up
// to the stream's last sequence (far short of it, or just short), the rebuild fails without switching, promptly,
// and the live tables stay as they were.
func TestBulkShortReadAborts(t *testing.T) {
	smallChunks(t)
	evs := pipelineHistory(30)
	last := evs[len(evs)-1].Sequence
	for _, b := range testBackends {
		t.Run(b.name, func(t *testing.T) {
			db, _ := newSchemaDB(t, b)
			good := &fakeStream{evs: evs[:len(evs)/2]}
			if _, err := Rebuild(context.Background(), RebuildConfig{DB: db, Read: good.Read, Last: good.Last, Batch: 8}); err != nil {
				t.Fatal(err)
			}
			before := dumpGeneration(t, db, CurrentTables)
			for i, visible := range []uint64{last / 3, last - 3, last / 3, last - 3} {
				ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
				s := &fakeStream{evs: evs, visible: visible}
				cfg := RebuildConfig{DB: db, Read: s.Read, Last: s.Last, Batch: 8}
				if i >= 2 {
					cfg.Replay = s.Replay
				}
				_, err := Rebuild(ctx, cfg)
				cancel()
				want := fmt.Sprintf("the stream ends at %d but reading stopped at %d; nothing switched", last, visible)
				if err == nil || !strings.Contains(err.Error(), want) {
					t.Fatalf("visible up to %d: %v, want %q", visible, err, want)
				}
				if got := dumpGeneration(t, db, CurrentTables); got != before {
					t.Fatalf("visible up to %d: the live tables changed:\n%s\nwant\n%s", visible, got, before)
				}
			}
		})
	}
}

// TestBulkStopsAtUndecodableEvent: an event the reader (range reads, then a replay) cannot
// decode stops the rebuild with that error, wherever it falls relative to the read-ahead, and the live tables stay as they
// were.
func TestBulkStopsAtUndecodableEvent(t *testing.T) {
	smallChunks(t)
	evs := pipelineHistory(30)
	for _, b := range testBackends {
		t.Run(b.name, func(t *testing.T) {
			db, _ := newSchemaDB(t, b)
			good := &fakeStream{evs: evs[:50]}
			if _, err := Rebuild(context.Background(), RebuildConfig{DB: db, Read: good.Read, Last: good.Last, Batch: 8}); err != nil {
				t.Fatal(err)
			}
			before := dumpGeneration(t, db, CurrentTables)
			for i, bad := range []uint64{1, 8, 9, 150, evs[len(evs)-1].Sequence, 1, 9, 150, evs[len(evs)-1].Sequence} {
				s := &fakeStream{evs: evs, failAt: bad}
				cfg := RebuildConfig{DB: db, Read: s.Read, Last: s.Last, Batch: 8}
				if i >= 5 {
					cfg.Replay = s.Replay
				}
				_, err := Rebuild(context.Background(), cfg)
				if !errors.Is(err, events.ErrUndecodable) || !strings.Contains(err.Error(), fmt.Sprintf("seq %d", bad)) {
					t.Fatalf("undecodable seq %d: %v", bad, err)
				}
				if got := dumpGeneration(t, db, CurrentTables); got != before {
					t.Fatalf("undecodable seq %d: the live tables changed", bad)
				}
			}
		})
	}
}

// TestBulkWriteFailureIsTheError: when the audit writer fails, the load stops and reports the
// writer's error, not the cancellation it causes in the other stages.
func TestBulkWriteFailureIsTheError(t *testing.T) {
	smallChunks(t)
	evs := pipelineHistory(30)
	for _, b := range testBackends {
		t.Run(b.name, func(t *testing.T) {
			db, _ := newSchemaDB(t, b)
			next := Tables{Suffix: "broken"}
			if err := engine.CreateTables(context.Background(), db, All(), next); err != nil {
				t.Fatal(err)
			}
			if _, err := db.ExecContext(context.Background(), "DROP TABLE "+tableOf(next, "audit_events")); err != nil {
				t.Fatal(err)
			}
			s := &fakeStream{evs: evs}
			_, _, err := engine.BulkLoad(context.Background(), db, All(), next, RebuildConfig{Read: s.Read, Batch: 4}, evs[len(evs)-1].Sequence)
			if err == nil || !strings.Contains(err.Error(), tableOf(next, "audit_events")) || errors.Is(err, context.Canceled) {
				t.Fatalf("bulk load into a missing audit table: %v", err)
			}
			if pos := projectiontest.CheckpointOf(t, db, next); pos != 0 {
				t.Fatalf("checkpoint moved to %d", pos)
			}
		})
	}
}

// TestBulkFinishIsAtomic: the folded users, tokens and sessions are written in the same
// transaction as the checkpoint (on PostgreSQL, COPY on that transaction's connection): when
// the checkpoint cannot be set, none of them stays.
func TestBulkFinishIsAtomic(t *testing.T) {
	smallChunks(t)
	evs := pipelineHistory(30)
	for _, b := range testBackends {
		t.Run(b.name, func(t *testing.T) {
			ctx := context.Background()
			db, _ := newSchemaDB(t, b)
			next := Tables{Suffix: "atomic"}
			if err := engine.CreateTables(ctx, db, All(), next); err != nil {
				t.Fatal(err)
			}
			if _, err := db.ExecContext(ctx, "ALTER TABLE projection_checkpoints RENAME TO moved_checkpoints"); err != nil {
				t.Fatal(err)
			}
			s := &fakeStream{evs: evs}
			if _, _, err := engine.BulkLoad(ctx, db, All(), next, RebuildConfig{Read: s.Read, Batch: 4}, evs[len(evs)-1].Sequence); err == nil {
				t.Fatal("bulk load without a checkpoint table succeeded")
			}
			if u, tk, ss := projectiontest.ReadUsers(t, db, next), projectiontest.ReadTokens(t, db, next), projectiontest.ReadSessions(t, db, next); len(u)+len(tk)+len(ss) > 0 {
				t.Fatalf("%d users, %d tokens, %d sessions written without their checkpoint", len(u), len(tk), len(ss))
			}
		})
	}
}

// TestReadAheadOrder drives readAhead alone: events come out in order, each once, across
// ranges that overshoot (holes), ranges that are entirely holes, and a short read at the end
// of what the reader can see, after which it reads one batch at a time.
func TestReadAheadOrder(t *testing.T) {
	all := pipelineHistory(20)
	var evs []events.Envelope
	for _, e := range all {
		if e.Sequence%7 != 0 && (e.Sequence < 40 || e.Sequence > 60) {
			evs = append(evs, e)
		}
	}
	end := all[len(all)-1].Sequence
	for _, visible := range []uint64{0, 97} {
		for _, batch := range []int{1, 3, 10, 500} {
			s := &fakeStream{evs: evs, visible: visible}
			ra := engine.NewReadAhead(context.Background(), s.Read, 1, end, batch)
			var got []uint64
			for {
				out, _, err := ra.Next(context.Background())
				if err != nil {
					t.Fatal(err)
				}
				if len(out) == 0 {
					break
				}
				if len(out) > batch {
					t.Fatalf("batch %d: %d events at once", batch, len(out))
				}
				for _, e := range out {
					got = append(got, e.Sequence)
				}
			}
			ra.Stop()
			var want []uint64
			for _, e := range evs {
				if visible == 0 || e.Sequence <= visible {
					want = append(want, e.Sequence)
				}
			}
			if fmt.Sprint(got) != fmt.Sprint(want) {
				t.Fatalf("visible %d, batch %d:\n got  %v\n want %v", visible, batch, got, want)
			}
		}
	}
}
