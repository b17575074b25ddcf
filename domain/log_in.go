package domain

import (
	"context"
	"errors"
	"time"

	"github.com/google/uuid"

	"github.com/identityd/identityd/events"
)

// LogIn is the input of Service.LogIn.
type LogIn struct {
	Email, Password string
	IdempotencyKey  string
}

// LoggedIn is the answer to a log-in.
type LoggedIn struct {
	Result
	UserID  uuid.UUID
	Session SessionView
	Token   string // the session secret, shown once
}

// LogIn checks a password and starts a session.
func (s *Service) LogIn(ctx context.Context, meta events.Metadata, in LogIn) (LoggedIn, error) {
	email, err := NormalizeEmail(in.Email)
	if err != nil {
		_, _ = verifyPassword(s.dummyPW, in.Password)
		return LoggedIn{}, ErrInvalidCredentials
	}
	claim, err := s.loadEmail(ctx, email)
	if err != nil {
		return LoggedIn{}, err
	}
	if !claim.claimed {
		_, _ = verifyPassword(s.dummyPW, in.Password)
		return LoggedIn{}, ErrInvalidCredentials
	}
	userID := claim.owner
	scope := ""
	if in.IdempotencyKey != "" {
		scope = "login\x00" + userID.String() + "\x00" + in.IdempotencyKey
	}
	sessionID := s.secrets.id(scope, "session")
	token, err := s.secrets.token(SessionToken, scope)
	if err != nil {
		return LoggedIn{}, err
	}
	var out LoggedIn
	res, err := s.users.update(ctx, meta, userID, command[*User]{
		scope: scope,
		emits: []events.Type{events.TypeSessionStarted},
		decide: func(u *User, _ *batch) error {
			ok, err := verifyPassword(u.pwHash, in.Password)
			if err != nil || !ok {
				return ErrInvalidCredentials
			}
			if ss, done := u.sessions[sessionID]; !done {
				u.startSession(sessionID, Digest(token), s.cfg.Now(), s.cfg.SessionTTL)
			} else if !ss.live(s.cfg.Now()) {
				return ErrIdempotencyKeySpent // that session was logged out or has expired
			}
			out = LoggedIn{UserID: userID, Token: token}
			return nil
		},
		view: func(u *User) { out.Session = u.sessionView(sessionID) },
	})
	if errors.Is(err, ErrUserNotFound) {
		return LoggedIn{}, ErrInvalidCredentials
	}
	out.Result = res
	return out, err
}

// live reports whether a session's token still authenticates at now: not logged out and not
// expired (expiry as the read model checks it, projections.Credential.Expired).
func (ss *session) live(now time.Time) bool { return !ss.ended && now.Before(ss.expiresAt) }
