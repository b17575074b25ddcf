package domain

import (
	"context"
	"errors"
	"fmt"
	"hash/maphash"

	"time"

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

// Service is the domain's application service: one method per command, each in its own file
// (sign_up.go, log_in.go, rename.go, ...), each run by the command runner (runner.go) on the
// User aggregate, with the EmailClaim of an address joining the append where a command
// touches both.
type Service struct {
	store   EventStore
	cfg     ServiceConfig
	secrets secrets
	users   *runner[*User]
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
	s := &Service{store: store, cfg: cfg, secrets: secrets{key: cfg.IdempotencySecret}, dummyPW: dummy}
	s.users = &runner[*User]{
		kind: "user", store: store, blank: emptyUser, notFound: ErrUserNotFound,
		maxAttempts: cfg.MaxAttempts, now: cfg.Now, stamp: s.changes,
		cache: newAggregateCache[*User](cfg.CacheSize), seed: maphash.MakeSeed(),
	}
	return s, nil
}

// Result carries the stream sequence a command's events were stored at (0: nothing changed),
// so callers can wait until read models have caught up, and the command's effect on
// credentials, which says how long they must wait (events.Effect): the strongest effect of the
// events it emitted, or, when it emitted none (a no-op, a replayed answer), of the events it
// exists to emit, so that a retry waits as long as the first answer did.
type Result struct {
	Seq    uint64
	Effect events.Effect
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
