package domain

import (
	"context"
	"errors"
	"fmt"
	"hash/maphash"
	"sync"
	"time"

	"github.com/google/uuid"

	"github.com/identityd/identityd/events"
)

// aggregate is what the command runner needs of an aggregate: where its events live, the
// expectation its next append carries, the events decided since it was loaded, and how it
// folds a stored one. Only the domain's aggregates implement it.
type aggregate interface {
	// expectation asks the append to succeed only if the aggregate's last event is still the
	// one it folded; its Aggregate names the aggregate in the stream.
	expectation() events.Expectation
	// pending lists the events decided but not yet stored.
	pending() []events.Event
	// follow folds one stored event.
	follow(events.Envelope)
	// committed records that the pending events were stored (the last change at seq).
	committed(seq uint64, stored []events.Change)
	// active reports whether commands may act on it (it exists and was not deleted).
	active() bool
}

// command is one command as the runner runs it.
type command[T aggregate] struct {
	// scope is the idempotency scope ("" for none): event ids derive from it, so a retried
	// command publishes the same ids and the stream drops the duplicates.
	scope string
	// emits lists the event types the command exists to emit. The result's effect covers
	// them even when the command emitted nothing (a no-op, a replayed answer), so a retry
	// waits as long as the first answer did.
	emits []events.Type
	// decide validates the command against the current state and raises events on it; other
	// aggregates it changes join the append through the batch.
	decide func(T, *batch) error
	// view, if set, reads the state after a successful decision (also one that changed
	// nothing), still under the aggregate's lock.
	view func(T)
}

// batch holds the aggregates besides the primary one that an attempt appends with it (an
// EmailClaim), atomically, each under its own expectation.
type batch struct {
	before, after []aggregate
	at            time.Time
}

// first joins an aggregate whose events go before the primary's in the stream.
func (b *batch) first(a aggregate) { b.before = append(b.before, a) }

// then joins an aggregate whose events go after the primary's.
func (b *batch) then(a aggregate) { b.after = append(b.after, a) }

// recordAt sets the time the changes are recorded at (default: the clock at the append), for
// a command whose events carry the same time in their payload.
func (b *batch) recordAt(t time.Time) { b.at = t }

// runner runs commands on one kind of aggregate: load (from a bounded cache or the stream) →
// decide → append with an expectation on each aggregate's version, deciding again on fresh
// state after a version conflict. Commands on one aggregate are serialized within the process
// (striped locks); across processes the stream's expectation catches a race.
type runner[T aggregate] struct {
	kind        string            // names the aggregate in errors ("user")
	store       EventStore        // the stream
	blank       func(uuid.UUID) T // the state before the first event
	notFound    error             // the answer for a command on an aggregate that is not active
	maxAttempts int               // bounds the decisions after version conflicts
	now         func() time.Time  // the clock events are recorded with
	stamp       func(scope string, at time.Time, groups ...[]events.Event) []events.Change
	cache       *aggregateCache[T]
	locks       [1024]sync.Mutex
	seed        maphash.Seed
}

func (r *runner[T]) lock(id uuid.UUID) func() {
	m := &r.locks[maphash.Bytes(r.seed, id[:])%uint64(len(r.locks))]
	m.Lock()
	return m.Unlock
}

