package credcache

import (
	"context"
	"errors"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/google/uuid"

	"github.com/identityd/identityd/events"
	"github.com/identityd/identityd/events/eventstore"
	"github.com/identityd/identityd/projections"
)

// Cache answers credential lookups (token digest → token and user) from memory,
// without giving up "a revoked token stops working at once" — on this instance or any other.
//
// Three rules make a cached answer as good as a database read (docs/credential-cache.md):
//
//   - Invalidation. The projector's feed tells the cache of every event as soon as it arrives,
//     before it is decoded or applied (projections.Projector.OnArrival); an event of a user
//     drops that user's entries, except one that only adds a credential (a token created, a
//     session started), which leaves the others as they were, and one that only changes the
//     profile (a rename), which keeps the credentials but marks their profile stale (User reads
//     it again, and refreshes the entries once the read model has it). A database read that
//     raced with an arrival is not cached: an entry is stored only if its user row's version
//     is not older than the last event that arrived for that user, and that event is
//     remembered until the read model has applied it (and seenFor longer), however long the
//     projector lags.
//   - Lease. The cache answers only while it holds a lease: at t0 it asked the stream's leader
//     for the last sequence L, every event up to L had arrived (and so made its invalidations)
//     before t0+Lease, and the database answered a health check less than dbFresh ago. The
//     lease ends at t0+Lease. It does not wait for the read model to apply L — the entries do
//     not come from the events — so a busy projector does not keep the cache from answering.
//     (The health check keeps the documented behavior of an outage: reads fail with 503
//     within a fraction of a second rather than going on from memory.)
//     Renewal happens on demand, one at a time, so an idle service asks nothing; a busy one
//     renews once a quarter of the lease has passed, so a renewal has three quarters of it to
//     finish before the lease lapses: on saturated cores a renewal (a leader round trip and a
//     few goroutine wake-ups) can take a good part of a short lease, and every request in the
//     gap goes to the database.
//   - Commit wait. A write that changes cached data (rename, revoke, log out, delete) answers no
//     sooner than Lease after its append was acknowledged (Fence). Any lease still valid then
//     was taken after the append, when L already covered it, so no instance can answer from an
//     entry the write made stale. With Peers, an instance takes leases only while registered,
//     and skips the wait while no other instance can hold a lease: its own entries are gone
//     once the write's event arrived, which the write waited for.
//
// While the stream leader cannot be asked, or the feed lags, leases lapse and lookups go to
// the database: the cache degrades to no cache, never to stale answers.
type Cache struct {
	cfg  Config
	base time.Time // monotonic origin of leaseEnd

	leaseEnd atomic.Int64 // nanoseconds since base at which the lease ends (0: none)
	renewMu  sync.Mutex
	renewing chan struct{} // closed when the renewal in flight ends; nil when none

	mu      sync.Mutex
	entries map[cacheKey]projections.Credential
	byUser  map[uuid.UUID][]cacheKey
	seen    map[uuid.UUID]seenEvent // last event seen per user, kept for seenFor
	pruneAt time.Time

	hits, misses, lapsed, renewals, failed, fences, skipped atomic.Uint64

	// observed is the last sequence that arrived: the read model's position is not enough,
	// since a batch another instance applied first moves it before the local feed has
	// delivered that batch. observedCh is closed when it moves.
	observed atomic.Uint64
	// resets counts restarts of the feed that skipped events (applied by another instance
	// meanwhile): they drop every entry, and a database read begun before one is not kept.
	resets     atomic.Uint64
	observedMu sync.Mutex
	observedCh chan struct{}

	dbOK      atomic.Int64 // nanoseconds since base of the last database health check passed
	stop      chan struct{}
	stopped   chan struct{}
	closeOnce sync.Once
}

const (
	// pingEvery is how often the database's health is checked.
	pingEvery = 100 * time.Millisecond
	// dbFresh is how recent a passed health check must be for a lease to be taken.
	dbFresh = 3 * pingEvery
)

