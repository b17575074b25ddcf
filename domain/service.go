package domain

import (
	"context"
	"errors"
	"fmt"
	"hash/maphash"
	"sync"
	"time"

	"github.com/google/uuid"

	"github.com/identityd/identityd/events"
)

// Errors of Service. The event store port's (events.ErrVersionConflict, events.ErrUnavailable)
// are in package events.
var (
	// ErrConcurrentModification: the aggregate kept changing under the command until it gave up.
	ErrConcurrentModification = errors.New("concurrent modification")
	// ErrInvalidCredentials: unknown email or wrong password (deliberately indistinguishable).
	ErrInvalidCredentials = errors.New("invalid email or password")
	// ErrIdempotencyKeyReused: an idempotency key was sent again with a different request.
	ErrIdempotencyKeyReused = errors.New("idempotency key reused with a different request")
	// ErrIdempotencyKeySpent: a retry whose first answer's credential (session or API token) has
	// since expired, ended or been revoked. Replaying the answer would hand out a token that
	// cannot work, and starting another under the same key would turn one request into a
	// standing log-in capability, so the key is spent: the client sends a new one. It is an
	// ErrIdempotencyKeyReused (same answer, 409), with its own message.
	ErrIdempotencyKeySpent = fmt.Errorf("%w: the credential it created has expired, ended or been revoked", ErrIdempotencyKeyReused)
)

// EventStore is the port to the event stream.
type EventStore interface {
	// Load returns an aggregate's events stored after stream sequence `after`, in order: all of
	// them with after = 0, none for a new aggregate. A cached aggregate catches up with
	// after = its version, which costs one round trip when nothing changed.
	Load(ctx context.Context, agg events.Aggregate, after uint64) ([]events.Envelope, error)
	// Append stores the changes atomically, all or none, if every expectation holds, and
	// returns the stream sequence of the last one. A failed expectation is events.ErrVersionConflict.
	// Changes are numbered consecutively, so change i is at lastSeq-len(changes)+1+i. Each
	// change's Chain is set to its chain hash.
	Append(ctx context.Context, meta events.Metadata, expect []events.Expectation, changes []events.Change) (lastSeq uint64, err error)
	// Version returns the stream sequence of the aggregate's last event (0: none), read from
	// the authoritative copy: the check that a refusal was not decided on stale state.
	Version(ctx context.Context, agg events.Aggregate) (uint64, error)
}

// ServiceConfig tunes Service. Zero values take defaults.
type ServiceConfig struct {
	// Password sets the argon2id cost of new password hashes.
	Password PasswordParams
	// SessionTTL is how long a session token stays valid (default 30 days).
	SessionTTL time.Duration
	// IdempotencySecret derives ids and secrets from idempotency keys. Instances that serve the
	// same users must share it. At least 32 bytes.
	IdempotencySecret []byte
	// CacheSize bounds the number of user aggregates kept in memory (default 50,000).
	CacheSize int
	// MaxAttempts bounds the retries of a command after version conflicts (default 20).
	MaxAttempts int
	// Now is the clock (default time.Now).
	Now func() time.Time
}

func (c *ServiceConfig) fill() {
	if c.Password == (PasswordParams{}) {
		c.Password = DefaultPasswordParams
	}
	if c.SessionTTL <= 0 {
		c.SessionTTL = 30 * 24 * time.Hour
	}
	if c.CacheSize <= 0 {
		c.CacheSize = 50_000
	}
	if c.MaxAttempts <= 0 {
		c.MaxAttempts = 20
	}
	if c.Now == nil {
		// Microseconds: what PostgreSQL keeps, so a time reads back as it was written.
		c.Now = func() time.Time { return time.Now().UTC().Truncate(time.Microsecond) }
	}
}

// Validate reports a configuration that cannot work.
func (c ServiceConfig) Validate() error {
	if len(c.IdempotencySecret) < 32 {
		return errors.New("domain: IdempotencySecret must be at least 32 bytes")
	}
	if c.Password.MemoryKiB < 8 || c.Password.Time < 1 || c.Password.Threads < 1 {
		return errors.New("domain: argon2id parameters too weak")
	}
	return nil
}

// Service runs commands: it loads an aggregate (from a bounded cache or the stream), lets it
// decide, and appends the resulting events with an expectation on its version. Commands on one
// user are serialized within the process; across processes a version conflict reloads the
// aggregate and decides again.
type Service struct {
	store   EventStore
	cfg     ServiceConfig
	secrets secrets
	cache   *userCache
	locks   [1024]sync.Mutex
	seed    maphash.Seed
	dummyPW string // a hash verified for unknown emails, so timing does not reveal them
}

