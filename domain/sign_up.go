package domain

import (
	"context"
	"errors"

	"github.com/google/uuid"

	"github.com/identityd/identityd/events"
)

// SignUp is the input of Service.SignUp.
type SignUp struct {
	Email, Name, Password string
	// IdempotencyKey, when set, makes a retried sign-up return the first answer.
	IdempotencyKey string
}

// SignedUp is the answer to a sign-up: the new user and a first session.
type SignedUp struct {
	Result
	User    UserView
	Session SessionView
	Token   string // the session secret, shown once
}

// signUpEmits are the events of a sign-up: the address claimed, the account opened, its first
// session started.
var signUpEmits = []events.Type{events.TypeEmailClaimed, events.TypeUserRegistered, events.TypePasswordSet, events.TypeSessionStarted}

// errReplaySignUp: the address is already claimed by the user a keyed retry would create, so
// the first answer is replayed instead.
var errReplaySignUp = errors.New("sign-up: replay the first answer")

// SignUp registers an account, claims its email, and starts a session, all in one atomic
// append.
func (s *Service) SignUp(ctx context.Context, meta events.Metadata, in SignUp) (SignedUp, error) {
	email, err := NormalizeEmail(in.Email)
	if err != nil {
		return SignedUp{}, err
	}
	if _, err := normalizeName(in.Name); err != nil {
		return SignedUp{}, err
	}
	if err := checkPassword(in.Password); err != nil {
		return SignedUp{}, err
	}
	scope := ""
	if in.IdempotencyKey != "" {
		scope = "signup\x00" + email + "\x00" + in.IdempotencyKey
	}
	userID := s.secrets.id(scope, "user")
	sessionID := s.secrets.id(scope, "session")
	token, err := s.secrets.token(SessionToken, scope)
	if err != nil {
		return SignedUp{}, err
	}
	if scope != "" {
		// The key was used before for an account that no longer holds the address (deleted).
		if u, err := s.users.load(ctx, userID, true); err != nil {
			return SignedUp{}, err
		} else if u.exists && !u.active() {
			return SignedUp{}, ErrIdempotencyKeyReused
		}
	}
	out := SignedUp{Token: token}
	res, err := s.users.create(ctx, meta, userID, command[*User]{
		scope: scope,
		emits: signUpEmits,
		decide: func(u *User, b *batch) error {
			claim, err := s.loadEmail(ctx, email)
			if err != nil {
				return err
			}
			if claim.claimed && claim.owner == userID && scope != "" {
				return errReplaySignUp
			}
			if err := claim.claim(userID); err != nil {
				return err
			}
			b.first(claim)
			hash, err := hashPassword(in.Password, s.cfg.Password)
			if err != nil {
				return err
			}
			now := s.cfg.Now()
			b.recordAt(now)
			if err := u.register(registration{id: userID, email: email, name: in.Name, passwordHash: hash, at: now}); err != nil {
				return err
			}
			u.startSession(sessionID, Digest(token), now, s.cfg.SessionTTL)
			return nil
		},
		view: func(u *User) { out.User, out.Session = u.View(), u.sessionView(sessionID) },
	})
	if errors.Is(err, errReplaySignUp) {
		return s.replaySignUp(ctx, userID, sessionID, token, in)
	}
	if err != nil {
		return SignedUp{}, err
	}
	out.Result = res
	return out, nil
}

func (s *Service) replaySignUp(ctx context.Context, userID, sessionID uuid.UUID, token string, in SignUp) (SignedUp, error) {
	var out SignedUp
	err := s.users.read(ctx, userID, func(u *User) error {
		ss, ok := u.sessions[sessionID]
		if !ok || u.name != mustName(in.Name) {
			return ErrIdempotencyKeyReused
		}
		if ok, _ := verifyPassword(u.pwHash, in.Password); !ok {
			return ErrIdempotencyKeyReused
		}
		if !ss.live(s.cfg.Now()) {
			return ErrIdempotencyKeySpent // that first session was logged out or has expired
		}
		out = SignedUp{Result: Result{Seq: u.version, Effect: effectOf(signUpEmits, nil)}, User: u.View(), Session: u.sessionView(sessionID), Token: token}
		return nil
	})
	return out, err
}

func mustName(n string) string {
	v, _ := normalizeName(n)
	return v
}
