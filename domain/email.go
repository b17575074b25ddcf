package domain

import (
	"errors"

	"github.com/google/uuid"

	"github.com/identityd/identityd/events"
)

// ErrEmailTaken is returned when an address already belongs to another account.
var ErrEmailTaken = errors.New("email already registered")

// EmailClaim is the aggregate that makes an email address unique: at most one account holds it.
// Because the stream checks each append against the claim's last sequence, two concurrent
// sign-ups with one address cannot both succeed.
type EmailClaim struct {
	agg     events.Aggregate
	owner   uuid.UUID
	claimed bool
	version uint64
	chain   string
	changes []events.Event
}

func loadEmailClaim(normalized string, history []events.Envelope) *EmailClaim {
	c := &EmailClaim{agg: events.EmailAggregate(normalized)}
	for _, e := range history {
		c.follow(e)
	}
	return c
}

// follow applies one stored event of the claim's history; a refused or replayed event holds a
// position but changes nothing (User.follow).
func (c *EmailClaim) follow(e events.Envelope) {
	c.version = e.Sequence
	if e.Refusal == nil && e.Continues(c.chain) {
		c.apply(e.Data)
		c.chain = e.ChainHash
	}
}

// expectation is the condition of the claim's next append: its last event is still the one
// folded here. A command that reads a claim appends with it even when the claim does not
// change, so the decision holds only if the claim did not change meanwhile.
func (c *EmailClaim) expectation() events.Expectation {
	return events.Expectation{Aggregate: c.agg, Version: c.version, Chain: c.chain}
}

// pending lists the events decided since the claim was loaded.
func (c *EmailClaim) pending() []events.Event { return c.changes }

// committed records that the pending events were stored (the last of all stored changes at
// seq): the claim continues from its own last change.
func (c *EmailClaim) committed(seq uint64, stored []events.Change) {
	if v, chain, ok := lastStored(c.agg, seq, stored); ok {
		c.version, c.chain = v, chain
	}
	c.changes = nil
}

// active reports whether an account holds the address.
func (c *EmailClaim) active() bool { return c.claimed }

// claim reserves the address for the user; claiming one's own address changes nothing.
func (c *EmailClaim) claim(user uuid.UUID) error {
	if c.claimed {
		if c.owner == user {
			return nil
		}
		return ErrEmailTaken
	}
	c.raise(events.EmailClaimed{Versioned: events.V(), EmailHash: c.agg.ID, UserID: user})
	return nil
}

// release frees the address held by the user.
func (c *EmailClaim) release(user uuid.UUID) {
	if c.claimed && c.owner == user {
		c.raise(events.EmailReleased{Versioned: events.V(), EmailHash: c.agg.ID, UserID: user})
	}
}

func (c *EmailClaim) raise(e events.Event) {
	c.apply(e)
	c.changes = append(c.changes, e)
}

func (c *EmailClaim) apply(e events.Event) {
	switch e := e.(type) {
	case events.EmailClaimed:
		c.claimed, c.owner = true, e.UserID
	case events.EmailReleased:
		c.claimed, c.owner = false, uuid.Nil
	}
}
