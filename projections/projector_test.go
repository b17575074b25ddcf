package projections_test

import (
	"bytes"
	"context"
	"fmt"
	"io"
	"log/slog"
	"math/rand/v2"
	"strconv"
	"testing"
	"time"

	"github.com/google/uuid"
	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
	"github.com/uptrace/bun"

	"github.com/identityd/identityd/domain"
	"github.com/identityd/identityd/events"
	"github.com/identityd/identityd/events/embedded"
	"github.com/identityd/identityd/events/eventstore"
	"github.com/identityd/identityd/events/eventstoretest"
	"github.com/identityd/identityd/projections"
	"github.com/identityd/identityd/projections/dbtest"
)

func startStream(t *testing.T) *eventstore.Store {
	t.Helper()
	st, _ := eventstoretest.Start(t, embedded.Config{})
	return st
}

// fold is the expected read model, computed from the stream alone.
type fold struct {
	names    map[uuid.UUID]string
	versions map[uuid.UUID]uint64
	tokens   map[uuid.UUID]map[uuid.UUID]bool
}

// writeHistory appends a random history for users and returns the stream's fold.
func writeHistory(t *testing.T, st *eventstore.Store, users, perUser int) (fold, uint64) {
	t.Helper()
	ctx := context.Background()
	f := fold{names: map[uuid.UUID]string{}, versions: map[uuid.UUID]uint64{}, tokens: map[uuid.UUID]map[uuid.UUID]bool{}}
	ids := make([]uuid.UUID, users)
	chains := map[uuid.UUID]string{}
	var last uint64
	appendOne := func(id uuid.UUID, e events.Event) {
		changes := []events.Change{{ID: uuid.Must(uuid.NewV7()), At: time.Now().UTC().Truncate(time.Microsecond), Event: e}}
		seq, err := st.Append(ctx, events.Metadata{Actor: "system"},
			[]events.Expectation{{Aggregate: events.UserAggregate(id), Version: f.versions[id], Chain: chains[id]}}, changes)
		if err != nil {
			t.Fatal(err)
		}
		f.versions[id], chains[id], last = seq, changes[0].Chain, seq
	}
	for i := range ids {
		ids[i] = uuid.New()
		f.names[ids[i]] = fmt.Sprint("user ", i)
		f.tokens[ids[i]] = map[uuid.UUID]bool{}
		appendOne(ids[i], events.UserRegistered{Versioned: events.V(), UserID: ids[i], Email: fmt.Sprintf("u%d@example.com", i),
			Name: f.names[ids[i]], PersonalOrgSlug: fmt.Sprint("u-", i), RegisteredAt: time.Now().UTC().Truncate(time.Microsecond)})
	}
	for n := 0; n < users*perUser; n++ {
		id := ids[rand.IntN(len(ids))]
		switch rand.IntN(3) {
		case 0:
			f.names[id] = fmt.Sprint("renamed ", n)
			appendOne(id, events.UserRenamed{Versioned: events.V(), UserID: id, Name: f.names[id]})
		case 1:
			tid := uuid.New()
			f.tokens[id][tid] = true
			appendOne(id, events.TokenCreated{Versioned: events.V(), UserID: id, TokenID: tid, Digest: domain.Digest(tid.String()),
				CreatedAt: time.Now().UTC().Truncate(time.Microsecond)})
		default:
			for tid := range f.tokens[id] {
				delete(f.tokens[id], tid)
				appendOne(id, events.TokenRevoked{Versioned: events.V(), UserID: id, TokenID: tid})
				break
			}
		}
	}
	return f, last
}

