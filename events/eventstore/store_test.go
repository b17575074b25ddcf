package eventstore_test

import (
	"context"
	"errors"
	"sync"
	"testing"
	"time"

	"github.com/google/uuid"

	"github.com/identityd/identityd/events"
	"github.com/identityd/identityd/events/embedded"
	"github.com/identityd/identityd/events/eventstore"
	"github.com/identityd/identityd/events/eventstoretest"
)

func openStore(t *testing.T) *eventstore.Store {
	t.Helper()
	st, _ := eventstoretest.Start(t, embedded.Config{})
	return st
}

func change(e events.Event) events.Change {
	return events.Change{ID: uuid.Must(uuid.NewV7()), At: time.Now(), Event: e}
}

func TestAppendAndLoad(t *testing.T) {
	st := openStore(t)
	ctx := context.Background()
	id := uuid.New()
	agg := events.UserAggregate(id)

	got, err := st.Load(ctx, agg, 0)
	if err != nil || len(got) != 0 {
		t.Fatalf("empty aggregate: %v %v", got, err)
	}
	seq1, err := st.Append(ctx, events.Metadata{Actor: "system", RequestID: "r1"},
		[]events.Expectation{{Aggregate: agg, Version: 0}},
		[]events.Change{change(events.UserRegistered{Versioned: events.V(), UserID: id, Email: "a@b.co", Name: "A"})})
	if err != nil {
		t.Fatal(err)
	}
	// A stale expectation is a conflict, never a silent overwrite.
	_, err = st.Append(ctx, events.Metadata{}, []events.Expectation{{Aggregate: agg, Version: 0}},
		[]events.Change{change(events.UserRenamed{Versioned: events.V(), UserID: id, Name: "B"})})
	if !errors.Is(err, events.ErrVersionConflict) {
		t.Fatalf("want conflict, got %v", err)
	}
	// An atomic batch over two aggregates, each checked.
	email := events.EmailAggregate("a@b.co")
	last, err := st.Append(ctx, events.Metadata{}, []events.Expectation{{Aggregate: agg, Version: seq1}, {Aggregate: email, Version: 0}},
		[]events.Change{
			change(events.UserRenamed{Versioned: events.V(), UserID: id, Name: "B"}),
			change(events.EmailClaimed{Versioned: events.V(), EmailHash: email.ID, UserID: id}),
		})
	if err != nil {
		t.Fatal(err)
	}
	if last != seq1+2 {
		t.Fatalf("batch last seq = %d, want %d", last, seq1+2)
	}
	// A batch whose second expectation fails stores nothing.
	_, err = st.Append(ctx, events.Metadata{}, []events.Expectation{{Aggregate: agg, Version: seq1 + 1}, {Aggregate: email, Version: 0}},
		[]events.Change{
			change(events.UserRenamed{Versioned: events.V(), UserID: id, Name: "C"}),
			change(events.EmailClaimed{Versioned: events.V(), EmailHash: email.ID, UserID: id}),
		})
	if !errors.Is(err, events.ErrVersionConflict) {
		t.Fatalf("want conflict, got %v", err)
	}
	hist, err := st.Load(ctx, agg, 0)
	if err != nil {
		t.Fatal(err)
	}
	if len(hist) != 2 || hist[0].Type != events.TypeUserRegistered || hist[1].Data.(events.UserRenamed).Name != "B" {
		t.Fatalf("history = %+v", hist)
	}
	if hist[0].Metadata.Actor != "system" || hist[0].Metadata.RequestID != "r1" || hist[0].Sequence != seq1 {
		t.Fatalf("metadata = %+v", hist[0])
	}
}

func TestConcurrentAppendsNeverLoseAnUpdate(t *testing.T) {
	st := openStore(t)
	ctx := context.Background()
	id := uuid.New()
	agg := events.UserAggregate(id)
	var mu sync.Mutex
	var wins int
	var wg sync.WaitGroup
	for i := 0; i < 20; i++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			_, err := st.Append(ctx, events.Metadata{}, []events.Expectation{{Aggregate: agg, Version: 0}},
				[]events.Change{change(events.UserRegistered{Versioned: events.V(), UserID: id})})
			if err == nil {
				mu.Lock()
				wins++
				mu.Unlock()
			} else if !errors.Is(err, events.ErrVersionConflict) {
				t.Error(err)
			}
		}()
	}
	wg.Wait()
	if wins != 1 {
		t.Fatalf("%d appends with the same expectation won, want exactly 1", wins)
	}
}

