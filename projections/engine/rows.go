package engine

import (
	"context"
	"reflect"
	"sync"

	"github.com/uptrace/bun"
)

// RowSet is rows of one table that a fold hands the engine to write in bulk: COPY on
// PostgreSQL, multi-row INSERTs elsewhere. Rows makes one.
type RowSet interface {
	table() string
	len() int
	// appendCopy appends the rows as COPY text and returns the COPY statement that loads it.
	appendCopy(db bun.IDB, b []byte) ([]byte, string, error)
	// copyAll copies the rows on conn (inside the transaction begun on it, if any).
	copyAll(ctx context.Context, db bun.IDB, conn bun.Conn) error
	// insert writes the rows in multi-row INSERTs.
	insert(ctx context.Context, db bun.IDB) error
}

// Rows is rows of the bun model T bound for table (the full name, generation included).
func Rows[T any](table string, rows []T) RowSet { return rowSet[T]{name: table, rows: rows} }

type rowSet[T any] struct {
	name string
	rows []T
}

func (s rowSet[T]) table() string { return s.name }
func (s rowSet[T]) len() int      { return len(s.rows) }

func (s rowSet[T]) appendCopy(db bun.IDB, b []byte) ([]byte, string, error) {
	enc, err := encoderFor[T](db)
	if err != nil {
		return b, "", err
	}
	for i := range s.rows {
		if b, err = enc.appendRow(b, &s.rows[i]); err != nil {
			return b, "", err
		}
	}
	return b, enc.statement(s.name), nil
}

func (s rowSet[T]) copyAll(ctx context.Context, db bun.IDB, conn bun.Conn) error {
	enc, err := encoderFor[T](db)
	if err != nil {
		return err
	}
	return copyAll(ctx, conn, enc, s.name, s.rows)
}

func (s rowSet[T]) insert(ctx context.Context, db bun.IDB) error {
	return insertAll(ctx, db, s.name, s.rows)
}

// encoders caches a COPY encoder per row type: building one reflects over the model.
var encoders sync.Map // reflect.Type → encoderResult

type encoderResult struct {
	enc any
	err error
}

// encoderFor is the COPY encoder of T, built once (PostgreSQL renders every row type the same
// way whatever the connection, so one encoder serves every database).
func encoderFor[T any](db bun.IDB) (*copyEncoder[T], error) {
	typ := reflect.TypeFor[T]()
	if r, ok := encoders.Load(typ); ok {
		res := r.(encoderResult) //nolint:forcetypeassert // only encoderResults are stored
		if res.err != nil {
			return nil, res.err
		}
		return res.enc.(*copyEncoder[T]), nil //nolint:forcetypeassert // stored under T's type
	}
	enc, err := newCopyEncoder[T](db)
	encoders.Store(typ, encoderResult{enc: enc, err: err})
	return enc, err
}

// Writer takes the statements of a live batch; see statements.
type Writer interface {
	Add(ctx context.Context, q Query) error
}

// Inserts is the multi-row INSERTs (BulkChunk rows each) that write rows to table.
func Inserts[T any](db bun.IDB, table string, rows []T) []Query {
	var qs []Query
	for len(rows) > 0 {
		n := min(BulkChunk, len(rows))
		chunk := rows[:n]
		qs = append(qs, db.NewInsert().Model(&chunk).ModelTableExpr(table))
		rows = rows[n:]
	}
	return qs
}

// Values is the values of a map of rows, for Rows and Inserts.
func Values[K comparable, V any](m map[K]*V) []V {
	out := make([]V, 0, len(m))
	for _, v := range m {
		out = append(out, *v)
	}
	return out
}

// Keys is the keys of a set.
func Keys[K comparable](m map[K]bool) []K {
	out := make([]K, 0, len(m))
	for k := range m {
		out = append(out, k)
	}
	return out
}
