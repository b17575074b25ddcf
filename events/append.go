package events

import (
	"errors"
	"time"

	"github.com/google/uuid"
)

// The vocabulary of appending to the stream, shared by the domain's event-store port
// (domain.EventStore, declared where it is used) and the adapter that implements it
// (eventstore.Store), so the adapter need not import the domain it serves.

// Errors of an append or a read of the stream.
var (
	// ErrVersionConflict is returned by an append when an aggregate changed since it was
	// loaded (the stream's expected-sequence check failed).
	ErrVersionConflict = errors.New("aggregate version conflict")
	// ErrUnavailable wraps event-store failures that a retry later may cure (store down, timeout).
	ErrUnavailable = errors.New("event store unavailable")
)

// Change is one event decided by an aggregate, with the id and time it is recorded under.
type Change struct {
	ID    uuid.UUID
	At    time.Time
	Event Event
	// Chain is filled in by the append: the event's chain hash (ChainHash).
	Chain string
}

// Expectation asks the store to append only if the aggregate's last event is still at Version
// (0: the aggregate has no events yet). Chain is that event's chain hash ("" for none); the
// aggregate's new events are chained to it.
type Expectation struct {
	Aggregate Aggregate
	Version   uint64
	Chain     string
}
