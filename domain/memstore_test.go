package domain

import (
	"context"
	"errors"
	"fmt"
	"sync"
	"sync/atomic"

	"github.com/identityd/identityd/events"
)

// memStore is an in-memory EventStore for the domain's unit tests only (the JetStream store is
// tested in events/eventstore). It keeps the EventStore contract: one global sequence, an
// aggregate's version is the sequence of its last event (0 for none), a failed expectation is
// an error wrapping events.ErrVersionConflict, Load returns the events after a sequence, and a multi-change append is all or nothing with
// consecutive sequences.
type memStore struct {
	versionChecks atomic.Int64 // calls of Version
	mu            sync.Mutex
	seq           uint64
	aggs          map[events.Aggregate][]events.Envelope
	all           []events.Envelope
	calls         int // Append calls, successful or not
	loads         int // Load calls

	// interfere, when set, runs once at the start of the next Append (under the lock), e.g. to
	// let "another writer" append first so that the caller's expectation fails.
	interfere func(s *memStore)
}

func newMemStore() *memStore {
	return &memStore{aggs: map[events.Aggregate][]events.Envelope{}}
}

func (s *memStore) Load(_ context.Context, agg events.Aggregate, after uint64) ([]events.Envelope, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.loads++
	var out []events.Envelope
	for _, e := range s.aggs[agg] {
		if e.Sequence > after {
			out = append(out, e)
		}
	}
	return out, nil
}

func (s *memStore) Append(_ context.Context, meta events.Metadata, expect []events.Expectation, changes []events.Change) (uint64, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.calls++
	if f := s.interfere; f != nil {
		s.interfere = nil
		f(s)
	}
	return s.appendLocked(meta, expect, changes)
}

func (s *memStore) versionLocked(agg events.Aggregate) uint64 {
	h := s.aggs[agg]
	if len(h) == 0 {
		return 0
	}
	return h[len(h)-1].Sequence
}

func (s *memStore) appendLocked(meta events.Metadata, expect []events.Expectation, changes []events.Change) (uint64, error) {
	if len(changes) == 0 {
		return 0, errors.New("memstore: nothing to append")
	}
	for _, e := range expect { // check everything before writing anything: all or none
		if v := s.versionLocked(e.Aggregate); v != e.Version {
			return 0, fmt.Errorf("%w: %s is at %d, expected %d", events.ErrVersionConflict, e.Aggregate, v, e.Version)
		}
	}
	for _, c := range changes {
		s.seq++
		agg := c.Event.Aggregate()
		env := events.Envelope{
			ID: c.ID.String(), Type: c.Event.EventType(), Subject: agg.String(), Time: c.At,
			Metadata: meta, Data: c.Event, Sequence: s.seq, NATSSubj: events.Subject(c.Event),
		}
		s.aggs[agg] = append(s.aggs[agg], env)
		s.all = append(s.all, env)
	}
	return s.seq, nil
}

// rival appends events as another writer would, expecting the aggregate's current version.
func (s *memStore) rival(evs ...events.Event) {
	var changes []events.Change
	for _, e := range evs {
		changes = append(changes, events.Change{Event: e})
	}
	agg := evs[0].Aggregate()
	if _, err := s.appendLocked(events.Metadata{Actor: "system"},
		[]events.Expectation{{Aggregate: agg, Version: s.versionLocked(agg)}}, changes); err != nil {
		panic(err)
	}
}

// snapshot returns every stored event in stream order.
func (s *memStore) snapshot() []events.Envelope {
	s.mu.Lock()
	defer s.mu.Unlock()
	return append([]events.Envelope(nil), s.all...)
}

// count returns how many stored events have the type.
func (s *memStore) count(t events.Type) int {
	n := 0
	for _, e := range s.snapshot() {
		if e.Type == t {
			n++
		}
	}
	return n
}

// Version implements EventStore.
func (s *memStore) Version(_ context.Context, agg events.Aggregate) (uint64, error) {
	s.versionChecks.Add(1)
	return s.version(agg), nil
}

func (s *memStore) version(agg events.Aggregate) uint64 {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.versionLocked(agg)
}

func (s *memStore) appendCalls() int {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.calls
}

func (s *memStore) loadCalls() int {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.loads
}

// conflictStore loads from an inner store but fails every Append with a version conflict.
type conflictStore struct {
	*memStore
}

func (c conflictStore) Append(context.Context, events.Metadata, []events.Expectation, []events.Change) (uint64, error) {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.calls++
	return 0, fmt.Errorf("memstore: always conflicting: %w", events.ErrVersionConflict)
}
