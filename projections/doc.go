// Package projections builds identityd's queryable read models from the event stream.
//
// A Projector consumes the stream through a Watermill router (recoverer, retry and poison-queue
// middleware) from a subscriber (subscriber.go) that verifies, decodes and batches what the
// event store's feed (eventstore.Feed) hands on in stream order. Each batch
// is applied in one database transaction together with the projection's checkpoint, so
// redelivery, crashes and restarts apply every event exactly once in effect. Reducers are a
// table from event type to a function that changes rows (see reducers.go), and every read-model
// table name carries a schema version so a projection can be rebuilt into fresh tables.
//
// The read side (ReadModel) answers the HTTP API's queries through bun, on PostgreSQL or SQLite.
// The in-memory credential cache over it is package credcache.
package projections
