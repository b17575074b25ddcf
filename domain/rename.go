package domain

import (
	"context"

	"github.com/google/uuid"

	"github.com/identityd/identityd/events"
)

// Rename changes the user's display name.
func (s *Service) Rename(ctx context.Context, meta events.Metadata, userID uuid.UUID, name string) (UserView, Result, error) {
	var view UserView
	res, err := s.users.update(ctx, meta, userID, command[*User]{
		emits:  []events.Type{events.TypeUserRenamed},
		decide: func(u *User, _ *batch) error { return u.rename(name) },
		view:   func(u *User) { view = u.View() },
	})
	return view, res, err
}
