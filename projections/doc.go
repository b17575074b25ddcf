// Package projections is identityd's read side as the service uses it: the read models it
// keeps (All: users and credentials, audit log) run by one engine, and the queries the HTTP
// API asks of them (ReadModel).
//
//   - register.go lists the read models; a new one is a package implementing
//     engine.Projection plus one line there.
//   - projections.go names the engine's entry points (NewProjector, Rebuild, Verify,
//     Checkpoints, CreateSchema, ApplyBatch) with every read model registered, and ReadModel,
//     which answers from all of them.
//
// The pieces live in sub-packages: engine (the Projection contract; the live projector,
// checkpoints, rebuild with its bulk/COPY path, verify), users (users, API tokens, sessions,
// credential use), audit (the audit log and the event-id replay guard), sqldb (opening the
// database), credcache (the in-memory credential cache over ReadModel) and dbtest (throwaway
// databases for tests).
package projections
