package projections

import (
	"context"
	"errors"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/google/uuid"
	"github.com/uptrace/bun"

	"github.com/identityd/identityd/events"
)

// cacheProjection is the projector as the cache sees it: batches go to the observers, then to
// the database, then the position moves.
type cacheProjection struct {
	t   *testing.T
	db  *bun.DB
	mu  sync.Mutex
	pos uint64
	fns []func([]events.Envelope)
}

func (p *cacheProjection) OnBatch(f func([]events.Envelope)) { p.fns = append(p.fns, f) }

func (p *cacheProjection) Position() uint64 {
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.pos
}

func (p *cacheProjection) WaitFor(ctx context.Context, seq uint64) error {
	for {
		p.mu.Lock()
		pos := p.pos
		p.mu.Unlock()
		if pos >= seq {
			return nil
		}
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-time.After(time.Millisecond):
		}
	}
}

// deliver applies evs as the next batch and returns its last sequence.
func (p *cacheProjection) deliver(evs ...events.Event) uint64 {
	p.t.Helper()
	p.mu.Lock()
	first := p.pos + 1
	p.mu.Unlock()
	batch := envelopes(first, evs...)
	for _, f := range p.fns {
		f(batch)
	}
	pos, err := applyBatch(context.Background(), p.db, CurrentTables, batch)
	if err != nil {
		p.t.Fatal(err)
	}
	p.mu.Lock()
	p.pos = pos
	p.mu.Unlock()
	return pos
}

type cacheWorld struct {
	proj   *cacheProjection
	cache  *CredentialCache
	head   atomic.Uint64 // what the stream leader says
	dbDown atomic.Bool   // the health check fails
	user   uuid.UUID
	tok    events.TokenCreated
}

func newCacheWorld(t *testing.T, b testBackend, lease time.Duration) *cacheWorld {
	db, _ := newSchemaDB(t, b, CurrentTables)
	w := &cacheWorld{proj: &cacheProjection{t: t, db: db}, user: uuid.New()}
	var err error
	w.cache, err = NewCredentialCache(CacheConfig{
		ReadModel:  NewReadModel(db, CurrentTables),
		Head:       func(context.Context) (uint64, error) { return w.head.Load(), nil },
		Projection: w.proj, Lease: lease, MaxEntries: 3,
		Ping: func(ctx context.Context) error {
			if w.dbDown.Load() {
				return errors.New("database down")
			}
			return db.PingContext(ctx)
		},
	})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(w.cache.Close)
	for w.cache.dbOK.Load() == 0 { // the first health check
		time.Sleep(time.Millisecond)
	}
	w.tok = tokenCreated(w.user, uuid.New(), t0, nil)
	w.head.Store(w.proj.deliver(registered(w.user, "Ada"), w.tok))
	return w
}

func (w *cacheWorld) lookup(t *testing.T) (Credential, error) {
	t.Helper()
	return w.cache.APITokenByDigest(context.Background(), w.tok.Digest)
}