// NewService wires a Service to its event store.
func NewService(store EventStore, cfg ServiceConfig) (*Service, error) {
	cfg.fill()
	if err := cfg.Validate(); err != nil {
		return nil, err
	}
	dummy, err := hashPassword("not a real password", cfg.Password)
	if err != nil {
		return nil, err
	}
	return &Service{
		store: store, cfg: cfg, secrets: secrets{key: cfg.IdempotencySecret},
		cache: newUserCache(cfg.CacheSize), seed: maphash.MakeSeed(), dummyPW: dummy,
	}, nil
}

func (s *Service) lock(id uuid.UUID) func() {
	m := &s.locks[maphash.Bytes(s.seed, id[:])%uint64(len(s.locks))]
	m.Lock()
	return m.Unlock
}

// Result carries the stream sequence a command's events were stored at (0: nothing changed),
// so callers can wait until read models have caught up.
type Result struct {
	Seq uint64
}

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
		if u, err := s.loadUser(ctx, userID, true); err != nil {
			return SignedUp{}, err
		} else if u.exists && !u.active() {
			return SignedUp{}, ErrIdempotencyKeyReused
		}
	}
	for attempt := 1; ; attempt++ {
		claim, err := s.loadEmail(ctx, email)
		if err != nil {
			return SignedUp{}, err
		}
		if claim.claimed && claim.owner == userID && scope != "" {
			return s.replaySignUp(ctx, userID, sessionID, token, in)
		}
		if err := claim.claim(userID); err != nil {
			return SignedUp{}, err
		}
		hash, err := hashPassword(in.Password, s.cfg.Password)
		if err != nil {
			return SignedUp{}, err
		}
		now := s.cfg.Now()
		u, err := newUser(registration{id: userID, email: email, name: in.Name, passwordHash: hash, at: now})
		if err != nil {
			return SignedUp{}, err
		}
		u.startSession(sessionID, Digest(token), now, s.cfg.SessionTTL)
		changes := s.changes(scope, now, claim.changes, u.changes)
		seq, err := s.store.Append(ctx, meta, []events.Expectation{
			{Aggregate: claim.agg, Version: claim.version, Chain: claim.chain},
			{Aggregate: events.UserAggregate(userID), Version: 0},
		}, changes)
		if errors.Is(err, events.ErrVersionConflict) && attempt < s.cfg.MaxAttempts {
			continue // someone touched the address: decide again on fresh state
		}
		if errors.Is(err, events.ErrVersionConflict) {
			return SignedUp{}, ErrConcurrentModification
		}
		if err != nil {
			return SignedUp{}, err
		}
		u.committed(seq, changes)
		s.cache.put(u)
		return SignedUp{Result: Result{Seq: seq}, User: u.View(), Session: u.sessionView(sessionID), Token: token}, nil
	}
}

func (s *Service) replaySignUp(ctx context.Context, userID, sessionID uuid.UUID, token string, in SignUp) (SignedUp, error) {
	var out SignedUp
	err := s.read(ctx, userID, func(u *User) error {
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
		out = SignedUp{Result: Result{Seq: u.version}, User: u.View(), Session: u.sessionView(sessionID), Token: token}
		return nil
	})
	return out, err
}

// live reports whether a session's token still authenticates at now: not logged out and not
// expired (expiry as the read model checks it, projections.Credential.Expired).
func (ss *session) live(now time.Time) bool { return !ss.ended && now.Before(ss.expiresAt) }

func mustName(n string) string {
	v, _ := normalizeName(n)
	return v
}

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
	res, err := s.update(ctx, meta, scope, userID, func(u *User) error {
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
	}, func(u *User) { out.Session = u.sessionView(sessionID) })
	if errors.Is(err, ErrUserNotFound) {
		return LoggedIn{}, ErrInvalidCredentials
	}
	out.Result = res
	return out, err
}

// EndSession logs a session out.
func (s *Service) EndSession(ctx context.Context, meta events.Metadata, userID, sessionID uuid.UUID) (Result, error) {
	return s.update(ctx, meta, "", userID, func(u *User) error { return u.endSession(sessionID) }, nil)
}

// Rename changes the user's display name.
func (s *Service) Rename(ctx context.Context, meta events.Metadata, userID uuid.UUID, name string) (UserView, Result, error) {
	var view UserView
	res, err := s.update(ctx, meta, "", userID, func(u *User) error { return u.rename(name) },
		func(u *User) { view = u.View() })
	return view, res, err
}

