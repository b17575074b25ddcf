package engine

import (
	"context"
	"fmt"
	"runtime"
	"time"

	"github.com/uptrace/bun"
)

// BulkChunk is the number of rows per multi-row INSERT.
const BulkChunk = 1000

// The sizes of the bulk load's chunks: variables only so that tests can make them small enough
// to run every stage of the pipeline on a short history.
var (
	// streamChunkBytes is about how much COPY text goes into one COPY statement (PostgreSQL).
	// Each chunk of streamed rows is a statement and a transaction of its own: 4 MiB (some 10,000
	// audit rows) makes the per-statement cost (a round trip, a commit) negligible while keeping
	// the memory held by queued chunks small.
	streamChunkBytes = 4 << 20
	// streamChunkRows is the number of streamed rows per chunk where there is no COPY (SQLite).
	streamChunkRows = BulkChunk
)

// gcBallastBytes is the size of the GC ballast a bulk load holds: a large allocation that is
// never written, so it costs address space but (almost) no memory. Reading the stream allocates
// at a furious rate (NATS message headers, decoded payloads: over 10 KiB per event) while the
// heap that stays live is small, so the garbage collector, which runs whenever the heap has
// grown by GOGC% of the live heap, would run every few megabytes and take a good share of the
// CPU. Counted as live, the ballast spaces the
// collections out, in exchange for at most as much real memory more (the garbage allowed to
// pile up between collections). Scanning it costs nothing: it holds no pointers. Once the fold
// itself is large, the ballast makes no difference either way.
const gcBallastBytes = 64 << 20

// streamQueue is how many full chunks of streamed rows may wait for the writer: enough to ride out
// the database's jitter, few enough to bound memory.
const streamQueue = 2

// insertAll writes rows in multi-row INSERTs of BulkChunk rows.
func insertAll[T any](ctx context.Context, db bun.IDB, table string, rows []T) error {
	for len(rows) > 0 {
		n := min(BulkChunk, len(rows))
		chunk := rows[:n]
		if _, err := db.NewInsert().Model(&chunk).ModelTableExpr(table).Exec(ctx); err != nil {
			return fmt.Errorf("bulk insert into %s: %w", table, err)
		}
		rows = rows[n:]
	}
	return nil
}

// bulkLoad replays the stream from sequence 1 to end into a generation's empty tables: rows
// the folds stream (the audit log's) are written as they come, the folds' final rows (users,
// tokens, sessions) once at the end, and the generation's checkpoint is set to the last event
// read. It returns that position and the number of events applied.
//
// It is a pipeline of three stages that overlap: reading the stream (source: a replay, which
// decodes batches concurrently, or a readAhead with several range reads in flight), folding
// the events in memory and rendering the streamed rows (this goroutine), and writing chunks of
// streamed rows, each in a transaction of its own (one writer goroutine: COPY on PostgreSQL,
// multi-row INSERTs on SQLite). Once the streamed tables are complete, the final rows and the
// checkpoint are written in one transaction, so the checkpoint never claims rows that are not
// there; on PostgreSQL the streamed tables' indexes are built meanwhile.
//
// Reading stops early, as a sequential loop would, when a read returns nothing (Rebuild then
// refuses to switch over unless the rest turns up). Any error (a failed read, an undecodable
// event, a failed write) stops every stage, and the first one is returned.
func bulkLoad(ctx context.Context, db *bun.DB, projs []Projection, t Tables, source func(context.Context) eventSource, end uint64,
	progress func(pos, end uint64), phases map[string]time.Duration,
) (uint64, uint64, error) {
	mark := time.Now()
	sink := newRowSink(db)
	ctx, cancel := context.WithCancelCause(ctx)
	defer cancel(nil)
	ballast := make([]byte, gcBallastBytes) // see gcBallastBytes
	defer runtime.KeepAlive(ballast)
	w := startStreamWriter(ctx, cancel, sink)
	folds, streamed, pos, n, err := foldStream(ctx, w, sink, projs, t, source, end, progress)
	if err != nil {
		cancel(err) // a no-op if the writer failed first: its error stays the cause
	}
	if werr := w.close(); err != nil || werr != nil {
		return 0, 0, context.Cause(ctx)
	}
	phases["fold"] = time.Since(mark)
	mark = time.Now()
	// The streamed tables are complete: on PostgreSQL, index them while the final rows are
	// written (Rebuild creates the other indexes later, and skips these). Separate backends, so
	// the sorting of the biggest table overlaps the COPY of the others. SQLite has one writer,
	// so there this would only wait for the lock.
	indexed := make(chan error, 1)
	if isPG(db) {
		go func() { indexed <- buildIndexes(ctx, db, tableIndexes(projs, t, streamed)) }()
	} else {
		indexed <- nil
	}
	var final []RowSet
	for _, f := range folds {
		final = append(final, f.Final()...)
	}
	err = sink.finish(ctx, final, t, pos)
	if ierr := <-indexed; err == nil {
		err = ierr
	}
	if err != nil {
		return 0, 0, err
	}
	phases["write"] = time.Since(mark)
	return pos, n, nil
}

