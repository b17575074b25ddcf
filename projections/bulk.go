package projections

import (
	"context"
	"fmt"
	"runtime"
	"strings"
	"time"

	"github.com/uptrace/bun"
)

// bulkChunk is the number of rows per multi-row INSERT.
const bulkChunk = 1000

// The sizes of the bulk load's chunks: variables only so that tests can make them small enough
// to run every stage of the pipeline on a short history.
var (
	// auditChunkBytes is about how much COPY text goes into one COPY statement (PostgreSQL).
	// Each chunk of audit rows is a statement and a transaction of its own: 4 MiB (some 10,000
	// audit rows) makes the per-statement cost (a round trip, a commit) negligible while keeping
	// the memory held by queued chunks small.
	auditChunkBytes = 4 << 20
	// auditChunkRows is the number of audit rows per chunk where there is no COPY (SQLite).
	auditChunkRows = bulkChunk
)

// gcBallastBytes is the size of the GC ballast a bulk load holds: a large allocation that is
// never written, so it costs address space but (almost) no memory. Reading the stream allocates
// at a furious rate (NATS message headers, decoded payloads: over 10 KiB per event) while the
// heap that stays live is small, so the garbage collector, which runs whenever the heap has
// grown by GOGC% of the live heap, would run every few megabytes and take a good share of the
// CPU (measured: some 15% of the rebuild's). Counted as live, the ballast spaces the
// collections out, in exchange for at most as much real memory more (the garbage allowed to
// pile up between collections). Scanning it costs nothing: it holds no pointers. Once the fold
// itself is large, the ballast makes no difference either way.
const gcBallastBytes = 64 << 20

// auditQueue is how many full chunks of audit rows may wait for the writer: enough to ride out
// the database's jitter, few enough to bound memory.
const auditQueue = 2

// insertAll writes rows in multi-row INSERTs of bulkChunk rows.
func insertAll[T any](ctx context.Context, db bun.IDB, table string, rows []T) error {
	for len(rows) > 0 {
		n := min(bulkChunk, len(rows))
		chunk := rows[:n]
		if _, err := db.NewInsert().Model(&chunk).ModelTableExpr(table).Exec(ctx); err != nil {
			return fmt.Errorf("bulk insert into %s: %w", table, err)
		}
		rows = rows[n:]
	}
	return nil
}

func values[K comparable, V any](m map[K]*V) []V {
	out := make([]V, 0, len(m))
	for _, v := range m {
		out = append(out, *v)
	}
	return out
}

// bulkLoad replays the stream from sequence 1 to end into a generation's empty tables: audit
// rows are written as they come, the folded users, tokens and sessions once at the end, and
// the generation's checkpoint is set to the last event read. It returns that position and the
// number of events read.
//
// It is a pipeline of three stages that overlap: reading the stream (source: a replay, which
// decodes batches concurrently, or a readAhead with several range reads in flight), folding the events in memory and rendering their audit rows
// (this goroutine), and writing chunks of audit rows, each in a transaction of its own (one
// writer goroutine: COPY on PostgreSQL, multi-row INSERTs on SQLite). Once the audit log is
// complete, the folded users, tokens and sessions and the checkpoint are written in one
// transaction, so the checkpoint never claims rows that are not there; on PostgreSQL the audit
// log's indexes are built meanwhile.
//
// Reading stops early, as a sequential loop would, when a read returns nothing (Rebuild then
// refuses to switch over unless the rest turns up). Any error (a failed read, an undecodable
// event, a failed write) stops every stage, and the first one is returned.
func bulkLoad(ctx context.Context, db *bun.DB, t Tables, source func(context.Context) eventSource, end uint64, progress func(pos, end uint64),
	phases map[string]time.Duration,
) (uint64, uint64, error) {
	mark := time.Now()
	sink, err := newAuditSink(db, t)
	if err != nil {
		return 0, 0, err
	}
	ctx, cancel := context.WithCancelCause(ctx)
	defer cancel(nil)
	ballast := make([]byte, gcBallastBytes) // see gcBallastBytes
	defer runtime.KeepAlive(ballast)
	w := startAuditWriter(ctx, cancel, sink)
	m, pos, n, err := foldStream(ctx, w, sink, source, end, progress)
	if err != nil {
		cancel(err) // a no-op if the writer failed first: its error stays the cause
	}
	if werr := w.close(); err != nil || werr != nil {
		return 0, 0, context.Cause(ctx)
	}
	phases["fold"] = time.Since(mark)
	mark = time.Now()
	// The audit log is complete: on PostgreSQL, index it while the folded rows are written
	// (Rebuild creates the other indexes later, and skips these). Separate backends, so the
	// sorting of the biggest table overlaps the COPY of the others. SQLite has one writer, so
	// there this would only wait for the lock.
	indexed := make(chan error, 1)
	if isPG(db) {
		go func() { indexed <- buildIndexes(ctx, db, tableIndexes(t, t.Audit())) }()
	} else {
		indexed <- nil
	}
	err = sink.finish(ctx, m, pos)
	if ierr := <-indexed; err == nil {
		err = ierr
	}
	if err != nil {
		return 0, 0, err
	}
	phases["write"] = time.Since(mark)
	return pos, n, nil
}

