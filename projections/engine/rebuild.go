package engine

import (
	"cmp"
	"context"
	"errors"
	"fmt"
	"time"

	"github.com/uptrace/bun"

	"github.com/identityd/identityd/events"
)

// StreamReader reads up to limit events from stream sequence `from` on (all subjects).
type StreamReader func(ctx context.Context, from uint64, limit int) ([]events.Envelope, error)

// StreamReplayer hands the events from stream sequence `from` to `end` (inclusive) to each, in
// order, in batches of up to `batch`; it returns nil when it has handed out `end` or when the
// stream holds nothing more (eventstore.Store.Replay).
type StreamReplayer func(ctx context.Context, from, end uint64, batch int, each func([]events.Envelope) error) error

// RebuildConfig configures Rebuild.
type RebuildConfig struct {
	DB *bun.DB
	// Projections are the read models to rebuild: every one the service keeps, since they
	// share the generation's checkpoint.
	Projections []Projection
	// Read reads the stream; Last returns the stream's last sequence. Without Replay, Read must
	// be safe for concurrent use: the bulk load keeps several reads of consecutive ranges in
	// flight.
	Read StreamReader
	Last func(ctx context.Context) (uint64, error)
	// Replay, if set, is how the bulk load reads the stream, in place of Read (which still
	// serves the catch-up and the switch-over): one streaming read of everything is cheaper
	// than many range reads.
	Replay StreamReplayer
	// Live is the generation being replaced (default CurrentTables).
	Live Tables
	// Batch is the number of events per read or replayed batch of the stream, and per
	// transaction when catching up after the bulk load (default 1000).
	Batch int
	// Progress, if set, is told the position reached and the stream's end.
	Progress func(pos, end uint64)
}

// RebuildResult reports a finished rebuild.
type RebuildResult struct {
	Events   uint64        // events replayed
	Position uint64        // stream sequence the new tables are current to
	Duration time.Duration // whole rebuild, switch-over included
	// Phases is where the time went: "fold" (read the stream, fold it, write the streamed
	// rows: the audit log), "write" (the folded rows and the streamed tables' indexes), "catch_up" (events that arrived
	// meanwhile), "indexes" (the other tables' indexes) and "switch" (the switch-over).
	Phases map[string]time.Duration
}

// Rebuild replays the whole stream into fresh tables of every projection beside the live ones while the service
// keeps serving (and projecting into) the live tables, then switches over in one transaction
// that holds the live checkpoint's lock: it applies the last events, drops the old tables and
// renames the new ones into their place. Running projectors waiting on the lock resume on the
// new tables and skip what the rebuild applied. A crashed rebuild leaves only the side tables,
// which the next rebuild discards.
func Rebuild(ctx context.Context, cfg RebuildConfig) (RebuildResult, error) {
	start := time.Now()
	if cfg.DB == nil || cfg.Read == nil || cfg.Last == nil {
		return RebuildResult{}, errors.New("projections: rebuild needs DB, Read and Last")
	}
	projs := cfg.Projections
	if cfg.Live == (Tables{}) {
		cfg.Live = CurrentTables
	}
	if cfg.Batch <= 0 {
		cfg.Batch = 1000
	}
	next := cfg.Live.next()
	if err := dropTables(ctx, cfg.DB, projs, next); err != nil {
		return RebuildResult{}, err
	}
	if err := CreateSchema(ctx, cfg.DB, projs, cfg.Live); err != nil {
		return RebuildResult{}, err
	}
	if err := createTables(ctx, cfg.DB, projs, next); err != nil {
		return RebuildResult{}, err
	}
	if _, err := cfg.DB.NewUpdate().Model((*checkpointRow)(nil)).Set("position = 0").Where("name = ?", next.Checkpoint()).Exec(ctx); err != nil {
		return RebuildResult{}, err
	}
	// The bulk: fold everything stored so far in memory, insert the final rows in bulk.
	end, err := cfg.Last(ctx)
	if err != nil {
		return RebuildResult{}, err
	}
	phases := map[string]time.Duration{}
	pos, replayed, err := bulkLoad(ctx, cfg.DB, projs, next, cfg.source(end), end, cfg.Progress, phases)
	if err != nil {
		return RebuildResult{}, err
	}
	mark := time.Now()
	// What arrived meanwhile: event by event, outside the lock, until the remainder is small.
	// A read that comes back empty short of the end ends this too (looping on it would spin
	// for as long as the reader cannot see the rest): the switch-over reads once more and
	// refuses to switch if the events are still missing.
catchUp:
	for {
		end, err := cfg.Last(ctx)
		if err != nil {
			return RebuildResult{}, err
		}
		if end <= pos || end-pos <= uint64(cfg.Batch) { //nolint:gosec // Batch > 0 (defaulted above)
			break
		}
		for pos < end {
			batch, err := cfg.Read(ctx, pos+1, cfg.Batch)
			if err != nil {
				return RebuildResult{}, fmt.Errorf("read stream at %d: %w", pos+1, err)
			}
			if len(batch) == 0 {
				break catchUp
			}
			if pos, err = applyBatch(ctx, cfg.DB, projs, next, batch); err != nil {
				return RebuildResult{}, err
			}
			replayed += uint64(len(batch))
			if cfg.Progress != nil {
				cfg.Progress(pos, end)
			}
		}
	}
	phases["catch_up"] = time.Since(mark)
	mark = time.Now()
	// PostgreSQL renames the indexes with their tables at the switch-over. SQLite cannot rename
	// an index: swapTables builds them there under their live names, so building them here as
	// well would only do the work twice.
	if isPG(cfg.DB) {
		if err := buildIndexes(ctx, cfg.DB, versionedIndexes(projs, next)); err != nil {
			return RebuildResult{}, err
		}
	}
	phases["indexes"] = time.Since(mark)
	mark = time.Now()
	// Switch over: the rest, under the live checkpoint's lock, then swap the tables.
	err = cfg.DB.RunInTx(ctx, nil, func(ctx context.Context, tx bun.Tx) error {
		q := tx.NewSelect().Model((*checkpointRow)(nil)).Column("position").Where("name = ?", cfg.Live.Checkpoint())
		if isPG(tx) {
			q = q.For("UPDATE")
		}
		var livePos uint64
		if err := q.Scan(ctx, &livePos); err != nil {
			return fmt.Errorf("lock live checkpoint: %w", err)
		}
		end, err := cfg.Last(ctx)
		if err != nil {
			return err
		}
		for pos < end {
			batch, err := cfg.Read(ctx, pos+1, cfg.Batch)
			if err != nil {
				return fmt.Errorf("read stream at %d: %w", pos+1, err)
			}
			if len(batch) == 0 {
				break
			}
			if pos, err = applyBatchTx(ctx, tx, projs, next, batch); err != nil {
				return err
			}
			replayed += uint64(len(batch))
		}
		if cfg.Progress != nil {
			cfg.Progress(pos, end)
		}
		if pos < end {
			return fmt.Errorf("the stream ends at %d but reading stopped at %d; nothing switched", end, pos)
		}
		if err := swapTables(ctx, tx, projs, cfg.Live, next); err != nil {
			return err
		}
		_, err = tx.NewUpdate().Model((*checkpointRow)(nil)).Set("position = ?", max(pos, livePos)).
			Set("updated_at = ?", timeNow().UTC()).Where("name = ?", cfg.Live.Checkpoint()).Exec(ctx)
		if err != nil {
			return err
		}
		_, err = tx.NewDelete().Model((*checkpointRow)(nil)).Where("name = ?", next.Checkpoint()).Exec(ctx)
		return err
	})
	if err != nil {
		return RebuildResult{}, fmt.Errorf("switch over: %w", err)
	}
	phases["switch"] = time.Since(mark)
	return RebuildResult{Events: replayed, Position: pos, Duration: time.Since(start), Phases: phases}, nil
}

