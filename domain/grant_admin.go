package domain

import (
	"context"

	"github.com/google/uuid"

	"github.com/identityd/identityd/events"
)

// GrantAdmin makes a user an administrator. Granting an administrator changes nothing (Seq is
// then the user's current version, to wait for like any other answer). The caller decides who
// may grant: the HTTP API lets administrators do it, identityd's start-up bootstrap does it
// once (actor "system").
func (s *Service) GrantAdmin(ctx context.Context, meta events.Metadata, userID uuid.UUID) (Result, error) {
	return s.users.update(ctx, meta, userID, command[*User]{
		emits:  []events.Type{events.TypeAdminGranted},
		decide: func(u *User, _ *batch) error { u.grantAdmin(); return nil },
	})
}
