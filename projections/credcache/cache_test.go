package credcache

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
	"github.com/identityd/identityd/events/eventstore"
	"github.com/identityd/identityd/projections"
	"github.com/identityd/identityd/projections/dbtest"
	"github.com/identityd/identityd/projections/projectiontest"
)

// cacheProjection is the projector as the cache sees it: events arrive (the observers hear of
// them), then a batch goes to the database, then the position moves.
type cacheProjection struct {
	t       *testing.T
	db      *bun.DB
	mu      sync.Mutex
	pos     uint64 // the read model's position
	arrived uint64 // the last sequence that arrived
	fns     []func(eventstore.Arrival)
}

func (p *cacheProjection) OnArrival(f func(eventstore.Arrival)) { p.fns = append(p.fns, f) }

func (p *cacheProjection) Position() uint64 {
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.pos
}

// arrive tells the observers of evs, the next events of the stream, without applying them.
func (p *cacheProjection) arrive(evs ...events.Event) []events.Envelope {
	p.mu.Lock()
	first := max(p.pos, p.arrived) + 1
	p.arrived = first + uint64(len(evs)) - 1
	p.mu.Unlock()
	batch := projectiontest.Envelopes(first, evs...)
	for _, e := range batch {
		for _, f := range p.fns {
			f(eventstore.Arrival{Seq: e.Sequence, Subject: e.NATSSubj})
		}
	}
	return batch
}

// apply writes a batch that arrived to the read model and moves the position.
func (p *cacheProjection) apply(batch []events.Envelope) uint64 {
	p.t.Helper()
	pos, err := projections.ApplyBatch(context.Background(), p.db, projections.CurrentTables, batch)
	if err != nil {
		p.t.Fatal(err)
	}
	p.mu.Lock()
	p.pos = pos
	p.mu.Unlock()
	return pos
}

// deliver makes evs arrive and applies them; it returns the last sequence.
func (p *cacheProjection) deliver(evs ...events.Event) uint64 {
	p.t.Helper()
	return p.apply(p.arrive(evs...))
}

type cacheWorld struct {
	proj   *cacheProjection
	cache  *Cache
	head   atomic.Uint64 // what the stream leader says
	dbDown atomic.Bool   // the health check fails
	user   uuid.UUID
	tok    events.TokenCreated
}