// tableIndexes are the indexes of one of a generation's tables.
func tableIndexes(t Tables, table string) []indexDef {
	var out []indexDef
	for _, idx := range indexDefs(t) {
		if strings.HasPrefix(idx.name, table+"_") {
			out = append(out, idx)
		}
	}
	return out
}

// foldStream is the middle stage of bulkLoad: it folds the events in stream order, renders an
// audit row for each and queues the rows to the writer in chunks, the last one too. It returns
// the fold and the position and count of the events read.
func foldStream(ctx context.Context, w *auditWriter, sink auditSink, source func(context.Context) eventSource, end uint64,
	progress func(pos, end uint64),
) (*fold, uint64, uint64, error) {
	m := newFold()
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
			return nil, 0, 0, fmt.Errorf("read stream at %d: %w", from, err)
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
			if err := m.apply(e); err != nil {
				return nil, 0, 0, err
			}
			row, err := auditRow(e)
			if err != nil {
				return nil, 0, 0, err
			}
			if err := sink.add(chunk, &row); err != nil {
				return nil, 0, 0, fmt.Errorf("audit row of seq %d: %w", e.Sequence, err)
			}
			n++
		}
		if sink.full(chunk) {
			if err := w.queue(ctx, chunk); err != nil {
				return nil, 0, 0, err
			}
			chunk = w.chunk()
		}
		if progress != nil {
			progress(pos, end)
		}
	}
	if !sink.empty(chunk) {
		if err := w.queue(ctx, chunk); err != nil {
			return nil, 0, 0, err
		}
	}
	return m, pos, n, nil
}

// auditChunk is a run of audit rows on their way to the database: COPY text on PostgreSQL, the
// rows themselves on SQLite.
type auditChunk struct {
	text []byte
	rows []AuditRow
}

// auditSink is where bulkLoad writes: how audit rows are collected into chunks and written,
// and how the load is finished.
type auditSink interface {
	// add appends a row to a chunk (on the fold goroutine).
	add(c *auditChunk, row *AuditRow) error
	// full reports whether a chunk should be written now, empty whether it holds no row.
	full(c *auditChunk) bool
	empty(c *auditChunk) bool
	// write stores a chunk of audit rows in a transaction of its own (on the writer goroutine).
	write(ctx context.Context, c *auditChunk) error
	// finish stores the fold's users, tokens and sessions and the checkpoint in one
	// transaction.
	finish(ctx context.Context, m *fold, pos uint64) error
}

func newAuditSink(db *bun.DB, t Tables) (auditSink, error) {
	if !isPG(db) {
		return insertSink{db: db, t: t}, nil
	}
	s := copySink{db: db, t: t}
	var err error
	if s.audit, err = newCopyEncoder[AuditRow](db); err != nil {
		return nil, err
	}
	if s.users, err = newCopyEncoder[UserRow](db); err != nil {
		return nil, err
	}
	if s.tokens, err = newCopyEncoder[TokenRow](db); err != nil {
		return nil, err
	}
	if s.sessions, err = newCopyEncoder[SessionRow](db); err != nil {
		return nil, err
	}
	return s, nil
}

// copySink loads PostgreSQL with COPY.
type copySink struct {
	db       *bun.DB
	t        Tables
	audit    *copyEncoder[AuditRow]
	users    *copyEncoder[UserRow]
	tokens   *copyEncoder[TokenRow]
	sessions *copyEncoder[SessionRow]
}

func (s copySink) add(c *auditChunk, row *AuditRow) (err error) {
	c.text, err = s.audit.appendRow(c.text, row)
	return err
}

func (s copySink) full(c *auditChunk) bool { return len(c.text) >= auditChunkBytes }

