package wiring

import (
	"context"

	"github.com/uptrace/bun"

	"github.com/identityd/identityd/events/eventstore"
	"github.com/identityd/identityd/projections"
)

// Verify folds the whole stream and compares it with every read model and with the hash
// chains (projections.Verify), reading the stream in one streaming replay. It is the check
// `identityctl verify` runs, and the one the tests run after every scenario. progress may be nil.
func Verify(ctx context.Context, db *bun.DB, st *eventstore.Store, progress func(pos, end uint64)) (projections.VerifyReport, error) {
	return projections.Verify(ctx, projections.VerifyConfig{
		DB:       db,
		Read:     st.ReadAll,
		Replay:   st.Replay,
		Last:     st.LastSequence,
		Progress: progress,
	})
}
