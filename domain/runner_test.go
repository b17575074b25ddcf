package domain

import (
	"context"
	"errors"
	"fmt"
	"hash/maphash"
	"testing"
	"time"

	"github.com/google/uuid"

	"github.com/identityd/identityd/events"
)

// counter is an aggregate used only here, to show that the runner knows nothing of User: a
// count raised by "counted" events.
type counter struct {
	id      uuid.UUID
	n       int
	version uint64
	chain   string
	changes []events.Event
}

type counted struct{ ID uuid.UUID }

func (counted) EventType() events.Type { return "identityd.test.counted" }
func (e counted) Aggregate() events.Aggregate {
	return events.Aggregate{Kind: "counter", ID: e.ID.String()}
}

func (c *counter) expectation() events.Expectation {
	return events.Expectation{Aggregate: events.Aggregate{Kind: "counter", ID: c.id.String()}, Version: c.version, Chain: c.chain}
}
func (c *counter) pending() []events.Event  { return c.changes }
func (c *counter) follow(e events.Envelope) { c.version = e.Sequence; c.n++ }
func (c *counter) committed(seq uint64, stored []events.Change) {
	if v, chain, ok := lastStored(c.expectation().Aggregate, seq, stored); ok {
		c.version, c.chain = v, chain
	}
	c.changes = nil
}
func (c *counter) active() bool { return c.version > 0 }
func (c *counter) count()       { c.n++; c.changes = append(c.changes, counted{ID: c.id}) }

var errNoCounter = errors.New("no such counter")

func newCounterRunner(st EventStore, s *Service) *runner[*counter] {
	return &runner[*counter]{
		kind: "counter", store: st, blank: func(id uuid.UUID) *counter { return &counter{id: id} },
		notFound: errNoCounter, maxAttempts: 3, now: time.Now, stamp: s.changes,
		cache: newAggregateCache[*counter](10), seed: maphash.MakeSeed(),
	}
}

// The runner runs commands on any aggregate: create, update on the cached state, decide again
// after another writer's append, join a second aggregate to one atomic append, refuse an
// aggregate that does not exist.
func TestRunnerIsGenericOverAggregates(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	st := newMemStore()
	r := newCounterRunner(st, newTestService(t, st))
	id, other := uuid.New(), uuid.New()
	inc := command[*counter]{decide: func(c *counter, _ *batch) error { c.count(); return nil }}

	if _, err := r.update(ctx, testMeta, id, inc); !errors.Is(err, errNoCounter) {
		t.Fatalf("update before create: %v, want errNoCounter", err)
	}
	if _, err := r.create(ctx, testMeta, id, inc); err != nil {
		t.Fatal(err)
	}
	st.mu.Lock()
	st.interfere = func(s *memStore) { s.rival(counted{ID: id}) } // another writer counts first
	st.mu.Unlock()
	var n int
	res, err := r.update(ctx, testMeta, id, command[*counter]{
		decide: inc.decide,
		view:   func(c *counter) { n = c.n },
	})
	if err != nil || n != 3 || res.Seq != 3 || res.Effect != events.EffectNarrowsRights {
		t.Fatalf("update after a rival: n %d, %+v, %v; want 3 counted, seq 3, an unknown type's effect", n, res, err)
	}

	if _, err := r.create(ctx, testMeta, other, inc); err != nil {
		t.Fatal(err)
	}
	before := len(st.snapshot())
	if _, err := r.update(ctx, testMeta, id, command[*counter]{decide: func(c *counter, b *batch) error {
		o, err := r.load(ctx, other, false)
		if err != nil {
			return err
		}
		o.count()
		b.first(o)
		c.count()
		return nil
	}}); err != nil {
		t.Fatal(err)
	}
	var got []string
	for _, e := range st.snapshot()[before:] {
		got = append(got, e.Subject)
	}
	if want := fmt.Sprint([]string{"counter/" + other.String(), "counter/" + id.String()}); fmt.Sprint(got) != want {
		t.Errorf("joined append stored %v, want %v", got, want)
	}
}