func newCacheWorld(t *testing.T, b dbtest.Backend, lease time.Duration) *cacheWorld {
	db := newSchemaDB(t, b)
	w := &cacheWorld{proj: &cacheProjection{t: t, db: db}, user: uuid.New()}
	var err error
	w.cache, err = New(Config{
		ReadModel:  projections.NewReadModel(db, projections.CurrentTables),
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
	w.tok = projectiontest.TokenCreated(w.user, uuid.New(), projectiontest.T0, nil)
	w.head.Store(w.proj.deliver(projectiontest.Registered(w.user, "Ada"), w.tok))
	return w
}

func (w *cacheWorld) lookup(t *testing.T) (projections.Credential, error) {
	t.Helper()
	return w.cache.APITokenByDigest(context.Background(), w.tok.Digest)
}

func TestCredentialCache(t *testing.T) {
	for _, b := range dbtest.Backends {
		t.Run(b.Name, func(t *testing.T) {
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

			t.Run("a revocation drops the user's entries: refused at once", func(t *testing.T) {
				w := newCacheWorld(t, b, time.Minute)
				if _, err := w.lookup(t); err != nil {
					t.Fatal(err)
				}
				w.head.Store(w.proj.deliver(events.TokenRevoked{Versioned: events.V(), UserID: w.user, TokenID: w.tok.TokenID}))
				if _, err := w.lookup(t); !errors.Is(err, projections.ErrNotFound) {
					t.Fatalf("revoked token: %v, want ErrNotFound", err)
				}
			})

			t.Run("a rename keeps the credentials and marks their profile stale until it is read again", func(t *testing.T) {
				w := newCacheWorld(t, b, time.Minute)
				if _, err := w.lookup(t); err != nil {
					t.Fatal(err)
				}
				w.head.Store(w.proj.deliver(events.UserRenamed{Versioned: events.V(), UserID: w.user, Name: "Grace"}))
				c, err := w.lookup(t)
				if err != nil || !c.ProfileStale {
					t.Fatalf("after a rename: %+v, %v; want the credential with its profile marked stale", c, err)
				}
				if s := w.cache.Stats(); s.Hits != 1 || s.Misses != 1 {
					t.Fatalf("stats %+v, want the rename not to cost a database lookup", s)
				}
				u, err := w.cache.User(context.Background(), w.user)
				if err != nil || u.Name != "Grace" {
					t.Fatalf("User = %+v, %v; want the new name", u, err)
				}
				if c, err := w.lookup(t); err != nil || c.ProfileStale || c.User.Name != "Grace" {
					t.Fatalf("after reading the profile: %+v, %v; want the entry refreshed", c, err)
				}
			})

			t.Run("a profile read older than a cached entry does not overwrite it", func(t *testing.T) {
				w := newCacheWorld(t, b, time.Minute)
				if _, err := w.lookup(t); err != nil {
					t.Fatal(err)
				}
				// The entry holds a newer row than the database will answer with (it came from
				// a read that saw a later rename, and its arrival has long been forgotten).
				w.cache.mu.Lock()
				k := cacheKey{digest: w.tok.Digest}
				e := w.cache.entries[k]
				e.User.Name, e.User.Version, e.ProfileStale = "Newer", e.User.Version+10, true
				w.cache.entries[k] = e
				delete(w.cache.seen, w.user)
				w.cache.mu.Unlock()
				if _, err := w.cache.User(context.Background(), w.user); err != nil {
					t.Fatal(err)
				}
				if c, err := w.lookup(t); err != nil || c.User.Name != "Newer" || !c.ProfileStale {
					t.Fatalf("%+v, %v; want the newer entry left as it was", c, err)
				}
			})

			t.Run("a profile read from before the rename is applied does not refresh the entries", func(t *testing.T) {
				w := newCacheWorld(t, b, time.Minute)
				if _, err := w.lookup(t); err != nil {
					t.Fatal(err)
				}
				batch := w.proj.arrive(events.UserRenamed{Versioned: events.V(), UserID: w.user, Name: "Grace"})
				w.head.Store(batch[0].Sequence)
				if u, err := w.cache.User(context.Background(), w.user); err != nil || u.Name != "Ada" {
					t.Fatalf("User before the rename is applied = %+v, %v; want the database's answer", u, err)
				}
				if c, err := w.lookup(t); err != nil || !c.ProfileStale {
					t.Fatalf("%+v, %v; want the profile still marked stale", c, err)
				}
				w.proj.apply(batch)
				if u, err := w.cache.User(context.Background(), w.user); err != nil || u.Name != "Grace" {
					t.Fatalf("User = %+v, %v", u, err)
				}
				if c, err := w.lookup(t); err != nil || c.ProfileStale || c.User.Name != "Grace" {
					t.Fatalf("%+v, %v; want the entry refreshed", c, err)
				}
			})

			t.Run("without a lease (an event not arrived yet) lookups go to the database", func(t *testing.T) {
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
				w.cache.store(cacheKey{digest: w.tok.Digest}, cred, w.cache.resets.Load())
				if c, err := w.lookup(t); err != nil || (c.User.Name == "Ada" && !c.ProfileStale) {
					t.Fatalf("stale row kept as current: %+v, %v", c, err)
				}
			})

			t.Run("the lease needs events to arrive, not the read model to apply them", func(t *testing.T) {
				w := newCacheWorld(t, b, 5*time.Millisecond)
				if _, err := w.lookup(t); err != nil {
					t.Fatal(err)
				}
				time.Sleep(10 * time.Millisecond) // the first lease ran out
				// Another user's event arrived; the projector has not applied it yet.
				batch := w.proj.arrive(projectiontest.Registered(uuid.New(), "Other"))
				w.head.Store(batch[0].Sequence)
				if _, err := w.lookup(t); err != nil {
					t.Fatal(err)
				}
				if s := w.cache.Stats(); s.Hits != 1 || s.Lapsed != 0 {
					t.Fatalf("stats %+v, want a hit while the projector is busy", s)
				}
			})

			t.Run("a revocation that arrived drops the entry, and an older database answer is not kept", func(t *testing.T) {
				w := newCacheWorld(t, b, time.Minute)
				if _, err := w.lookup(t); err != nil {
					t.Fatal(err)
				}
				batch := w.proj.arrive(events.TokenRevoked{Versioned: events.V(), UserID: w.user, TokenID: w.tok.TokenID})
				w.head.Store(batch[0].Sequence)
				// The database still has the token: the lookup goes there and gets it — as any
				// read racing with the revocation may — but must not keep it.
				if _, err := w.lookup(t); err != nil {
					t.Fatalf("database answer before the revocation is applied: %v", err)
				}
				if s := w.cache.Stats(); s.Hits != 0 || s.Entries != 0 {
					t.Fatalf("stats %+v, want no hit and nothing kept", s)
				}
				w.proj.apply(batch)
				if _, err := w.lookup(t); !errors.Is(err, projections.ErrNotFound) {
					t.Fatalf("revoked token: %v, want ErrNotFound", err)
				}
			})

			t.Run("an arrived event is remembered until applied, however long the projector lags", func(t *testing.T) {
				w := newCacheWorld(t, b, time.Minute)
				batch := w.proj.arrive(events.UserRenamed{Versioned: events.V(), UserID: w.user, Name: "Grace"})
				w.head.Store(batch[0].Sequence)
				prune := func() {
					w.cache.mu.Lock()
					w.cache.pruneAt = time.Time{}
					w.cache.mu.Unlock()
					w.proj.arrive(projectiontest.Registered(uuid.New(), "Other")) // an arrival runs the pruning
				}
				// Pruning runs while the rename is not in the read model yet.
				prune()
				stale, err := w.lookup(t)
				if err != nil || stale.User.Name != "Ada" {
					t.Fatalf("lookup before the rename is applied: %+v, %v", stale, err)
				}
				w.proj.apply(batch)
				// Pruning right after the apply must not forget the rename either: a database
				// read begun before the apply may still be on its way.
				prune()
				w.cache.store(cacheKey{digest: w.tok.Digest}, stale, w.cache.resets.Load())
				if c, err := w.lookup(t); err != nil || c.User.Name != "Grace" {
					t.Fatalf("the old name was kept: %+v, %v", c, err)
				}
				// seenFor after a pass found it applied, it is forgotten.
				w.cache.mu.Lock()
				s := w.cache.seen[w.user]
				s.applied = s.applied.Add(-2 * seenFor)
				w.cache.seen[w.user] = s
				w.cache.mu.Unlock()
				prune()
				w.cache.mu.Lock()
				_, kept := w.cache.seen[w.user]
				w.cache.mu.Unlock()
				if kept {
					t.Fatal("an event applied long ago is still remembered")
				}
			})

			t.Run("a new credential of the user keeps its other entries", func(t *testing.T) {
				w := newCacheWorld(t, b, time.Minute)
				if _, err := w.lookup(t); err != nil {
					t.Fatal(err)
				}
				tok := projectiontest.TokenCreated(w.user, uuid.New(), projectiontest.T0, nil)
				w.head.Store(w.proj.deliver(tok, projectiontest.SessionStarted(w.user, uuid.New(), projectiontest.T0)))
				if _, err := w.lookup(t); err != nil {
					t.Fatal(err)
				}
				if _, err := w.cache.APITokenByDigest(context.Background(), tok.Digest); err != nil {
					t.Fatal(err)
				}
				if s := w.cache.Stats(); s.Hits != 1 || s.Misses != 2 {
					t.Fatalf("stats %+v, want the first token still answered from memory", s)
				}
			})

			t.Run("a feed that restarts after events it never saw drops every entry", func(t *testing.T) {
				w := newCacheWorld(t, b, time.Minute)
				cred, err := w.lookup(t)
				if err != nil {
					t.Fatal(err)
				}
				resets := w.cache.resets.Load()
				w.proj.mu.Lock()
				w.proj.pos += 2 // another instance applied two events
				pos := w.proj.pos
				w.proj.mu.Unlock()
				for _, f := range w.proj.fns {
					f(eventstore.Arrival{Seq: pos, Restart: true})
				}
				w.head.Store(pos)
				w.cache.store(cacheKey{digest: w.tok.Digest}, cred, resets) // a read begun before
				if _, err := w.lookup(t); err != nil {
					t.Fatal(err)
				}
				if s := w.cache.Stats(); s.Hits != 0 || s.Misses != 2 {
					t.Fatalf("stats %+v, want the entry dropped and the racing read not kept", s)
				}
			})

			t.Run("bounded", func(t *testing.T) {
				w := newCacheWorld(t, b, time.Minute)
				for range 5 {
					tok := projectiontest.TokenCreated(w.user, uuid.New(), projectiontest.T0, nil)
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
	w := newCacheWorld(t, dbtest.Backends[1], 40*time.Millisecond)
	acked := time.Now()
	if err := w.cache.Fence(context.Background(), 0, acked); err != nil {
		t.Fatal(err)
	}
	if d := time.Since(acked); d < 40*time.Millisecond {
		t.Fatalf("fence returned after %s, want at least the 40ms lease", d)
	}
	// A write acknowledged long ago need not wait.
	start := time.Now()
	if err := w.cache.Fence(context.Background(), 0, start.Add(-time.Second)); err != nil || time.Since(start) > 10*time.Millisecond {
		t.Fatalf("fence for an old write waited %s (%v)", time.Since(start), err)
	}
}

// fakePeers is a registry whose answers the test sets.
type fakePeers struct{ mayLease, alone atomic.Bool }

func (p *fakePeers) MayLease() bool { return p.mayLease.Load() }
func (p *fakePeers) Alone() bool    { return p.alone.Load() }

func TestCredentialCacheWithPeers(t *testing.T) {
	w := newCacheWorld(t, dbtest.Backends[1], 5*time.Millisecond)
	peers := &fakePeers{}
	w.cache.cfg.Peers = peers
	time.Sleep(10 * time.Millisecond) // the lease taken before peers were set ran out

	t.Run("no lease while not registered", func(t *testing.T) {
		for range 2 {
			if _, err := w.lookup(t); err != nil {
				t.Fatal(err)
			}
		}
		if s := w.cache.Stats(); s.Hits != 0 {
			t.Fatalf("stats %+v, want no hit while the registry says no", s)
		}
		peers.mayLease.Store(true)
		if _, err := w.lookup(t); err != nil {
			t.Fatal(err)
		}
		if s := w.cache.Stats(); s.Hits != 1 {
			t.Fatalf("stats %+v, want a hit once registered", s)
		}
	})

	t.Run("the commit wait is skipped only when alone", func(t *testing.T) {
		// A write acknowledged "in an hour" waits until its context ends, unless alone.
		ctx, cancel := context.WithTimeout(context.Background(), 20*time.Millisecond)
		defer cancel()
		if err := w.cache.Fence(ctx, 0, time.Now().Add(time.Hour)); err == nil {
			t.Fatal("not alone: the fence did not wait")
		}
		peers.alone.Store(true)
		if err := w.cache.Fence(context.Background(), w.head.Load(), time.Now().Add(time.Hour)); err != nil {
			t.Fatalf("alone: the fence waited (%v)", err)
		}
		if s := w.cache.Stats(); s.Skipped != 1 {
			t.Fatalf("stats %+v, want one skipped commit wait", s)
		}
		// Alone, it still waits for the write's event to arrive here (its own entries).
		ctx2, cancel2 := context.WithTimeout(context.Background(), 20*time.Millisecond)
		defer cancel2()
		if err := w.cache.Fence(ctx2, w.head.Load()+1, time.Now().Add(time.Hour)); err == nil {
			t.Fatal("alone: the fence did not wait for the write's event to arrive")
		}
		w.proj.arrive(events.UserRenamed{Versioned: events.V(), UserID: w.user, Name: "Grace"})
		if err := w.cache.Fence(context.Background(), w.head.Load()+1, time.Now().Add(time.Hour)); err != nil {
			t.Fatalf("alone, the event arrived: %v", err)
		}
	})
}

// Administrator rights narrow or widen what a credential may do, so their events must drop the
// user's cached credentials (like a revocation), never keep them (addsCredential) or keep them
// with only the profile marked stale (profileOnly): the next lookup reads the admin flag anew.
func TestCredentialCacheDropsEntriesOnAdminEvents(t *testing.T) {
	for _, typ := range []events.Type{events.TypeAdminGranted, events.TypeAdminRevoked} {
		if addsCredential[subjectToken(typ)] || profileOnly[subjectToken(typ)] {
			t.Errorf("%s must drop cached credentials, not keep them", typ)
		}
	}
	for _, b := range dbtest.Backends {
		t.Run(b.Name, func(t *testing.T) {
			t.Parallel()
			w := newCacheWorld(t, b, time.Minute)
			lookup := func(want bool) {
				t.Helper()
				c, err := w.lookup(t)
				if err != nil || c.User.Admin != want {
					t.Fatalf("lookup = %+v, %v; want admin %v", c.User, err, want)
				}
			}
			lookup(false)
			w.head.Store(w.proj.deliver(events.AdminGranted{Versioned: events.V(), UserID: w.user}))
			lookup(true)
			lookup(true) // cached again
			misses := w.cache.Stats().Misses
			w.head.Store(w.proj.deliver(events.AdminRevoked{Versioned: events.V(), UserID: w.user}))
			lookup(false)
			if s := w.cache.Stats(); s.Misses != misses+1 {
				t.Fatalf("stats %+v: the revocation must send the next lookup to the database", s)
			}
		})
	}
}

// --- The projector's part, played by the test ------------------------------------------------

// newSchemaDB is a fresh database of the backend with the current tables.
func newSchemaDB(t testing.TB, b dbtest.Backend) *bun.DB {
	t.Helper()
	db := dbtest.Open(t, b.URL(t))
	if err := projections.CreateSchema(context.Background(), db, projections.CurrentTables); err != nil {
		t.Fatal(err)
	}
	return db
}
