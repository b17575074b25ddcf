// Package credcache answers credential lookups (token digest → token and user) from memory
// without giving up "a revoked token stops working at once, on every instance".
//
//   - cache.go: Cache, over the read model: entries dropped as events arrive on the local
//     projector's feed, a lease that lets the cache answer only while every event up to the
//     stream leader's last sequence has arrived, and the commit wait (Fence) a write that
//     changes cached data passes before it answers.
//   - presence.go: Presence, the registry of instances sharing the stream (a small JetStream
//     stream), which tells the cache when it may take leases (MayLease) and when no other
//     instance can hold one (Alone), so a lone instance skips the commit wait.
//
// The protocol — what a lease promises, when a write may answer, how instances register and
// what happens when one stalls or loses NATS — is written down in docs/credential-cache.md,
// naming the functions that implement each rule.
package credcache