// update runs a command on an existing aggregate.
func (r *runner[T]) update(ctx context.Context, meta events.Metadata, id uuid.UUID, cmd command[T]) (Result, error) {
	unlock := r.lock(id)
	defer unlock()
	for attempt := 1; ; attempt++ {
		// The first attempt decides on the cached state without asking the stream: if that
		// state is stale, the append's expectation fails and the next attempt reloads. Only an
		// answer that appends nothing (a refusal, or a no-op) must first be checked against
		// the stream, because no expectation will catch a stale decision then.
		a, cached, err := r.forDecision(ctx, id, attempt > 1)
		if err != nil {
			return Result{}, err
		}
		if !a.active() {
			if cached && r.stale(ctx, a) {
				continue
			}
			return Result{}, r.notFound
		}
		var b batch
		if err := cmd.decide(a, &b); err != nil {
			r.cache.drop(id) // decide may have raised events before failing
			if cached && r.stale(ctx, a) {
				continue
			}
			return Result{}, err
		}
		if !b.changes(a) { // nothing changed; still wait for what is already stored
			if cached && r.stale(ctx, a) {
				r.cache.drop(id)
				continue
			}
			if cmd.view != nil {
				cmd.view(a)
			}
			return Result{Seq: a.expectation().Version, Effect: effectOf(cmd.emits, nil)}, nil
		}
		seq, changes, err := r.append(ctx, meta, cmd.scope, a, &b)
		if err != nil {
			r.cache.drop(id)
			if errors.Is(err, events.ErrVersionConflict) {
				if attempt < r.maxAttempts {
					continue
				}
				return Result{}, ErrConcurrentModification
			}
			return Result{}, err
		}
		r.cache.put(id, a)
		if cmd.view != nil {
			cmd.view(a)
		}
		return Result{Seq: seq, Effect: effectOf(cmd.emits, changes)}, nil
	}
}

// create runs a command that opens a new aggregate: it decides on the blank state and
// appends with the expectation that the aggregate has no events yet.
func (r *runner[T]) create(ctx context.Context, meta events.Metadata, id uuid.UUID, cmd command[T]) (Result, error) {
	unlock := r.lock(id)
	defer unlock()
	for attempt := 1; ; attempt++ {
		a := r.blank(id)
		var b batch
		if err := cmd.decide(a, &b); err != nil {
			return Result{}, err
		}
		seq, changes, err := r.append(ctx, meta, cmd.scope, a, &b)
		if errors.Is(err, events.ErrVersionConflict) && attempt < r.maxAttempts {
			continue // someone touched an aggregate of the batch: decide again on fresh state
		}
		if errors.Is(err, events.ErrVersionConflict) {
			return Result{}, ErrConcurrentModification
		}
		if err != nil {
			return Result{}, err
		}
		r.cache.put(id, a)
		if cmd.view != nil {
			cmd.view(a)
		}
		return Result{Seq: seq, Effect: effectOf(cmd.emits, changes)}, nil
	}
}

// read runs f on the aggregate's current state under its lock.
func (r *runner[T]) read(ctx context.Context, id uuid.UUID, f func(T) error) error {
	unlock := r.lock(id)
	defer unlock()
	a, err := r.load(ctx, id, false)
	if err != nil {
		return err
	}
	if !a.active() {
		return r.notFound
	}
	return f(a)
}

// changes reports whether the primary aggregate or one of the batch decided any event.
func (b *batch) changes(primary aggregate) bool {
	if len(primary.pending()) > 0 {
		return true
	}
	for _, x := range append(b.before, b.after...) {
		if len(x.pending()) > 0 {
			return true
		}
	}
	return false
}

// append stores the events decided on the batch's aggregates and the primary one, in stream
// order, with one expectation each, and commits them to every aggregate.
func (r *runner[T]) append(ctx context.Context, meta events.Metadata, scope string, primary T, b *batch) (uint64, []events.Change, error) {
	all := make([]aggregate, 0, len(b.before)+1+len(b.after))
	all = append(append(append(all, b.before...), primary), b.after...)
	expect := make([]events.Expectation, len(all))
	groups := make([][]events.Event, len(all))
	for i, a := range all {
		expect[i], groups[i] = a.expectation(), a.pending()
	}
	at := b.at
	if at.IsZero() {
		at = r.now()
	}
	changes := r.stamp(scope, at, groups...)
	seq, err := r.store.Append(ctx, meta, expect, changes)
	if err != nil {
		return 0, nil, err
	}
	for _, a := range all {
		a.committed(seq, changes)
	}
	return seq, changes, nil
}

