package domain

import (
	"context"
	"time"

	"github.com/google/uuid"

	"github.com/identityd/identityd/events"
)

// CreateToken is the input of Service.CreateToken.
type CreateToken struct {
	Description    string
	ExpiresAt      *time.Time
	IdempotencyKey string
}

// CreatedToken is the answer to CreateToken.
type CreatedToken struct {
	Result
	Token  TokenView
	Secret string // shown once
}

// CreateToken issues a personal API token.
func (s *Service) CreateToken(ctx context.Context, meta events.Metadata, userID uuid.UUID, in CreateToken) (CreatedToken, error) {
	scope := ""
	if in.IdempotencyKey != "" {
		scope = "api_token\x00" + userID.String() + "\x00" + in.IdempotencyKey
	}
	tokenID := s.secrets.id(scope, "token")
	secret, err := s.secrets.token(APIToken, scope)
	if err != nil {
		return CreatedToken{}, err
	}
	out := CreatedToken{Secret: secret}
	res, err := s.users.update(ctx, meta, userID, command[*User]{
		scope: scope,
		emits: []events.Type{events.TypeTokenCreated},
		decide: func(u *User, _ *batch) error {
			if t, ok := u.tokens[tokenID]; ok { // a retry with the same idempotency key
				if t.description != in.Description || !sameTime(t.expiresAt, in.ExpiresAt) {
					return ErrIdempotencyKeyReused
				}
				if t.revoked || (t.expiresAt != nil && !s.cfg.Now().Before(*t.expiresAt)) {
					return ErrIdempotencyKeySpent // never hand back a dead credential as new
				}
				return nil
			}
			return u.createToken(tokenID, in.Description, Digest(secret), s.cfg.Now(), in.ExpiresAt)
		},
		view: func(u *User) { out.Token = u.tokenView(tokenID) },
	})
	out.Result = res
	return out, err
}

func sameTime(a, b *time.Time) bool {
	if a == nil || b == nil {
		return a == b
	}
	return a.Equal(*b)
}