// ChangePassword verifies the current password and sets a new one.
func (s *Service) ChangePassword(ctx context.Context, meta events.Metadata, userID uuid.UUID, current, next string) (Result, error) {
	if err := checkPassword(next); err != nil {
		return Result{}, err
	}
	hash, err := hashPassword(next, s.cfg.Password)
	if err != nil {
		return Result{}, err
	}
	return s.update(ctx, meta, "", userID, func(u *User) error {
		if ok, _ := verifyPassword(u.pwHash, current); !ok {
			return ErrInvalidCredentials
		}
		u.setPassword(hash)
		return nil
	}, nil)
}

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
	res, err := s.update(ctx, meta, scope, userID, func(u *User) error {
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
	}, func(u *User) { out.Token = u.tokenView(tokenID) })
	out.Result = res
	return out, err
}

func sameTime(a, b *time.Time) bool {
	if a == nil || b == nil {
		return a == b
	}
	return a.Equal(*b)
}

// RevokeToken revokes one of the user's API tokens.
func (s *Service) RevokeToken(ctx context.Context, meta events.Metadata, userID, tokenID uuid.UUID) (Result, error) {
	return s.update(ctx, meta, "", userID, func(u *User) error { return u.revokeToken(tokenID) }, nil)
}

// GrantAdmin makes a user an administrator. Granting an administrator changes nothing (Seq is
// then the user's current version, to wait for like any other answer). The caller decides who
// may grant: the HTTP API lets administrators do it, identityd's start-up bootstrap does it
// once (actor "system").
func (s *Service) GrantAdmin(ctx context.Context, meta events.Metadata, userID uuid.UUID) (Result, error) {
	return s.update(ctx, meta, "", userID, func(u *User) error { u.grantAdmin(); return nil }, nil)
}

// RevokeAdmin takes a user's administrator rights away; by, the administrator asking, cannot
// revoke their own (ErrSelfRevocation). Revoking from a user without them changes nothing.
func (s *Service) RevokeAdmin(ctx context.Context, meta events.Metadata, by, userID uuid.UUID) (Result, error) {
	if by == userID {
		return Result{}, ErrSelfRevocation
	}
	return s.update(ctx, meta, "", userID, func(u *User) error { u.revokeAdmin(); return nil }, nil)
}

