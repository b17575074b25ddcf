package domain

import (
	"context"

	"github.com/google/uuid"

	"github.com/identityd/identityd/events"
)

// DeleteUser deletes the account and releases its email, atomically.
func (s *Service) DeleteUser(ctx context.Context, meta events.Metadata, userID uuid.UUID) (Result, error) {
	return s.users.update(ctx, meta, userID, command[*User]{
		emits: []events.Type{events.TypeUserDeleted, events.TypeEmailReleased},
		decide: func(u *User, b *batch) error {
			claim, err := s.loadEmail(ctx, u.email)
			if err != nil {
				return err
			}
			u.remove()
			claim.release(userID)
			b.then(claim)
			return nil
		},
	})
}
