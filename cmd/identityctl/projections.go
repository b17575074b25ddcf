package main

import (
	"context"
	"errors"

	"github.com/identityd/identityd/projections"
)

// projectionsStatus prints each projection's position and lag behind the stream.
func (c *cli) projectionsStatus(ctx context.Context, args []string) error {
	if len(args) > 0 {
		return usageError{"projections status takes no arguments"}
	}
	db, st, err := c.both(ctx, false)
	if err != nil {
		return err
	}
	last, err := st.LastSequence(ctx)
	if err != nil {
		return err
	}
	cps, err := projections.Checkpoints(ctx, db)
	if err != nil {
		return err
	}
	if len(cps) == 0 {
		return errors.New("no projections in this database: has identityd ever run against it?")
	}
	for _, cp := range cps {
		lag := uint64(0)
		if last > cp.Position {
			lag = last - cp.Position
		}
		if err := c.out.Encode(map[string]any{
			"projection": cp.Name, "position": cp.Position, "stream_last": last, "lag": lag,
			"updated_at": cp.UpdatedAt, "rebuilding": cp.Name == projections.CurrentTables.Checkpoint()+"_next",
		}); err != nil {
			return err
		}
	}
	return nil
}

// projectionsRebuild replays the stream into fresh tables and switches over when caught up.
func (c *cli) projectionsRebuild(ctx context.Context, args []string) error {
	if len(args) > 1 || (len(args) == 1 && args[0] != "users") {
		return usageError{"projections rebuild [users]: the only projection is \"users\" (users, tokens, sessions, audit log)"}
	}
	db, st, err := c.both(ctx, true)
	if err != nil {
		return err
	}
	prog := c.newProgress("rebuild")
	res, err := projections.Rebuild(ctx, projections.RebuildConfig{
		DB:       db,
		Read:     st.ReadAll,
		Replay:   st.Replay,
		Last:     st.LastSequence,
		Progress: prog.update,
	})
	prog.done()
	if err != nil {
		return err
	}
	rate := float64(res.Events) / max(res.Duration.Seconds(), 1e-9)
	phases := make(map[string]int64, len(res.Phases))
	for name, d := range res.Phases {
		phases[name] = d.Milliseconds()
	}
	return c.out.Encode(map[string]any{
		"projection": projections.CurrentTables.Checkpoint(), "events": res.Events, "position": res.Position,
		"duration_ms": res.Duration.Milliseconds(), "events_per_second": int(rate), "phases_ms": phases,
	})
}
