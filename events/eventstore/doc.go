// Package eventstore keeps identityd's events in a NATS JetStream stream and reads them back.
//
//   - store.go: Store creates the stream, appends with per-aggregate optimistic concurrency
//     (expected last subject sequence over the aggregate's wildcard subject), appends several
//     events atomically (atomic batch publish), deduplicates retries (Nats-Msg-Id), loads one
//     aggregate's history with batched direct gets (DirectRead), and reads the stream's last
//     sequence from its leader (LastSequence). It implements domain.EventStore in the
//     vocabulary of package events, without importing domain.
//   - replay.go: whole-stream replays with one ordered consumer (rebuilds, verification).
//   - feed.go: Feed, the in-order feed a projector reads from its own checkpoint: an ordered
//     consumer, a watchdog that replaces it when it stalls, and a direct-get bridge while a
//     caller waits; it announces each event as it arrives (Arrival), before anyone decodes it.
package eventstore
