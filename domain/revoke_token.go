package domain

import (
	"context"

	"github.com/google/uuid"

	"github.com/identityd/identityd/events"
)

// RevokeToken revokes one of the user's API tokens.
func (s *Service) RevokeToken(ctx context.Context, meta events.Metadata, userID, tokenID uuid.UUID) (Result, error) {
	return s.users.update(ctx, meta, userID, command[*User]{
		emits:  []events.Type{events.TypeTokenRevoked},
		decide: func(u *User, _ *batch) error { return u.revokeToken(tokenID) },
	})
}