// Config configures a Cache. Zero values take defaults.
type Config struct {
	// ReadModel answers misses (required).
	ReadModel *projections.ReadModel
	// Head returns the stream's last sequence as its leader knows it — not a replica that
	// may lag (required; eventstore.Store.LastSequence).
	Head func(ctx context.Context) (uint64, error)
	// Projection is the local projector: its feed tells the cache of every event as it
	// arrives, and it tells how far the read model is (required).
	Projection Projection
	// Ping checks that the database answers (required); the cache calls it every pingEvery.
	// Give it a connection of its own, so a busy pool does not make a live database look dead.
	Ping func(ctx context.Context) error
	// Lease is how long a confirmation that the cache is current lasts, and so how long a
	// write that changes cached data waits after its append (default 15ms).
	Lease time.Duration
	// MaxEntries bounds the cache (default 100,000 credentials).
	MaxEntries int
	// Peers, if set, tells whether this instance may take leases and whether it is alone
	// (Presence); nil: leases need no registration and every write waits.
	Peers Peers
}

// Peers is the registry of the instances sharing the stream, as the cache sees it.
type Peers interface {
	// MayLease reports whether this instance may take a lease now.
	MayLease() bool
	// Alone reports whether no other instance can hold a lease now; false when unsure.
	Alone() bool
}

// Projection is what the cache needs from the projector.
type Projection interface {
	// OnArrival registers f to see every event of the feed as it arrives, and every start of
	// the feed, in stream order (projections.Projector.OnArrival).
	OnArrival(f func(eventstore.Arrival))
	// Position is the sequence the read model includes now.
	Position() uint64
}

func (c *Config) fill() {
	if c.Lease <= 0 {
		c.Lease = 15 * time.Millisecond
	}
	if c.MaxEntries <= 0 {
		c.MaxEntries = 100_000
	}
}

// Validate reports a configuration that cannot work.
func (c Config) Validate() error {
	if c.ReadModel == nil || c.Head == nil || c.Projection == nil || c.Ping == nil {
		return errors.New("credcache: Config needs ReadModel, Head, Projection and Ping")
	}
	return nil
}

type cacheKey struct {
	session bool
	digest  string
}

type seenEvent struct {
	seq     uint64
	applied time.Time // when a pruning pass first found it in the read model (zero: not yet)
}

// seenFor is how long the last event of a user is remembered once the read model is known to
// have applied it: longer than any database read that could race with it (the driver's read
// timeout is 10s).
const seenFor = 30 * time.Second

// New returns a cache registered with the projection. Create it before the
// projector runs, so it sees every event.
func New(cfg Config) (*Cache, error) {
	cfg.fill()
	if err := cfg.Validate(); err != nil {
		return nil, err
	}
	c := &Cache{
		cfg: cfg, base: time.Now(),
		entries: map[cacheKey]projections.Credential{}, byUser: map[uuid.UUID][]cacheKey{}, seen: map[uuid.UUID]seenEvent{},
	}
	// Everything up to the projector's position is in the database already; the cache is
	// empty, so there is nothing of it to invalidate.
	c.observed.Store(cfg.Projection.Position())
	c.observedCh = make(chan struct{})
	c.stop, c.stopped = make(chan struct{}), make(chan struct{})
	go c.checkDB()
	cfg.Projection.OnArrival(c.arrive)
	return c, nil
}

// checkDB pings the database every pingEvery until Close.
func (c *Cache) checkDB() {
	defer close(c.stopped)
	tick := time.NewTicker(pingEvery)
	defer tick.Stop()
	for {
		ctx, cancel := context.WithTimeout(context.Background(), dbFresh)
		if c.cfg.Ping(ctx) == nil {
			c.dbOK.Store(time.Since(c.base).Nanoseconds())
		}
		cancel()
		select {
		case <-c.stop:
			return
		case <-tick.C:
		}
	}
}

// Close stops the database health check; lookups go on, without leases.
func (c *Cache) Close() {
	c.closeOnce.Do(func() {
		close(c.stop)
		<-c.stopped
		c.dbOK.Store(0)
	})
}

