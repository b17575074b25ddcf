package domain

import (
	"context"

	"github.com/google/uuid"

	"github.com/identityd/identityd/events"
)

// EndSession logs a session out.
func (s *Service) EndSession(ctx context.Context, meta events.Metadata, userID, sessionID uuid.UUID) (Result, error) {
	return s.users.update(ctx, meta, userID, command[*User]{
		emits:  []events.Type{events.TypeSessionEnded},
		decide: func(u *User, _ *batch) error { return u.endSession(sessionID) },
	})
}
