package engine

import (
	"context"
	"time"

	"github.com/uptrace/bun"

	"github.com/identityd/identityd/events"
)

// What the engine's external tests (package engine_test, which may import the registered
// read models) reach inside the engine for.

var (
	AppendCopyText = appendCopyText
	AppendUUID     = appendUUID
	ErrCopyNul     = errCopyNul
)

// SetChunks sets the bulk load's chunk sizes until the returned restore is called.
func SetChunks(bytes, rows int) (restore func()) {
	b, r := streamChunkBytes, streamChunkRows
	streamChunkBytes, streamChunkRows = bytes, rows
	return func() { streamChunkBytes, streamChunkRows = b, r }
}

// ChunkBytes is the bulk load's COPY chunk size.
func ChunkBytes() int { return streamChunkBytes }

// CreateTables is createTables.
func CreateTables(ctx context.Context, db *bun.DB, projs []Projection, t Tables) error {
	return createTables(ctx, db, projs, t)
}

// BulkLoad is bulkLoad reading through cfg's source (Read, or Replay).
func BulkLoad(ctx context.Context, db *bun.DB, projs []Projection, t Tables, cfg RebuildConfig, end uint64) (uint64, uint64, error) {
	return bulkLoad(ctx, db, projs, t, cfg.source(end), end, nil, map[string]time.Duration{})
}

// CopyEncoder is the COPY encoder of model T.
type CopyEncoder[T any] = copyEncoder[T]

func NewCopyEncoder[T any](db bun.IDB) (*CopyEncoder[T], error) { return newCopyEncoder[T](db) }

func (e *copyEncoder[T]) AppendRow(b []byte, row *T) ([]byte, error) { return e.appendRow(b, row) }

func (e *copyEncoder[T]) Columns() string { return e.columns }

func CopyAll[T any](ctx context.Context, conn bun.Conn, e *CopyEncoder[T], table string, rows []T) error {
	return copyAll(ctx, conn, e, table, rows)
}

func InsertAll[T any](ctx context.Context, db bun.IDB, table string, rows []T) error {
	return insertAll(ctx, db, table, rows)
}

// ReadAhead is a readAhead.
type ReadAhead struct{ ra *readAhead }

func NewReadAhead(ctx context.Context, read StreamReader, from, end uint64, batch int) ReadAhead {
	return ReadAhead{newReadAhead(ctx, read, from, end, batch)}
}

func (r ReadAhead) Next(ctx context.Context) ([]events.Envelope, uint64, error) {
	return r.ra.next(ctx)
}

func (r ReadAhead) Stop() { r.ra.stop() }

func (e *copyEncoder[T]) Statement(table string) string { return e.statement(table) }