// APITokenByDigest resolves a live API token's digest, from memory when that is safe.
func (c *Cache) APITokenByDigest(ctx context.Context, digest string) (projections.Credential, error) {
	return c.lookup(ctx, cacheKey{digest: digest}, c.cfg.ReadModel.APITokenByDigest)
}

// SessionByDigest resolves a live session token's digest, from memory when that is safe.
func (c *Cache) SessionByDigest(ctx context.Context, digest string) (projections.Credential, error) {
	return c.lookup(ctx, cacheKey{session: true, digest: digest}, c.cfg.ReadModel.SessionByDigest)
}

func (c *Cache) lookup(ctx context.Context, k cacheKey, load func(context.Context, string) (projections.Credential, error)) (projections.Credential, error) {
	c.mu.Lock()
	_, ok := c.entries[k]
	c.mu.Unlock()
	if ok {
		if c.current(ctx) {
			// Read the entry again: the lease covers invalidations made before it was taken,
			// and taking it may have waited for some.
			c.mu.Lock()
			cred, ok := c.entries[k]
			c.mu.Unlock()
			if ok {
				c.hits.Add(1)
				return cred, nil
			}
			c.misses.Add(1)
		} else {
			c.lapsed.Add(1)
		}
	} else {
		c.misses.Add(1)
	}
	resets := c.resets.Load()
	cred, err := load(ctx, k.digest)
	if err != nil {
		return cred, err
	}
	c.store(k, cred, resets)
	return cred, nil
}

// User reads a user's profile from the read model — for a credential whose ProfileStale is
// set — and refreshes the cached credentials of that user with it when it includes every
// event of the user that arrived.
func (c *Cache) User(ctx context.Context, id uuid.UUID) (projections.UserRow, error) {
	resets := c.resets.Load()
	u, err := c.cfg.ReadModel.User(ctx, id)
	if err != nil {
		return u, err
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	if s, ok := c.seen[id]; (ok && s.seq > u.Version) || c.resets.Load() != resets {
		return u, nil // older than an event already here, or raced with a restart: not kept
	}
	for _, k := range c.byUser[id] {
		e := c.entries[k]
		if e.User.Version <= u.Version {
			e.User, e.ProfileStale = u, false
			c.entries[k] = e
		}
	}
	return u, nil
}

// store caches cred, read from the database after the feed's resets-th restart, unless an
// event of its user newer than the row arrived meanwhile or the feed restarted since.
func (c *Cache) store(k cacheKey, cred projections.Credential, resets uint64) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if s, ok := c.seen[cred.User.ID]; ok && s.seq > cred.User.Version {
		return // the database answered from before an event already arrived: do not keep it
	}
	if c.resets.Load() != resets {
		return // the feed skipped events while the database answered: they may be newer
	}
	if _, ok := c.entries[k]; !ok {
		for len(c.entries) >= c.cfg.MaxEntries {
			for old := range c.entries { // Go's map order is random: a random eviction
				c.evict(old)
				break
			}
		}
		c.byUser[cred.User.ID] = append(c.byUser[cred.User.ID], k)
	}
	c.entries[k] = cred
}

// evict drops one entry and its index; c.mu is held.
func (c *Cache) evict(k cacheKey) {
	cred, ok := c.entries[k]
	if !ok {
		return
	}
	delete(c.entries, k)
	keys := c.byUser[cred.User.ID]
	for i, kk := range keys {
		if kk == k {
			keys = append(keys[:i], keys[i+1:]...)
			break
		}
	}
	if len(keys) == 0 {
		delete(c.byUser, cred.User.ID)
	} else {
		c.byUser[cred.User.ID] = keys
	}
}

