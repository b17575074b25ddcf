package projections

import (
	"context"
	"fmt"
	"sort"
	"strings"
	"time"

	"github.com/google/uuid"
	"github.com/uptrace/bun"

	"github.com/identityd/identityd/domain"
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
	DB   *bun.DB
	Read StreamReader
	Last func(ctx context.Context) (uint64, error)
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

// Verify folds the whole stream and compares it with every read model and with the hash
// chains. The read models are compared at their checkpoint: a consistent snapshot is taken
// first, then the stream is folded up to exactly that position, so a running service does not
// cause false alarms.
func Verify(ctx context.Context, cfg VerifyConfig) (VerifyReport, error) {
	var rep VerifyReport
	snap, err := TakeSnapshot(ctx, cfg.DB, CurrentTables)
	if err != nil {
		return rep, fmt.Errorf("read models: %w", err)
	}
	last, err := cfg.Last(ctx)
	if err != nil {
		return rep, err
	}
	rep.Position, rep.StreamLast = snap.Position, last
	report := func(d Difference) { rep.Differences = append(rep.Differences, d) }
	if snap.Position > last {
		report(Difference{Kind: "checkpoint_ahead_of_stream", Detail: fmt.Sprintf("checkpoint %d, stream ends at %d", snap.Position, last)})
	}

	// Fold the stream up to the checkpoint, checking each aggregate's hash chain on the way.
	histories := map[uuid.UUID][]events.Envelope{}
	chains := map[string]string{}
	hashed := map[string]bool{} // aggregates whose chain has begun
	var lastGenuine uint64      // the last event that verified
	visit := func(batch []events.Envelope) {
		for _, e := range batch {
			if e.Sequence > snap.Position {
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
			lastGenuine = e.Sequence
			if e.ChainHash != "" {
				hashed[e.Subject] = true
			}
			if u, ok := ownerOf(e); ok {
				histories[u] = append(histories[u], e)
			}
		}
		if cfg.Progress != nil {
			cfg.Progress(batch[len(batch)-1].Sequence, snap.Position)
		}
	}
	end := min(snap.Position, last)
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
	if uint64(snap.AuditCount) != rep.Events || (rep.Events > 0 && snap.AuditMax != lastGenuine) { //nolint:gosec // a row count, never negative
		report(Difference{Kind: "audit_log", Detail: fmt.Sprintf("%d audit rows up to %d, stream has %d events up to %d", snap.AuditCount, snap.AuditMax, rep.Events, snap.Position)})
	}
	compareReadModel(histories, snap, report)
	rep.Users = len(histories)
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

// compareReadModel checks the snapshot row by row against the fold of each user's history.
func compareReadModel(histories map[uuid.UUID][]events.Envelope, snap Snapshot, report func(Difference)) {
	users := map[uuid.UUID]UserRow{}
	for _, u := range snap.Users {
		users[u.ID] = u
	}
	tokens := map[uuid.UUID]TokenRow{}
	for _, t := range snap.Tokens {
		tokens[t.ID] = t
	}
	sessions := map[uuid.UUID]SessionRow{}
	for _, s := range snap.Sessions {
		sessions[s.ID] = s
	}
	for id, history := range histories {
		want := domain.ReplayUser(id, history, time.Time{})
		agg := events.UserAggregate(id).String()
		row, has := users[id]
		delete(users, id)
		live := want.Exists && !want.Deleted
		switch {
		case live && !has:
			report(Difference{Kind: "user_missing", Aggregate: agg, Detail: "the stream has this user; the read model does not"})
			continue
		case !live && has:
			report(Difference{Kind: "user_not_deleted", Aggregate: agg, Detail: "the stream deleted (or never registered) this user; the read model still has it"})
			continue
		case !live:
			continue
		}
		for field, pair := range map[string][2]any{
			"email": {row.Email, want.Email}, "name": {row.Name, want.Name},
			"personal_org_slug": {row.PersonalOrgSlug, want.PersonalOrgSlug}, "version": {row.Version, want.Version},
			"admin": {row.Admin, want.Admin},
		} {
			if pair[0] != pair[1] {
				report(Difference{Kind: "user_field", Aggregate: agg, Detail: fmt.Sprintf("%s: read model %v, stream %v", field, pair[0], pair[1])})
			}
		}
		for _, t := range want.Tokens {
			row, has := tokens[t.ID]
			delete(tokens, t.ID)
			switch {
			case !t.Revoked && !has:
				report(Difference{Kind: "token_missing", Aggregate: agg, Detail: "token " + t.ID.String() + " is live in the stream"})
			case t.Revoked && has:
				report(Difference{Kind: "token_not_revoked", Aggregate: agg, Detail: "token " + t.ID.String() + " was revoked in the stream but still authenticates"})
			case has && (row.UserID != id || row.Description != t.Description):
				report(Difference{Kind: "token_field", Aggregate: agg, Detail: "token " + t.ID.String() + " differs"})
			}
		}
		for _, s := range want.Sessions {
			_, has := sessions[s.ID]
			delete(sessions, s.ID)
			if s.Ended == has {
				report(Difference{Kind: "session", Aggregate: agg, Detail: fmt.Sprintf("session %s: ended in the stream %v, live in the read model %v", s.ID, s.Ended, has)})
			}
		}
	}
	for id := range users {
		report(Difference{Kind: "user_unknown", Aggregate: events.UserAggregate(id).String(), Detail: "the read model has a user the stream never registered"})
	}
	for id, t := range tokens {
		report(Difference{Kind: "token_unknown", Aggregate: events.UserAggregate(t.UserID).String(), Detail: "token " + id.String() + " is not in the stream (or belongs to a deleted user)"})
	}
	for id, s := range sessions {
		report(Difference{Kind: "session_unknown", Aggregate: events.UserAggregate(s.UserID).String(), Detail: "session " + id.String() + " is not in the stream"})
	}
}
