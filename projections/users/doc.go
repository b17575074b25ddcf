// Package users is the users-and-credentials read model: users, their live API tokens and
// sessions (digests only), and when each credential was last used.
//
//   - projection.go: the Projection (its tables and rows) for the engine.
//   - reducers.go, fold.go: event type → change to the rows; loading a batch's users and
//     writing the difference, or handing a rebuild its final rows.
//   - check.go: Verify's comparison of the rows with domain.ReplayUser over each user's history.
//   - readmodel.go: the queries (credential by digest, user, tokens) and RecordUsage.
//   - usage.go: UsageTracker, which coalesces credential use in memory (not event-sourced).
package users