// forDecision returns the cached aggregate as is (cached = true), or a freshly loaded one.
func (r *runner[T]) forDecision(ctx context.Context, id uuid.UUID, fresh bool) (T, bool, error) {
	if !fresh {
		if a, ok := r.cache.get(id); ok {
			return a, true, nil
		}
	}
	a, err := r.load(ctx, id, true)
	return a, false, err
}

// stale reports whether the stream holds events of a that were stored after the version it
// folded (by another instance). An unreadable stream counts as stale, so the caller retries
// and surfaces the error from a fresh load.
func (r *runner[T]) stale(ctx context.Context, a T) bool {
	x := a.expectation()
	v, err := r.store.Version(ctx, x.Aggregate)
	return err != nil || v != x.Version
}

// load returns the aggregate's current state: a cached aggregate caught up with the events
// stored since it was cached (by this or another instance), or a fresh fold of its history.
// Decisions are thus never taken on stale state; a write racing in between is caught by the
// append's expectation.
func (r *runner[T]) load(ctx context.Context, id uuid.UUID, fresh bool) (T, error) {
	if !fresh {
		if a, ok := r.cache.get(id); ok {
			x := a.expectation()
			newer, err := r.store.Load(ctx, x.Aggregate, x.Version)
			if err != nil {
				r.cache.drop(id)
				var zero T
				return zero, fmt.Errorf("load %s %s: %w", r.kind, id, err)
			}
			for _, e := range newer {
				a.follow(e)
			}
			return a, nil
		}
	}
	a := r.blank(id)
	history, err := r.store.Load(ctx, a.expectation().Aggregate, 0)
	if err != nil {
		var zero T
		return zero, fmt.Errorf("load %s %s: %w", r.kind, id, err)
	}
	for _, e := range history {
		a.follow(e)
	}
	if len(history) > 0 {
		r.cache.put(id, a)
	}
	return a, nil
}

// lastStored finds an aggregate's last change among those one append stored, the last of them
// at seq (changes are numbered consecutively): its stream sequence and chain hash.
func lastStored(agg events.Aggregate, seq uint64, stored []events.Change) (uint64, string, bool) {
	for i := len(stored) - 1; i >= 0; i-- {
		if stored[i].Event.Aggregate() == agg {
			return seq - uint64(len(stored)-1-i), stored[i].Chain, true //nolint:gosec // i < len(stored): never negative
		}
	}
	return 0, "", false
}

// effectOf is a command's effect on credentials: the strongest of the events it emitted and
// of those it exists to emit (events.EffectOf).
func effectOf(emits []events.Type, stored []events.Change) events.Effect {
	e := events.EffectNone
	for _, t := range emits {
		e = max(e, events.EffectOf(t))
	}
	for _, c := range stored {
		e = max(e, events.EffectOf(c.Event.EventType()))
	}
	return e
}

// aggregateCache keeps recently used aggregates so a command need not replay the stream. It is
// bounded: when full, an arbitrary entry is evicted (Go map iteration order is random).
type aggregateCache[T any] struct {
	mu  sync.Mutex
	max int
	m   map[uuid.UUID]T
}

func newAggregateCache[T any](capacity int) *aggregateCache[T] {
	return &aggregateCache[T]{max: capacity, m: make(map[uuid.UUID]T)}
}

func (c *aggregateCache[T]) get(id uuid.UUID) (T, bool) {
	c.mu.Lock()
	defer c.mu.Unlock()
	a, ok := c.m[id]
	return a, ok
}

func (c *aggregateCache[T]) put(id uuid.UUID, a T) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if _, ok := c.m[id]; !ok && len(c.m) >= c.max {
		for k := range c.m {
			delete(c.m, k)
			break
		}
	}
	c.m[id] = a
}

func (c *aggregateCache[T]) drop(id uuid.UUID) {
	c.mu.Lock()
	defer c.mu.Unlock()
	delete(c.m, id)
}
