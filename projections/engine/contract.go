package engine

import (
	"context"
	"fmt"

	"github.com/uptrace/bun"

	"github.com/identityd/identityd/events"
)

// Projection is one read model: its tables and how events change their rows. The engine
// creates, fills, checkpoints, rebuilds and verifies the tables of every projection it is
// given; a projection only knows its own tables.
type Projection interface {
	// Name names the projection in errors and logs.
	Name() string
	// Tables are the projection's tables, versioned by the generation (Tables) they belong to.
	Tables() []Table
	// NewFold starts folding events into generation g: a live batch (Load, Apply, Write) or
	// a whole rebuild (Apply, Stream, Final).
	NewFold(g Tables) Fold
}

// Fold is a projection's rows applied in memory. The live projector folds each batch over the
// rows the batch touches and writes the difference; a rebuild folds the whole stream from
// empty tables and writes the result in bulk. Both go through Apply, so there is one
// projection, not two.
type Fold interface {
	// Load reads the rows that evs will change (live batches only: a rebuild starts empty).
	Load(ctx context.Context, db bun.IDB, evs []events.Envelope) error
	// Apply folds one event; events the projection does not reduce change nothing.
	Apply(e events.Envelope) error
	// Write hands w the statements that store what the folded events changed (live batches).
	Write(ctx context.Context, db bun.IDB, w Writer) error
	// Stream hands over rows a rebuild may write now, before the end of the stream: rows of
	// append-only tables. The engine owns them afterwards.
	Stream() []RowSet
	// Final hands over the rows a rebuild writes once the stream is folded, in the
	// transaction that sets the checkpoint.
	Final() []RowSet
}

// ReplayGuard is a projection that remembers the id of every event applied, so the engine can
// refuse a genuine event appended a second time under a new stream position (see
// dropReplays). The audit log is one.
type ReplayGuard interface {
	// Applied returns those of ids that were applied to generation g before.
	Applied(ctx context.Context, db bun.IDB, g Tables, ids []string) ([]string, error)
}

// Checker is a projection that Verify can compare with the stream.
type Checker interface {
	// Check reads the projection's rows of generation g, inside Verify's consistent
	// snapshot at checkpoint pos, and returns the comparison to run.
	Check(ctx context.Context, db bun.IDB, g Tables, pos uint64) (Check, error)
}

// Check compares one projection's rows with the stream.
type Check interface {
	// See is told every event the read models must reflect, in stream order, up to the
	// checkpoint: signed, and continuing its aggregate's hash chain.
	See(e events.Envelope)
	// Report names every difference between the rows and the events seen.
	Report(report func(Difference))
}

// Table is one of a projection's tables.
type Table struct {
	// Name is the table's name without the generation suffix (Tables.Name adds it).
	Name string
	// Model is the bun model of its rows, e.g. (*UserRow)(nil).
	Model any
	// Indexes are its secondary indexes. A rebuild creates them after the bulk of the replay:
	// maintaining them row by row would cost more.
	Indexes []Index
	// Shared tables are not versioned: one table, created with the first generation, never
	// rebuilt, dropped or swapped (state that is not event-sourced, like last use of a token).
	Shared bool
	// Migrate, if set, brings a table created by an older build up to date (idempotent). It
	// gets the table's full name.
	Migrate func(ctx context.Context, db *bun.DB, table string) error
}

// Index is a secondary index of a Table; its full name is the table's followed by _Name.
type Index struct {
	Name    string
	Columns string // "(email)", "(user_id, seq)"
	Unique  bool
}

// name is the table's name in generation g.
func (t Table) name(g Tables) string {
	if t.Shared {
		return t.Name
	}
	return g.Name(t.Name)
}

// Reducers is a projection's table from event type to reducer: how an event changes a fold S.
// Event types not listed do not concern the projection.
type Reducers[S any] map[events.Type]func(s S, e events.Envelope) error

// On adapts a reducer of one payload type to the table's signature. An event that does not
// carry T is poison: no retry can apply it.
func On[S any, T events.Event](r func(s S, e events.Envelope, ev T) error) func(S, events.Envelope) error {
	return func(s S, e events.Envelope) error {
		ev, ok := e.Data.(T)
		if !ok {
			return fmt.Errorf("%w: %s carries %T", errPoison, e.Type, e.Data)
		}
		return r(s, e, ev)
	}
}

// Apply runs the reducer of e's type on s; its error names the event.
func (rs Reducers[S]) Apply(s S, e events.Envelope) error {
	r, ok := rs[e.Type]
	if !ok {
		return nil
	}
	if err := r(s, e); err != nil {
		return eventError{e: e, err: err}
	}
	return nil
}

// Handles reports whether the table has a reducer for t.
func (rs Reducers[S]) Handles(t events.Type) bool {
	_, ok := rs[t]
	return ok
}

// eventError is a failure to apply one event; it names the event.
type eventError struct {
	e   events.Envelope
	err error
}

func (e eventError) Error() string {
	return fmt.Sprintf("apply %s (seq %d): %v", e.e.Type, e.e.Sequence, e.err)
}

func (e eventError) Unwrap() error { return e.err }
