package engine

import (
	"context"
	"fmt"
	"sort"
	"strings"

	"github.com/google/uuid"
	"github.com/uptrace/bun"

	"github.com/identityd/identityd/events"
)

// Difference is one thing the read models or the stream got wrong.
type Difference struct {
	Kind      string `json:"difference"`
	Aggregate string `json:"aggregate,omitempty"`
	Sequence  uint64 `json:"sequence,omitempty"`
	Detail    string `json:"detail"`
}

// VerifyConfig configures Verify.
type VerifyConfig struct {
	DB *bun.DB
	// Projections are the read models to compare; those that are Checkers are compared.
	Projections []Projection
	Read        StreamReader
	Last        func(ctx context.Context) (uint64, error)
	// Replay, if set, reads the stream in place of Read: one streaming read is cheaper than
	// many range reads.
	Replay StreamReplayer
	// Progress, if set, is told the position folded and the position to reach.
	Progress func(pos, end uint64)
}

// VerifyReport is what Verify found.
type VerifyReport struct {
	Differences []Difference `json:"-"`
	Position    uint64       `json:"position"`
	StreamLast  uint64       `json:"stream_last"`
	Events      uint64       `json:"events"`
	Users       int          `json:"users"`
}

// Verify reads the whole stream, checks its signatures and hash chains, and hands every
// event the read models must reflect to each projection's Check. The read models are compared at their checkpoint: a consistent snapshot is taken
// first, then the stream is folded up to exactly that position, so a running service does not
// cause false alarms.
func Verify(ctx context.Context, cfg VerifyConfig) (VerifyReport, error) {
	var rep VerifyReport
	var checks []Check
	var position uint64
	err := ReadConsistent(ctx, cfg.DB, CurrentTables, func(ctx context.Context, tx bun.Tx, pos uint64) error {
		position = pos
		for _, p := range cfg.Projections {
			if c, ok := p.(Checker); ok {
				check, err := c.Check(ctx, tx, CurrentTables, pos)
				if err != nil {
					return err
				}
				checks = append(checks, check)
			}
		}
		return nil
	})
	if err != nil {
		return rep, fmt.Errorf("read models: %w", err)
	}
	last, err := cfg.Last(ctx)
	if err != nil {
		return rep, err
	}
	rep.Position, rep.StreamLast = position, last
	report := func(d Difference) { rep.Differences = append(rep.Differences, d) }
	if position > last {
		report(Difference{Kind: "checkpoint_ahead_of_stream", Detail: fmt.Sprintf("checkpoint %d, stream ends at %d", position, last)})
	}

	// Read the stream up to the checkpoint, checking each aggregate's hash chain on the way.
	users := map[uuid.UUID]bool{}
	chains := map[string]string{}
	hashed := map[string]bool{} // aggregates whose chain has begun
	visit := func(batch []events.Envelope) {
		for _, e := range batch {
			if e.Sequence > position {
				break
			}
			if e.Refusal != nil {
				// Not identityd's event: the read models must not show it, and the chain goes on
				// from the last genuine event of the aggregate.
				report(Difference{Kind: "signature_invalid", Aggregate: aggregateOfSubject(e.NATSSubj), Sequence: e.Sequence,
					Detail: "the event's signature does not verify against the trusted keys (forged, altered or signed by an unknown key): " + e.Refusal.Error()})
				continue
			}
			switch {
			case e.ChainHash == "" && !hashed[e.Subject]: // written before tamper evidence existed
				chains[e.Subject] = ""
			case e.ChainHash == "":
				report(Difference{Kind: "hash_chain_broken", Aggregate: e.Subject, Sequence: e.Sequence,
					Detail: "the event has no chain hash although earlier events of its aggregate have one: inserted"})
			case events.ChainHash(chains[e.Subject], e.ContentHash) != e.ChainHash:
				// Signed, so written by identityd, but not at its aggregate's head: replayed (or
				// a predecessor removed). Like the projector and the domain, the fold leaves it
				// out and the chain goes on from the last accepted event.
				report(Difference{Kind: "hash_chain_broken", Aggregate: e.Subject, Sequence: e.Sequence,
					Detail: "the event's chain hash does not follow from the previous event of its aggregate: replayed, altered, inserted or a predecessor removed; not applied"})
				continue
			default:
				chains[e.Subject] = e.ChainHash
			}
			rep.Events++
			if e.ChainHash != "" {
				hashed[e.Subject] = true
			}
			if u, ok := ownerOf(e); ok {
				users[u] = true
			}
			for _, c := range checks {
				c.See(e)
			}
		}
		if cfg.Progress != nil {
			cfg.Progress(batch[len(batch)-1].Sequence, position)
		}
	}
	end := min(position, last)
	if cfg.Replay != nil {
		if err := cfg.Replay(ctx, 1, end, 1000, func(batch []events.Envelope) error { visit(batch); return nil }); err != nil {
			return rep, err
		}
	} else {
		for from := uint64(1); from <= end; {
			batch, err := cfg.Read(ctx, from, 1000)
			if err != nil {
				return rep, err
			}
			if len(batch) == 0 {
				break
			}
			visit(batch)
			from = batch[len(batch)-1].Sequence + 1
		}
	}
	for _, c := range checks {
		c.Report(report)
	}
	rep.Users = len(users)
	sort.SliceStable(rep.Differences, func(i, j int) bool { return rep.Differences[i].Aggregate < rep.Differences[j].Aggregate })
	return rep, nil
}

// aggregateOfSubject names the aggregate a NATS subject claims (<root>.<kind>.<id>.<event>)
// as "kind/id", for reporting a refused event.
func aggregateOfSubject(subject string) string {
	parts := strings.Split(subject, ".")
	if len(parts) != 4 {
		return subject
	}
	return parts[1] + "/" + parts[2]
}

// ownerOf is the user an event's aggregate belongs to, if it is a user event.
func ownerOf(e events.Envelope) (uuid.UUID, bool) {
	if e.Data.Aggregate().Kind != "user" {
		return uuid.Nil, false
	}
	id, err := uuid.Parse(e.Data.Aggregate().ID)
	return id, err == nil
}