// arrive drops the entries of the user an arriving event concerns, unless the event only adds
// a credential; a restart of the feed that skipped events drops every entry.
func (c *Cache) arrive(a eventstore.Arrival) {
	now := time.Now()
	c.mu.Lock()
	defer c.mu.Unlock()
	if a.Restart { // the feed (re)starts after a.Seq
		if a.Seq > c.observed.Load() {
			// Events up to a.Seq were applied by another instance without arriving here:
			// nothing cached before can be trusted.
			c.resets.Add(1)
			clear(c.entries)
			clear(c.byUser)
			c.advance(a.Seq)
		}
		return
	}
	if id, kind, ok := userEventOf(a.Subject); ok {
		c.seen[id] = seenEvent{seq: a.Seq}
		switch {
		case addsCredential[kind]:
		case profileOnly[kind]:
			for _, k := range c.byUser[id] {
				e := c.entries[k]
				e.ProfileStale = true
				c.entries[k] = e
			}
		default:
			for _, k := range c.byUser[id] {
				delete(c.entries, k)
			}
			delete(c.byUser, id)
		}
	}
	if a.Seq > c.observed.Load() {
		c.advance(a.Seq)
	}
	if now.After(c.pruneAt) {
		applied := c.cfg.Projection.Position()
		for id, s := range c.seen {
			// An event is forgotten only seenFor after the read model is known to have it:
			// until then a database read of its user could be older, however long the
			// projector took.
			switch {
			case s.seq > applied:
			case s.applied.IsZero():
				s.applied = now
				c.seen[id] = s
			case now.Sub(s.applied) > seenFor:
				delete(c.seen, id)
			}
		}
		c.pruneAt = now.Add(seenFor / 2)
	}
}

// advance moves observed to seq and wakes renewals waiting for it; c.mu is held.
func (c *Cache) advance(seq uint64) {
	c.observed.Store(seq)
	c.observedMu.Lock()
	close(c.observedCh)
	c.observedCh = make(chan struct{})
	c.observedMu.Unlock()
}

// waitObserved returns once every event up to seq has arrived.
func (c *Cache) waitObserved(ctx context.Context, seq uint64) error {
	for c.observed.Load() < seq {
		c.observedMu.Lock()
		ch := c.observedCh
		c.observedMu.Unlock()
		if c.observed.Load() >= seq {
			break
		}
		select {
		case <-ch:
		case <-ctx.Done():
			return ctx.Err()
		}
	}
	return nil
}

// addsCredential lists the user events (by their subject's last token) that change nothing a
// cached credential holds: they only add one (events.EffectAddsCredential). Every other event
// of a user drops its entries.
var addsCredential = subjectTokensWith(events.EffectAddsCredential)

// profileOnly lists the user events that change only profile fields a credential carries
// (events.EffectProfileOnly: the user's name), not whether it authenticates: they mark the
// user's entries ProfileStale instead of dropping them, so a caller who renames keeps being
// answered from memory. Only fields no authorization decision reads have that effect:
// administrator rights (the user's admin flag, which httpapi's requireAdmin reads from the
// credential) change by admin_granted and admin_revoked, which widen or narrow rights, so they
// drop the entries like a revocation.
var profileOnly = subjectTokensWith(events.EffectProfileOnly)

// subjectTokensWith collects the subject tokens of the event types with the effect, from the
// events package's table: the one place that says what each event does to credentials.
func subjectTokensWith(effect events.Effect) map[string]bool {
	out := map[string]bool{}
	for _, t := range events.Types() {
		if events.EffectOf(t) == effect {
			out[subjectToken(t)] = true
		}
	}
	return out
}

func subjectToken(t events.Type) string { return string(t)[strings.LastIndexByte(string(t), '.')+1:] }

// userEventOf parses a user event's subject, <root>.user.<id>.<kind> (events.Subject).
func userEventOf(subject string) (uuid.UUID, string, bool) {
	parts := strings.Split(subject, ".")
	if len(parts) != 4 || parts[0] != events.SubjectRoot || parts[1] != "user" {
		return uuid.Nil, "", false
	}
	id, err := uuid.Parse(parts[2])
	return id, parts[3], err == nil
}

