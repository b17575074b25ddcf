package domain

import (
	"context"

	"github.com/google/uuid"

	"github.com/identityd/identityd/events"
)

// ChangePassword verifies the current password and sets a new one.
func (s *Service) ChangePassword(ctx context.Context, meta events.Metadata, userID uuid.UUID, current, next string) (Result, error) {
	if err := checkPassword(next); err != nil {
		return Result{}, err
	}
	hash, err := hashPassword(next, s.cfg.Password)
	if err != nil {
		return Result{}, err
	}
	return s.users.update(ctx, meta, userID, command[*User]{
		emits: []events.Type{events.TypePasswordSet},
		decide: func(u *User, _ *batch) error {
			if ok, _ := verifyPassword(u.pwHash, current); !ok {
				return ErrInvalidCredentials
			}
			u.setPassword(hash)
			return nil
		},
	})
}