// source is where the bulk load reads the stream from sequence 1 to end.
func (cfg RebuildConfig) source(end uint64) func(ctx context.Context) eventSource {
	return func(ctx context.Context) eventSource {
		if cfg.Replay != nil {
			return newReplaySource(ctx, cfg.Replay, 1, end, cfg.Batch)
		}
		return newReadAhead(ctx, cfg.Read, 1, end, cfg.Batch)
	}
}

// indexWorkers is how many indexes buildIndexes builds at once on PostgreSQL. A build is mostly
// one backend sorting on one CPU, and the builds do not block each other (CREATE INDEX takes a
// SHARE lock, which SHARE locks do not conflict with), so two builds use both cores of a small
// machine; more would only make them take turns.
const indexWorkers = 2

// buildIndexes creates indexes (idempotent): indexWorkers at a time on PostgreSQL, one after
// the other on SQLite, which has a single writer.
func buildIndexes(ctx context.Context, db *bun.DB, defs []indexDef) error {
	create := func(idx indexDef) error {
		if _, err := db.ExecContext(ctx, idx.sql); err != nil {
			return fmt.Errorf("%s: %w", idx.sql, err)
		}
		return nil
	}
	if !isPG(db) {
		for _, idx := range defs {
			if err := create(idx); err != nil {
				return err
			}
		}
		return nil
	}
	work := make(chan indexDef)
	errs := make(chan error, indexWorkers)
	for range indexWorkers {
		go func() {
			var first error
			for idx := range work {
				if first == nil {
					first = create(idx)
				}
			}
			errs <- first
		}()
	}
	for _, idx := range defs {
		work <- idx
	}
	close(work)
	var err error
	for range indexWorkers {
		err = cmp.Or(err, <-errs)
	}
	return err
}

// dropTables drops a generation's versioned tables.
func dropTables(ctx context.Context, db bun.IDB, projs []Projection, t Tables) error {
	for _, name := range versioned(projs, t) {
		if _, err := db.ExecContext(ctx, "DROP TABLE IF EXISTS "+name); err != nil {
			return fmt.Errorf("drop %s: %w", name, err)
		}
	}
	return nil
}

// swapTables replaces live's tables with next's, indexes renamed to live's names.
func swapTables(ctx context.Context, tx bun.Tx, projs []Projection, live, next Tables) error {
	if err := dropTables(ctx, tx, projs, live); err != nil {
		return err
	}
	liveNames, nextNames := versioned(projs, live), versioned(projs, next)
	for i := range liveNames {
		if _, err := tx.ExecContext(ctx, fmt.Sprintf("ALTER TABLE %s RENAME TO %s", nextNames[i], liveNames[i])); err != nil {
			return fmt.Errorf("rename %s: %w", nextNames[i], err)
		}
	}
	nextIdx := versionedIndexes(projs, next)
	for i, idx := range versionedIndexes(projs, live) {
		oldName := nextIdx[i].name
		if isPG(tx) {
			if _, err := tx.ExecContext(ctx, fmt.Sprintf("ALTER INDEX IF EXISTS %s RENAME TO %s", oldName, idx.name)); err != nil {
				return fmt.Errorf("rename index %s: %w", oldName, err)
			}
			continue
		}
		// SQLite cannot rename an index: recreate it under the live name.
		if _, err := tx.ExecContext(ctx, "DROP INDEX IF EXISTS "+oldName); err != nil {
			return err
		}
		if _, err := tx.ExecContext(ctx, idx.sql); err != nil {
			return fmt.Errorf("%s: %w", idx.sql, err)
		}
	}
	return nil
}