// tableIndexes are the indexes of some of a generation's tables.
func tableIndexes(projs []Projection, t Tables, tables map[string]bool) []indexDef {
	var out []indexDef
	for _, idx := range indexDefs(projs, t) {
		if tables[idx.table] {
			out = append(out, idx)
		}
	}
	return out
}

// foldStream is the middle stage of bulkLoad: it folds the events in stream order into every
// projection's fold, and after each read queues the rows the folds stream to the writer, in
// chunks, the last one too. It returns the folds, the tables that got streamed rows, and the
// position and count of the events read.
func foldStream(ctx context.Context, w *streamWriter, sink rowSink, projs []Projection, t Tables,
	source func(context.Context) eventSource, end uint64, progress func(pos, end uint64),
) ([]Fold, map[string]bool, uint64, uint64, error) {
	folds := make([]Fold, len(projs))
	for i, p := range projs {
		folds[i] = p.NewFold(t)
	}
	streamed := map[string]bool{}
	heads := newChainHeads()
	var pos, n uint64
	ra := source(ctx)
	defer ra.stop()
	chunk := w.chunk()
	for pos < end {
		evs, from, err := ra.next(ctx)
		if err != nil {
			if ctx.Err() != nil {
				err = context.Cause(ctx)
			}
			return nil, nil, 0, 0, fmt.Errorf("read stream at %d: %w", from, err)
		}
		if len(evs) == 0 || evs[0].Sequence > end {
			break // the end is not there (yet): Rebuild decides what that means
		}
		for _, e := range evs {
			if e.Sequence > end {
				break
			}
			pos = e.Sequence
			if e.Refusal != nil || !heads.continues(e) {
				continue // refused by its signature (the projector poisons it) or a replay (dropReplays)
			}
			heads.accept(e)
			for _, f := range folds {
				if err := f.Apply(e); err != nil {
					return nil, nil, 0, 0, err
				}
			}
			n++
		}
		for _, f := range folds {
			for _, rs := range f.Stream() {
				streamed[rs.table()] = true
				if err := sink.add(chunk, rs); err != nil {
					return nil, nil, 0, 0, fmt.Errorf("rows of %s up to seq %d: %w", rs.table(), pos, err)
				}
			}
		}
		if sink.full(chunk) {
			if err := w.queue(ctx, chunk); err != nil {
				return nil, nil, 0, 0, err
			}
			chunk = w.chunk()
		}
		if progress != nil {
			progress(pos, end)
		}
	}
	if !sink.empty(chunk) {
		if err := w.queue(ctx, chunk); err != nil {
			return nil, nil, 0, 0, err
		}
	}
	return folds, streamed, pos, n, nil
}

// streamChunk is a run of streamed rows on their way to the database, by table: COPY text on
// PostgreSQL, the row sets themselves on SQLite.
type streamChunk struct {
	parts []*chunkPart
}

type chunkPart struct {
	table string
	stmt  string // the COPY statement of text
	text  []byte
	sets  []RowSet
	rows  int
}

// part is the chunk's part for table.
func (c *streamChunk) part(table string) *chunkPart {
	for _, p := range c.parts {
		if p.table == table {
			return p
		}
	}
	p := &chunkPart{table: table}
	c.parts = append(c.parts, p)
	return p
}

func (c *streamChunk) bytes() (n int) {
	for _, p := range c.parts {
		n += len(p.text)
	}
	return n
}

func (c *streamChunk) rows() (n int) {
	for _, p := range c.parts {
		n += p.rows
	}
	return n
}

func (c *streamChunk) reset() {
	for _, p := range c.parts {
		p.text, p.sets, p.rows = p.text[:0], nil, 0
	}
}

// rowSink is where bulkLoad writes: how streamed rows are collected into chunks and written,
// and how the load is finished.
type rowSink interface {
	// add appends rows to a chunk (on the fold goroutine).
	add(c *streamChunk, rs RowSet) error
	// full reports whether a chunk should be written now, empty whether it holds no row.
	full(c *streamChunk) bool
	empty(c *streamChunk) bool
	// write stores a chunk in a transaction of its own (on the writer goroutine).
	write(ctx context.Context, c *streamChunk) error
	// finish stores the folds' final rows and the checkpoint in one transaction.
	finish(ctx context.Context, rows []RowSet, t Tables, pos uint64) error
}

func newRowSink(db *bun.DB) rowSink {
	if !isPG(db) {
		return insertSink{db: db}
	}
	return copySink{db: db}
}