func checkFold(t *testing.T, db *bun.DB, f fold) {
	t.Helper()
	ctx := context.Background()
	rm := projections.NewReadModel(db, projections.CurrentTables)
	for id, name := range f.names {
		u, err := rm.User(ctx, id)
		if err != nil {
			t.Fatalf("user %s: %v", id, err)
		}
		if u.Name != name || u.Version != f.versions[id] {
			t.Fatalf("user %s: read model (%q, v%d), stream (%q, v%d)", id, u.Name, u.Version, name, f.versions[id])
		}
		toks, err := rm.Tokens(ctx, id)
		if err != nil {
			t.Fatal(err)
		}
		if len(toks) != len(f.tokens[id]) {
			t.Fatalf("user %s: %d tokens in the read model, %d in the stream", id, len(toks), len(f.tokens[id]))
		}
		for _, tk := range toks {
			if !f.tokens[id][tk.ID] {
				t.Fatalf("user %s: token %s should not be live", id, tk.ID)
			}
		}
	}
}

func newProjector(t *testing.T, db *bun.DB, js jetstream.JetStream, batch int) (*projections.Projector, chan error) {
	t.Helper()
	p, err := projections.NewProjector(context.Background(), projections.ProjectorConfig{
		DB: db, JetStream: js, Keys: eventstoretest.Keys, MaxBatch: batch, Logger: slog.New(slog.NewTextHandler(io.Discard, nil)),
	})
	if err != nil {
		t.Fatal(err)
	}
	done := make(chan error, 1)
	go func() { done <- p.Run(context.Background()) }()
	<-p.Running()
	return p, done
}

// verifyAll runs the `identityctl verify` check: read models and hash chains against the fold
// of the stream.
func verifyAll(t *testing.T, db *bun.DB, st *eventstore.Store) {
	t.Helper()
	rep, err := projections.Verify(context.Background(), projections.VerifyConfig{
		DB:   db,
		Read: st.ReadAll,
		Last: st.LastSequence,
	})
	if err != nil {
		t.Fatal(err)
	}
	if len(rep.Differences) > 0 || rep.Events != rep.StreamLast {
		t.Fatalf("verify: %d events of %d, %d differences, the first: %+v", rep.Events, rep.StreamLast,
			len(rep.Differences), rep.Differences[:min(3, len(rep.Differences))])
	}
}

// stopProjector closes a projector and checks that Run ended cleanly.
func stopProjector(t *testing.T, p *projections.Projector, done chan error) {
	t.Helper()
	_ = p.Close()
	if err := <-done; err != nil {
		t.Errorf("projector run: %v", err)
	}
}

// TestProjectorSurvivesCrashes kills projectors mid-batch (their database connections cut
// under them, then the process's projector dropped) again and again while the stream grows;
// a fresh projector then catches up, and the read model equals the fold of the stream:
// nothing lost, nothing applied twice.
func TestProjectorSurvivesCrashes(t *testing.T) {
	for _, b := range dbtest.Backends {
		t.Run(b.Name, func(t *testing.T) {
			st := startStream(t)
			dbURL := b.URL(t)
			f, last := writeHistory(t, st, 40, 25)
			ctx := context.Background()
			var positions []uint64
			for round := 0; round < 4; round++ {
				db, err := projections.OpenDB(ctx, projections.DBConfig{URL: dbURL})
				if err != nil {
					t.Fatal(err)
				}
				p, done := newProjector(t, db, st.JetStream(), 50)
				time.Sleep(time.Duration(20+rand.IntN(60)) * time.Millisecond)
				_ = db.Close() // the crash: every statement from here on fails mid-batch
				stopProjector(t, p, done)
				positions = append(positions, p.Position())
			}
			t.Logf("checkpoints after each crash: %v of %d", positions, last)
			if positions[0] >= last {
				t.Fatalf("the first projector finished before it was killed; the test proves nothing")
			}
			db := dbtest.Open(t, dbURL)
			p, done := newProjector(t, db, st.JetStream(), 500)
			wctx, cancel := context.WithTimeout(ctx, 60*time.Second)
			defer cancel()
			if err := p.WaitFor(wctx, last); err != nil {
				t.Fatal(err)
			}
			checkFold(t, db, f)
			verifyAll(t, db, st)
			pos, err := projections.NewReadModel(db, projections.CurrentTables).Position(ctx)
			if err != nil || pos != last {
				t.Fatalf("checkpoint %d (err %v), stream ends at %d", pos, err, last)
			}
			stopProjector(t, p, done)
		})
	}
}