// User returns a user's current state, read from the stream (not the read model).
func (s *Service) User(ctx context.Context, userID uuid.UUID) (UserView, error) {
	var v UserView
	err := s.read(ctx, userID, func(u *User) error { v = u.View(); return nil })
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

// DeleteUser deletes the account and releases its email, atomically.
func (s *Service) DeleteUser(ctx context.Context, meta events.Metadata, userID uuid.UUID) (Result, error) {
	unlock := s.lock(userID)
	defer unlock()
	for attempt := 1; ; attempt++ {
		u, err := s.loadUser(ctx, userID, attempt > 1)
		if err != nil {
			return Result{}, err
		}
		if !u.active() {
			return Result{}, ErrUserNotFound
		}
		claim, err := s.loadEmail(ctx, u.email)
		if err != nil {
			return Result{}, err
		}
		u.remove()
		claim.release(userID)
		now := s.cfg.Now()
		seq, err := s.store.Append(ctx, meta, []events.Expectation{
			{Aggregate: events.UserAggregate(userID), Version: u.version, Chain: u.chain},
			{Aggregate: claim.agg, Version: claim.version, Chain: claim.chain},
		}, s.changes("", now, u.changes, claim.changes))
		s.cache.drop(userID)
		if errors.Is(err, events.ErrVersionConflict) && attempt < s.cfg.MaxAttempts {
			continue
		}
		if errors.Is(err, events.ErrVersionConflict) {
			return Result{}, ErrConcurrentModification
		}
		if err != nil {
			return Result{}, err
		}
		return Result{Seq: seq}, nil
	}
}

// update runs decide on the user's current state and appends what it raised. view, if set,
// reads the state after a successful decision (also when nothing changed).
func (s *Service) update(ctx context.Context, meta events.Metadata, scope string, id uuid.UUID,
	decide func(*User) error, view func(*User)) (Result, error) {
	unlock := s.lock(id)
	defer unlock()
	for attempt := 1; ; attempt++ {
		// The first attempt decides on the cached state without asking the stream: if that
		// state is stale, the append's expectation fails and the next attempt reloads. Only an
		// answer that appends nothing (a refusal, or a no-op) must first be checked against
		// the stream, because no expectation will catch a stale decision then.
		u, cached, err := s.userForDecision(ctx, id, attempt > 1)
		if err != nil {
			return Result{}, err
		}
		if !u.active() {
			if cached && s.stale(ctx, u) {
				continue
			}
			return Result{}, ErrUserNotFound
		}
		if err := decide(u); err != nil {
			s.cache.drop(id) // decide may have raised events before failing
			if cached && s.stale(ctx, u) {
				continue
			}
			return Result{}, err
		}
		if len(u.changes) == 0 { // nothing changed; still wait for what is already stored
			if cached && s.stale(ctx, u) {
				s.cache.drop(id)
				continue
			}
			if view != nil {
				view(u)
			}
			return Result{Seq: u.version}, nil
		}
		changes := s.changes(scope, s.cfg.Now(), u.changes)
		seq, err := s.store.Append(ctx, meta, []events.Expectation{{Aggregate: events.UserAggregate(id), Version: u.version, Chain: u.chain}}, changes)
		if err != nil {
			s.cache.drop(id)
			if errors.Is(err, events.ErrVersionConflict) {
				if attempt < s.cfg.MaxAttempts {
					continue
				}
				return Result{}, ErrConcurrentModification
			}
			return Result{}, err
		}
		u.committed(seq, changes)
		s.cache.put(u)
		if view != nil {
			view(u)
		}
		return Result{Seq: seq}, nil
	}
}

// userForDecision returns the cached aggregate as is (cached = true), or a freshly loaded one.
func (s *Service) userForDecision(ctx context.Context, id uuid.UUID, fresh bool) (*User, bool, error) {
	if !fresh {
		if u := s.cache.get(id); u != nil {
			return u, true, nil
		}
	}
	u, err := s.loadUser(ctx, id, true)
	return u, false, err
}

// stale reports whether the stream holds events of u that were stored after u.version (by
// another instance). An unreadable stream counts as stale, so the caller retries and surfaces
// the error from a fresh load.
func (s *Service) stale(ctx context.Context, u *User) bool {
	v, err := s.store.Version(ctx, events.UserAggregate(u.id))
	return err != nil || v != u.version
}

// read runs f on the user's current state under the user's lock.
func (s *Service) read(ctx context.Context, id uuid.UUID, f func(*User) error) error {
	unlock := s.lock(id)
	defer unlock()
	u, err := s.loadUser(ctx, id, false)
	if err != nil {
		return err
	}
	if !u.active() {
		return ErrUserNotFound
	}
	return f(u)
}

// loadUser returns the user's current state: a cached aggregate caught up with the events
// stored since it was cached (by this or another instance), or a fresh fold of its history.
// Decisions are thus never taken on stale state; a write racing in between is caught by the
// append's expectation.
func (s *Service) loadUser(ctx context.Context, id uuid.UUID, fresh bool) (*User, error) {
	if !fresh {
		if u := s.cache.get(id); u != nil {
			newer, err := s.store.Load(ctx, events.UserAggregate(id), u.version)
			if err != nil {
				s.cache.drop(id)
				return nil, fmt.Errorf("load user %s: %w", id, err)
			}
			for _, e := range newer {
				u.follow(e)
			}
			return u, nil
		}
	}
	history, err := s.store.Load(ctx, events.UserAggregate(id), 0)
	if err != nil {
		return nil, fmt.Errorf("load user %s: %w", id, err)
	}
	u := loadUser(id, history)
	if u.exists {
		s.cache.put(u)
	}
	return u, nil
}

func (s *Service) loadEmail(ctx context.Context, normalized string) (*EmailClaim, error) {
	history, err := s.store.Load(ctx, events.EmailAggregate(normalized), 0)
	if err != nil {
		return nil, fmt.Errorf("load email claim: %w", err)
	}
	return loadEmailClaim(normalized, history), nil
}

// changes stamps raised events with ids (derived from the idempotency scope when there is one,
// so a retried command carries the same Nats-Msg-Id) and a time.
func (s *Service) changes(scope string, at time.Time, groups ...[]events.Event) []events.Change {
	var out []events.Change
	for _, g := range groups {
		for _, e := range g {
			id := s.secrets.id(scope, fmt.Sprintf("event\x00%d", len(out)))
			out = append(out, events.Change{ID: id, At: at, Event: e})
		}
	}
	return out
}

// userCache keeps recently used aggregates so a command need not replay the stream. It is
// bounded: when full, an arbitrary entry is evicted (Go map iteration order is random).
type userCache struct {
	mu  sync.Mutex
	max int
	m   map[uuid.UUID]*User
}

func newUserCache(capacity int) *userCache {
	return &userCache{max: capacity, m: make(map[uuid.UUID]*User)}
}

func (c *userCache) get(id uuid.UUID) *User {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.m[id]
}

func (c *userCache) put(u *User) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if _, ok := c.m[u.id]; !ok && len(c.m) >= c.max {
		for k := range c.m {
			delete(c.m, k)
			break
		}
	}
	c.m[u.id] = u
}

func (c *userCache) drop(id uuid.UUID) {
	c.mu.Lock()
	defer c.mu.Unlock()
	delete(c.m, id)
}
