package domain

import (
	"context"

	"github.com/google/uuid"
)

// User returns a user's current state, read from the stream (not the read model).
func (s *Service) User(ctx context.Context, userID uuid.UUID) (UserView, error) {
	var v UserView
	err := s.users.read(ctx, userID, func(u *User) error { v = u.View(); return nil })
	return v, err
}

// UserIDByEmail is the id of the account that holds an address now, from the address's claim
// in the stream; ErrUserNotFound when no account holds it. identityd's bootstrap resolves a
// configured administrator e-mail with it, once, into the user id that the rights belong to.
func (s *Service) UserIDByEmail(ctx context.Context, email string) (uuid.UUID, error) {
	normalized, err := NormalizeEmail(email)
	if err != nil {
		return uuid.Nil, err
	}
	claim, err := s.loadEmail(ctx, normalized)
	if err != nil {
		return uuid.Nil, err
	}
	if !claim.claimed {
		return uuid.Nil, ErrUserNotFound
	}
	return claim.owner, nil
}