func TestCredentialCache(t *testing.T) {
	for _, b := range testBackends {
		t.Run(b.name, func(t *testing.T) {
			t.Parallel()

			t.Run("a second lookup is answered from memory", func(t *testing.T) {
				w := newCacheWorld(t, b, time.Minute)
				for range 3 {
					if c, err := w.lookup(t); err != nil || c.User.Name != "Ada" {
						t.Fatalf("lookup = %+v, %v", c, err)
					}
				}
				if s := w.cache.Stats(); s.Misses != 1 || s.Hits != 2 || s.Entries != 1 {
					t.Fatalf("stats %+v, want 1 miss then 2 hits", s)
				}
			})

			t.Run("an event of the user drops its entries: rename seen, revocation refused", func(t *testing.T) {
				w := newCacheWorld(t, b, time.Minute)
				if _, err := w.lookup(t); err != nil {
					t.Fatal(err)
				}
				w.head.Store(w.proj.deliver(events.UserRenamed{Versioned: events.V(), UserID: w.user, Name: "Grace"}))
				if c, err := w.lookup(t); err != nil || c.User.Name != "Grace" {
					t.Fatalf("after a rename: %+v, %v", c, err)
				}
				w.head.Store(w.proj.deliver(events.TokenRevoked{Versioned: events.V(), UserID: w.user, TokenID: w.tok.TokenID}))
				if _, err := w.lookup(t); !errors.Is(err, ErrNotFound) {
					t.Fatalf("revoked token: %v, want ErrNotFound", err)
				}
			})

			t.Run("without a lease (read model behind the leader) lookups go to the database", func(t *testing.T) {
				w := newCacheWorld(t, b, 5*time.Millisecond)
				if _, err := w.lookup(t); err != nil {
					t.Fatal(err)
				}
				time.Sleep(10 * time.Millisecond) // the first lease ran out
				w.head.Add(1)                     // an event this instance has not seen yet
				if _, err := w.lookup(t); err != nil {
					t.Fatal(err)
				}
				if s := w.cache.Stats(); s.Hits != 0 || s.Lapsed != 1 {
					t.Fatalf("stats %+v, want the cached entry not used (1 lapsed)", s)
				}
			})

			t.Run("a read model moved by another instance is not enough: the batch must be seen", func(t *testing.T) {
				w := newCacheWorld(t, b, 5*time.Millisecond)
				if _, err := w.lookup(t); err != nil {
					t.Fatal(err)
				}
				time.Sleep(10 * time.Millisecond) // the first lease ran out
				// Another instance applied a revocation: the leader and this read model's
				// position have it, this instance's projector has not handed it over yet.
				w.proj.mu.Lock()
				w.proj.pos++
				w.proj.mu.Unlock()
				w.head.Add(1)
				if _, err := w.lookup(t); err != nil {
					t.Fatal(err)
				}
				if s := w.cache.Stats(); s.Hits != 0 || s.Lapsed != 1 {
					t.Fatalf("stats %+v, want the cached entry not used (1 lapsed)", s)
				}
			})

			t.Run("with the database down no lease is taken: lookups fail as the database does", func(t *testing.T) {
				w := newCacheWorld(t, b, 5*time.Millisecond)
				if _, err := w.lookup(t); err != nil {
					t.Fatal(err)
				}
				w.dbDown.Store(true)
				time.Sleep(dbFresh + 2*pingEvery)
				if _, err := w.lookup(t); err != nil {
					t.Fatal(err) // the database itself still answers in this test
				}
				if s := w.cache.Stats(); s.Hits != 0 || s.Lapsed != 1 {
					t.Fatalf("stats %+v, want the cached entry not used (1 lapsed)", s)
				}
				w.dbDown.Store(false)
				time.Sleep(2 * pingEvery)
				if _, err := w.lookup(t); err != nil {
					t.Fatal(err)
				}
				if s := w.cache.Stats(); s.Hits != 1 {
					t.Fatalf("stats %+v, want a hit once the database is back", s)
				}
			})

			t.Run("a database answer older than a seen event is not kept", func(t *testing.T) {
				w := newCacheWorld(t, b, time.Minute)
				cred, err := w.lookup(t) // cached at the registration's version
				if err != nil {
					t.Fatal(err)
				}
				// The projector sees a rename while a slow lookup still holds the old row.
				w.head.Store(w.proj.deliver(events.UserRenamed{Versioned: events.V(), UserID: w.user, Name: "Grace"}))
				w.cache.store(cacheKey{digest: w.tok.Digest}, cred)
				if c, err := w.lookup(t); err != nil || c.User.Name != "Grace" {
					t.Fatalf("stale row kept: %+v, %v", c, err)
				}
			})

			t.Run("bounded", func(t *testing.T) {
				w := newCacheWorld(t, b, time.Minute)
				for range 5 {
					tok := tokenCreated(w.user, uuid.New(), t0, nil)
					w.head.Store(w.proj.deliver(tok))
					if _, err := w.cache.APITokenByDigest(context.Background(), tok.Digest); err != nil {
						t.Fatal(err)
					}
				}
				if s := w.cache.Stats(); s.Entries > 3 {
					t.Fatalf("%d entries, want at most 3", s.Entries)
				}
			})
		})
	}
}

func TestCredentialCacheFenceWaitsOutTheLease(t *testing.T) {
	w := newCacheWorld(t, testBackends[1], 40*time.Millisecond)
	acked := time.Now()
	if err := w.cache.Fence(context.Background(), acked); err != nil {
		t.Fatal(err)
	}
	if d := time.Since(acked); d < 40*time.Millisecond {
		t.Fatalf("fence returned after %s, want at least the 40ms lease", d)
	}
	// A write acknowledged long ago need not wait.
	start := time.Now()
	if err := w.cache.Fence(context.Background(), start.Add(-time.Second)); err != nil || time.Since(start) > 10*time.Millisecond {
		t.Fatalf("fence for an old write waited %s (%v)", time.Since(start), err)
	}
}
