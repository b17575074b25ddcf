// Package engine runs identityd's read models. A read model is a Projection (contract.go):
// a name, tables versioned by generation, a table from event type to reducer (Reducers, On)
// and a Fold that loads, changes and writes rows. The engine does the rest for every
// projection it is given, so none of it is written twice:
//
//   - projector.go, subscriber.go, poison.go: the live projector, a Watermill router over the
//     event store's feed (eventstore.Feed) that verifies, decodes and batches events; an
//     event that cannot be applied goes to the poison queue.
//   - apply.go: a batch applied to every projection in one transaction with the generation's
//     checkpoint (exactly once in effect), replays refused through the ReplayGuard
//     projections (dropReplays), writes sent in one round trip on PostgreSQL (statements).
//   - schema.go, checkpoint.go: generations (Tables), table and index creation, the shared
//     checkpoint, Checkpoints for status, ReadConsistent for consistent reads.
//   - rebuild.go, bulk.go, bulk_read.go, copy.go, rows.go, heads.go: Rebuild replays the
//     stream into fresh tables beside the live ones (a pipelined bulk load: streamed rows
//     written as they come, final rows at the end, COPY on PostgreSQL) and switches over.
//   - verify.go: Verify checks the stream's signatures and hash chains and hands each event
//     to the Check of every Checker projection.
package engine