// copySink loads PostgreSQL with COPY.
type copySink struct {
	db *bun.DB
}

func (s copySink) add(c *streamChunk, rs RowSet) (err error) {
	p := c.part(rs.table())
	p.text, p.stmt, err = rs.appendCopy(s.db, p.text)
	p.rows += rs.len()
	return err
}

func (s copySink) full(c *streamChunk) bool { return c.bytes() >= streamChunkBytes }

func (s copySink) empty(c *streamChunk) bool { return c.bytes() == 0 }

func (s copySink) write(ctx context.Context, c *streamChunk) error {
	conn, err := s.db.Conn(ctx)
	if err != nil {
		return err
	}
	defer func() { _ = conn.Close() }()
	for _, p := range c.parts {
		if err := copyText(ctx, conn, p.stmt, p.table, p.text); err != nil {
			return err
		}
	}
	return nil
}

// finish runs the COPYs on the connection of the transaction (COPY has no place in
// database/sql's API), so they are part of it.
func (s copySink) finish(ctx context.Context, rows []RowSet, t Tables, pos uint64) error {
	conn, err := s.db.Conn(ctx)
	if err != nil {
		return err
	}
	defer func() { _ = conn.Close() }()
	tx, err := conn.BeginTx(ctx, nil)
	if err != nil {
		return err
	}
	defer func() { _ = tx.Rollback() }() // after Commit: sql.ErrTxDone, ignored
	for _, rs := range rows {
		if err := rs.copyAll(ctx, s.db, conn); err != nil {
			return err
		}
	}
	if err := setCheckpoint(ctx, tx, t, pos); err != nil {
		return err
	}
	return tx.Commit()
}

// insertSink loads SQLite (or any database without COPY) with multi-row INSERTs.
type insertSink struct {
	db *bun.DB
}

func (s insertSink) add(c *streamChunk, rs RowSet) error {
	p := c.part(rs.table())
	p.sets = append(p.sets, rs)
	p.rows += rs.len()
	return nil
}

func (s insertSink) full(c *streamChunk) bool { return c.rows() >= streamChunkRows }

func (s insertSink) empty(c *streamChunk) bool { return c.rows() == 0 }

func (s insertSink) write(ctx context.Context, c *streamChunk) error {
	for _, p := range c.parts {
		for _, rs := range p.sets {
			if err := rs.insert(ctx, s.db); err != nil {
				return err
			}
		}
	}
	return nil
}

func (s insertSink) finish(ctx context.Context, rows []RowSet, t Tables, pos uint64) error {
	return s.db.RunInTx(ctx, nil, func(ctx context.Context, tx bun.Tx) error {
		for _, rs := range rows {
			if err := rs.insert(ctx, tx); err != nil {
				return err
			}
		}
		return setCheckpoint(ctx, tx, t, pos)
	})
}

func setCheckpoint(ctx context.Context, tx bun.Tx, t Tables, pos uint64) error {
	_, err := tx.NewUpdate().Model((*checkpointRow)(nil)).Set("position = ?", pos).
		Set("updated_at = ?", timeNow().UTC()).Where("name = ?", t.Checkpoint()).Exec(ctx)
	return err
}

// streamWriter is bulkLoad's last stage: a goroutine writing queued chunks of streamed rows
// while the stream is read and folded. After a failure it cancels the load (with its error as
// the cause) and drains the queue without writing, so the fold never blocks on it.
type streamWriter struct {
	work  chan *streamChunk
	spare chan *streamChunk // written chunks, for reuse
	done  chan struct{}
	err   error // the first write error; read after done
}

func startStreamWriter(ctx context.Context, cancel context.CancelCauseFunc, sink rowSink) *streamWriter {
	w := &streamWriter{work: make(chan *streamChunk, streamQueue),
		spare: make(chan *streamChunk, streamQueue+1), done: make(chan struct{})}
	go func() {
		defer close(w.done)
		for c := range w.work {
			if w.err == nil {
				if w.err = sink.write(ctx, c); w.err != nil {
					cancel(w.err)
				}
			}
			c.reset()
			select {
			case w.spare <- c:
			default:
			}
		}
	}()
	return w
}

// chunk returns an empty chunk, a written one if there is one.
func (w *streamWriter) chunk() *streamChunk {
	select {
	case c := <-w.spare:
		return c
	default:
		return &streamChunk{}
	}
}

// queue hands a full chunk to the writer, waiting while streamQueue chunks are queued.
func (w *streamWriter) queue(ctx context.Context, c *streamChunk) error {
	select {
	case w.work <- c:
		return nil
	case <-ctx.Done():
		return context.Cause(ctx)
	}
}

// close waits for the queued chunks to be written and returns the first write error.
func (w *streamWriter) close() error {
	close(w.work)
	<-w.done
	return w.err
}
