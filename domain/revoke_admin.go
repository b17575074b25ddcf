package domain

import (
	"context"

	"github.com/google/uuid"

	"github.com/identityd/identityd/events"
)

// RevokeAdmin takes a user's administrator rights away; by, the administrator asking, cannot
// revoke their own (ErrSelfRevocation). Revoking from a user without them changes nothing.
func (s *Service) RevokeAdmin(ctx context.Context, meta events.Metadata, by, userID uuid.UUID) (Result, error) {
	if by == userID {
		return Result{}, ErrSelfRevocation
	}
	return s.users.update(ctx, meta, userID, command[*User]{
		emits:  []events.Type{events.TypeAdminRevoked},
		decide: func(u *User, _ *batch) error { u.revokeAdmin(); return nil },
	})
}