func TestReadPagesThroughLongHistories(t *testing.T) {
	st := openStore(t)
	ctx := context.Background()
	id := uuid.New()
	agg := events.UserAggregate(id)
	var v uint64
	for i := 0; i < 600; i++ {
		var err error
		v, err = st.Append(ctx, events.Metadata{}, []events.Expectation{{Aggregate: agg, Version: v}},
			[]events.Change{change(events.UserRenamed{Versioned: events.V(), UserID: id, Name: "n"})})
		if err != nil {
			t.Fatal(err)
		}
	}
	hist, err := st.Load(ctx, agg, 0)
	if err != nil || len(hist) != 600 || hist[599].Sequence != v {
		t.Fatalf("loaded %d events (err %v)", len(hist), err)
	}
}

func TestVersionAsksTheLeader(t *testing.T) {
	st := openStore(t)
	ctx := context.Background()
	id := uuid.New()
	agg := events.UserAggregate(id)
	if v, err := st.Version(ctx, agg); err != nil || v != 0 {
		t.Fatalf("new aggregate: version %d, err %v", v, err)
	}
	seq, err := st.Append(ctx, events.Metadata{}, []events.Expectation{{Aggregate: agg}},
		[]events.Change{change(events.UserRegistered{Versioned: events.V(), UserID: id})})
	if err != nil {
		t.Fatal(err)
	}
	// Another aggregate's event must not count.
	if _, err := st.Append(ctx, events.Metadata{}, nil, []events.Change{change(events.UserDeleted{Versioned: events.V(), UserID: uuid.New()})}); err != nil {
		t.Fatal(err)
	}
	if v, err := st.Version(ctx, agg); err != nil || v != seq {
		t.Fatalf("version %d (err %v), want %d", v, err, seq)
	}
}

// TestLastSequence: the leader's last sequence, 0 for an empty stream, the last append after appends.
func TestLastSequence(t *testing.T) {
	st := openStore(t)
	ctx := context.Background()
	if h, err := st.LastSequence(ctx); err != nil || h != 0 {
		t.Fatalf("empty stream: head %d, %v; want 0", h, err)
	}
	var last uint64
	for range 3 {
		id := uuid.New()
		seq, err := st.Append(ctx, events.Metadata{Actor: "system"}, []events.Expectation{{Aggregate: events.UserAggregate(id)}},
			[]events.Change{change(events.UserRegistered{Versioned: events.V(), UserID: id, Email: id.String() + "@b.co", Name: "A"})})
		if err != nil {
			t.Fatal(err)
		}
		last = seq
	}
	if h, err := st.LastSequence(ctx); err != nil || h != last {
		t.Fatalf("head %d, %v; want %d", h, err, last)
	}
}

// TestRetriedAppendIsAConflict: an append whose event the stream already holds (an earlier
// attempt's ack was lost) is a conflict, not a success, whatever its expectation says: a
// clustered stream checks the duplicate before the expectation, so its success would tell the
// caller nothing about whether the aggregate it decided on is current.
func TestRetriedAppendIsAConflict(t *testing.T) {
	st := openStore(t)
	ctx := context.Background()
	id := uuid.New()
	agg := events.UserAggregate(id)
	first := change(events.UserRegistered{Versioned: events.V(), UserID: id, Email: "r@b.co", Name: "R"})
	seq, err := st.Append(ctx, events.Metadata{}, []events.Expectation{{Aggregate: agg}}, []events.Change{first})
	if err != nil {
		t.Fatal(err)
	}
	_, err = st.Append(ctx, events.Metadata{}, []events.Expectation{{Aggregate: agg, Version: seq}}, []events.Change{first})
	if !errors.Is(err, events.ErrVersionConflict) {
		t.Fatalf("retried append: %v, want a conflict", err)
	}
	if hist, err := st.Load(ctx, agg, 0); err != nil || len(hist) != 1 {
		t.Fatalf("history after the retry: %d events, %v", len(hist), err)
	}
}