func (s copySink) empty(c *auditChunk) bool { return len(c.text) == 0 }

func (s copySink) write(ctx context.Context, c *auditChunk) error {
	conn, err := s.db.Conn(ctx)
	if err != nil {
		return err
	}
	defer func() { _ = conn.Close() }()
	return copyFrom(ctx, conn, s.audit, s.t.Audit(), c.text)
}

// finish runs the COPYs on the connection of the transaction (COPY has no place in
// database/sql's API), so they are part of it.
func (s copySink) finish(ctx context.Context, m *fold, pos uint64) error {
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
	for _, step := range []func() error{
		func() error { return copyAll(ctx, conn, s.users, s.t.Users(), values(m.users)) },
		func() error { return copyAll(ctx, conn, s.tokens, s.t.Tokens(), values(m.tokens)) },
		func() error { return copyAll(ctx, conn, s.sessions, s.t.Sessions(), values(m.sessions)) },
		func() error { return setCheckpoint(ctx, tx, s.t, pos) },
	} {
		if err := step(); err != nil {
			return err
		}
	}
	return tx.Commit()
}

// insertSink loads SQLite (or any database without COPY) with multi-row INSERTs.
type insertSink struct {
	db *bun.DB
	t  Tables
}

func (s insertSink) add(c *auditChunk, row *AuditRow) error {
	c.rows = append(c.rows, *row)
	return nil
}

func (s insertSink) full(c *auditChunk) bool { return len(c.rows) >= auditChunkRows }

func (s insertSink) empty(c *auditChunk) bool { return len(c.rows) == 0 }

func (s insertSink) write(ctx context.Context, c *auditChunk) error {
	return insertAll(ctx, s.db, s.t.Audit(), c.rows)
}

func (s insertSink) finish(ctx context.Context, m *fold, pos uint64) error {
	return s.db.RunInTx(ctx, nil, func(ctx context.Context, tx bun.Tx) error {
		for _, step := range []func() error{
			func() error { return insertAll(ctx, tx, s.t.Users(), values(m.users)) },
			func() error { return insertAll(ctx, tx, s.t.Tokens(), values(m.tokens)) },
			func() error { return insertAll(ctx, tx, s.t.Sessions(), values(m.sessions)) },
			func() error { return setCheckpoint(ctx, tx, s.t, pos) },
		} {
			if err := step(); err != nil {
				return err
			}
		}
		return nil
	})
}

func setCheckpoint(ctx context.Context, tx bun.Tx, t Tables, pos uint64) error {
	_, err := tx.NewUpdate().Model((*checkpointRow)(nil)).Set("position = ?", pos).
		Set("updated_at = ?", timeNow().UTC()).Where("name = ?", t.Checkpoint()).Exec(ctx)
	return err
}

// auditWriter is bulkLoad's last stage: a goroutine writing queued chunks of audit rows while
// the stream is read and folded. After a failure it cancels the load (with its error as the
// cause) and drains the queue without writing, so the fold never blocks on it.
type auditWriter struct {
	work  chan *auditChunk
	spare chan *auditChunk // written chunks, for reuse
	done  chan struct{}
	err   error // the first write error; read after done
}

func startAuditWriter(ctx context.Context, cancel context.CancelCauseFunc, sink auditSink) *auditWriter {
	w := &auditWriter{work: make(chan *auditChunk, auditQueue),
		spare: make(chan *auditChunk, auditQueue+1), done: make(chan struct{})}
	go func() {
		defer close(w.done)
		for c := range w.work {
			if w.err == nil {
				if w.err = sink.write(ctx, c); w.err != nil {
					cancel(w.err)
				}
			}
			c.text, c.rows = c.text[:0], c.rows[:0]
			select {
			case w.spare <- c:
			default:
			}
		}
	}()
	return w
}

// chunk returns an empty chunk, a written one if there is one.
func (w *auditWriter) chunk() *auditChunk {
	select {
	case c := <-w.spare:
		return c
	default:
		return &auditChunk{}
	}
}

// queue hands a full chunk to the writer, waiting while auditQueue chunks are queued.
func (w *auditWriter) queue(ctx context.Context, c *auditChunk) error {
	select {
	case w.work <- c:
		return nil
	case <-ctx.Done():
		return context.Cause(ctx)
	}
}

// close waits for the queued chunks to be written and returns the first write error.
func (w *auditWriter) close() error {
	close(w.work)
	<-w.done
	return w.err
}
