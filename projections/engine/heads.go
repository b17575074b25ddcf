package engine

import (
	"encoding/hex"

	"github.com/google/uuid"

	"github.com/identityd/identityd/events"
)

// chainHeads is the chain hash of the last accepted event of every aggregate, for a pass over
// the whole stream (rebuild, verify): an event that does not continue its aggregate's chain is
// a replay of an older genuine event and is never applied (events.Envelope.Continues). Keys
// and hashes are kept as bytes: a rebuild holds one entry per aggregate.
type chainHeads struct {
	users  map[uuid.UUID][32]byte
	others map[string][32]byte
}

func newChainHeads() *chainHeads {
	return &chainHeads{users: map[uuid.UUID][32]byte{}, others: map[string][32]byte{}}
}

// continues reports whether e continues its aggregate's chain.
func (h *chainHeads) continues(e events.Envelope) bool {
	return e.Continues(h.get(e.Subject))
}

// accept records e as its aggregate's last accepted event.
func (h *chainHeads) accept(e events.Envelope) {
	var sum [32]byte
	if _, err := hex.Decode(sum[:], []byte(e.ChainHash)); err != nil || len(e.ChainHash) != 64 {
		return // unchained (written before chaining): the chain starts at the next chained event
	}
	if kind, id, ok := splitAggregate(e.Subject); ok && kind == "user" {
		if u, err := uuid.Parse(id); err == nil {
			h.users[u] = sum
			return
		}
	}
	h.others[e.Subject] = sum
}

func (h *chainHeads) get(subject string) string {
	var sum [32]byte
	var ok bool
	if kind, id, split := splitAggregate(subject); split && kind == "user" {
		if u, err := uuid.Parse(id); err == nil {
			sum, ok = h.users[u]
		}
	} else {
		sum, ok = h.others[subject]
	}
	if !ok {
		return ""
	}
	return hex.EncodeToString(sum[:])
}

// splitAggregate splits a CloudEvents subject, "kind/id".
func splitAggregate(subject string) (string, string, bool) {
	for i := 0; i < len(subject); i++ {
		if subject[i] == '/' {
			return subject[:i], subject[i+1:], true
		}
	}
	return "", "", false
}
