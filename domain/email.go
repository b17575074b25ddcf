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
		c.version = e.Sequence // a refused or replayed event holds a position but changes nothing (User.follow)
		if e.Refusal == nil && e.Continues(c.chain) {
			c.apply(e.Data)
			c.chain = e.ChainHash
		}
	}
	return c
}

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