// current reports whether the cache holds a lease, renewing it if needed.
func (c *Cache) current(ctx context.Context) bool {
	now, end := time.Since(c.base).Nanoseconds(), c.leaseEnd.Load()
	if now < end {
		if end-now < c.cfg.Lease.Nanoseconds()*3/4 {
			c.startRenewal() //nolint:contextcheck // renew ahead, so a busy instance's requests never wait for it; the renewal has its own deadline
		}
		return true
	}
	ch := c.startRenewal() //nolint:contextcheck // one renewal serves every waiting request; it has its own deadline
	select {
	case <-ch:
	case <-ctx.Done():
		return false
	}
	return time.Since(c.base).Nanoseconds() < c.leaseEnd.Load()
}

// startRenewal starts a renewal unless one is in flight, and returns the channel closed
// when the one in flight ends.
func (c *Cache) startRenewal() chan struct{} {
	c.renewMu.Lock()
	defer c.renewMu.Unlock()
	if c.renewing == nil {
		c.renewing = make(chan struct{})
		go c.renew(c.renewing) //nolint:contextcheck // one renewal serves every request; it has its own deadline
	}
	return c.renewing
}

// renew takes a lease if every event up to the leader's last sequence arrives in time.
func (c *Cache) renew(done chan struct{}) {
	defer func() {
		c.renewMu.Lock()
		c.renewing = nil
		c.renewMu.Unlock()
		close(done)
	}()
	t0 := time.Since(c.base)
	ctx, cancel := context.WithTimeout(context.Background(), c.cfg.Lease)
	defer cancel()
	c.renewals.Add(1)
	ok := false
	defer func() {
		if !ok {
			c.failed.Add(1)
		}
	}()
	if c.cfg.Peers != nil && !c.cfg.Peers.MayLease() {
		return // not registered (long enough) for writers to wait for this instance
	}
	if ok := c.dbOK.Load(); ok == 0 || t0.Nanoseconds()-ok > dbFresh.Nanoseconds() {
		return // the database did not answer lately (or the cache closed): no need to ask NATS
	}
	head, err := c.cfg.Head(ctx)
	if err != nil {
		return
	}
	if c.waitObserved(ctx, head) != nil {
		return
	}
	c.leaseEnd.Store((t0 + c.cfg.Lease).Nanoseconds())
	ok = true
}

// Fence waits until no instance can answer from an entry that a write, stored at seq and
// acknowledged at acked, made stale: the commit wait of the lease rule. An instance alone
// (Peers) only makes sure its own entries are gone: the write's event has arrived here.
func (c *Cache) Fence(ctx context.Context, seq uint64, acked time.Time) error {
	c.fences.Add(1)
	if c.cfg.Peers != nil && c.cfg.Peers.Alone() {
		if err := c.waitObserved(ctx, seq); err != nil {
			return err
		}
		c.skipped.Add(1)
		return nil
	}
	wait := time.Until(acked.Add(c.cfg.Lease))
	if wait <= 0 {
		return nil
	}
	t := time.NewTimer(wait)
	defer t.Stop()
	select {
	case <-t.C:
		return nil
	case <-ctx.Done():
		return ctx.Err()
	}
}

// Stats are the cache's counters since it started.
type Stats struct {
	Entries int
	// Hits were answered from memory; Misses went to the database; Lapsed were in memory but
	// went to the database because no lease could be taken.
	Hits, Misses, Lapsed uint64
	// Renewals of the lease were tried; Failed did not finish within a lease.
	Renewals, Failed uint64
	// Fences counts writes that asked for the commit wait; Skipped, those that did not wait
	// because no other instance could hold a lease.
	Fences, Skipped uint64
}

// Stats returns the cache's counters.
func (c *Cache) Stats() Stats {
	c.mu.Lock()
	n := len(c.entries)
	c.mu.Unlock()
	return Stats{Entries: n, Hits: c.hits.Load(), Misses: c.misses.Load(), Lapsed: c.lapsed.Load(),
		Renewals: c.renewals.Load(), Failed: c.failed.Load(), Fences: c.fences.Load(), Skipped: c.skipped.Load()}
}