// TestTwoProjectorsShareOneDatabase: two instances project into one database at once; the
// checkpoint lock makes each event apply once.
func TestTwoProjectorsShareOneDatabase(t *testing.T) {
	st := startStream(t)
	dbURL := dbtest.PostgresURL(t)
	db1, db2 := dbtest.Open(t, dbURL), dbtest.Open(t, dbURL)
	p1, d1 := newProjector(t, db1, st.JetStream(), 20)
	p2, d2 := newProjector(t, db2, st.JetStream(), 30)
	f, last := writeHistory(t, st, 30, 20)
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	for _, p := range []*projections.Projector{p1, p2} {
		if err := p.WaitFor(ctx, last); err != nil {
			t.Fatal(err)
		}
	}
	checkFold(t, db1, f)
	verifyAll(t, db1, st)
	stopProjector(t, p1, d1)
	stopProjector(t, p2, d2)
}

// TestPoisonEventIsSetAside: an event no reducer can decode goes to the poison stream and the
// projection carries on with the events after it.
func TestPoisonEventIsSetAside(t *testing.T) {
	st := startStream(t)
	db := dbtest.Open(t, dbtest.SQLiteURL(t))
	p, done := newProjector(t, db, st.JetStream(), 100)
	defer stopProjector(t, p, done)
	bad := nats.NewMsg("identity.user." + uuid.NewString() + ".renamed")
	bad.Header.Set(events.HeaderType, string(events.TypeUserRenamed))
	bad.Header.Set(events.HeaderTime, "not a time")
	bad.Header.Set("Nats-Expected-Stream", events.StreamName) // must not be enforced again on the poison stream
	bad.Data = []byte("{not json")
	js := st.JetStream()
	if _, err := js.PublishMsg(context.Background(), bad); err != nil {
		t.Fatal(err)
	}
	f, last := writeHistory(t, st, 3, 2)
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	if err := p.WaitFor(ctx, last); err != nil {
		t.Fatal(err)
	}
	checkFold(t, db, f)
	ps, err := js.Stream(ctx, projections.PoisonStream)
	if err != nil {
		t.Fatal(err)
	}
	info, err := ps.Info(ctx)
	if err != nil || info.State.Msgs != 1 {
		t.Fatalf("poison stream holds %v messages (err %v), want 1", info.State.Msgs, err)
	}
}

// TestOversizedPoisonDoesNotStall: a forged message just under the server's size limit cannot
// be copied whole into the poison stream (the copy adds headers); a short record takes its place
// and the projection carries on.
func TestOversizedPoisonDoesNotStall(t *testing.T) {
	st := startStream(t)
	db := dbtest.Open(t, dbtest.SQLiteURL(t))
	p, done := newProjector(t, db, st.JetStream(), 100)
	defer stopProjector(t, p, done)
	js := st.JetStream()
	big := nats.NewMsg("identity.user." + uuid.NewString() + ".renamed")
	big.Header.Set(events.HeaderType, string(events.TypeUserRenamed))
	big.Data = bytes.Repeat([]byte("x"), int(st.Conn().MaxPayload())-300) // fits; its poison copy would not
	ack, err := js.PublishMsg(context.Background(), big)
	if err != nil {
		t.Fatal(err)
	}
	f, last := writeHistory(t, st, 3, 2)
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	if err := p.WaitFor(ctx, last); err != nil {
		t.Fatal(err)
	}
	checkFold(t, db, f)
	ps, err := js.Stream(ctx, projections.PoisonStream)
	if err != nil {
		t.Fatal(err)
	}
	rec, err := ps.GetLastMsgForSubject(ctx, "identityd.poison.>")
	if err != nil || rec.Header.Get("stream_sequence") != strconv.FormatUint(ack.Sequence, 10) || len(rec.Data) != 0 {
		t.Fatalf("poison record: %v, %d bytes of data (%v)", rec.Header, len(rec.Data), err)
	}
	if p.Refused() != 1 {
		t.Fatalf("refused %d, want 1", p.Refused())
	}
}
