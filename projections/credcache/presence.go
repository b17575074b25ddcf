package credcache

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/google/uuid"
	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/identityd/identityd/events/eventstore"
)

// Presence registers this identityd instance in a small JetStream stream, one subject per
// instance, and reads who else is registered. It lets the credential cache's commit wait be
// skipped when no other instance can hold a lease (Peers):
//
//   - An instance takes leases only while it is registered: its first registration was
//     acknowledged at least Grace ago, and its last one was sent less than TTL-Margin ago
//     (MayLease). A registration that comes after a lapse counts as a first one.
//   - Registrations expire TTL after the server stored them (the stream's MaxAge), so a
//     registration still valid for its instance is in the stream.
//   - Every ViewEvery an instance asks the stream's leader (a reply from a replica while the
//     stream has no leader is refused) which subjects the stream holds. The view lists the
//     instances registered when the question was sent, or earlier. An instance once seen
//     counts as present until a whole TTL, on this instance's own clock, after the first view
//     without it — unless it recorded its departure (Close) — so an early expiry on a server
//     whose clock stepped does not make it disappear.
//   - Alone is true while the last view, asked less than Grace-Margin ago, counts no other
//     instance. Any instance whose registration was stored before the view was asked is in it;
//     one stored later waits Grace before its first lease, longer than the view stays valid,
//     so by then this instance asks again and sees it. A write whose commit wait is skipped
//     because this instance was alone therefore has no other instance that took a lease
//     before its append (which would be stale) and is still using it.
//
// Intervals are measured on each instance's monotonic clock; Margin absorbs the leases still
// running (a few milliseconds) and the difference in clock rates. The registry's TTL is set
// by the instance that creates the stream; the others adopt it. Deleting or purging the
// stream by hand while instances run breaks the rule: do not.
type Presence struct {
	cfg PresenceConfig
	id  string
	nc  *nats.Conn

	base     time.Time    // monotonic origin of the times below
	joined   atomic.Int64 // ns since base at which the current registration began (acked); -1: none
	lastSent atomic.Int64 // ns since base at which the last acknowledged registration was sent
	viewAt   atomic.Int64 // ns since base at which the last view was asked; -1: none
	others   atomic.Int64 // other instances counted present after the last view

	// absentSince is, per other instance seen, when the first view that no longer listed it
	// was asked (0 while listed). An instance counts as present until TTL after that on this
	// instance's clock, so an early expiry on the server (its clock stepped) cannot make this
	// one think itself alone while the other still leases. Touched by view only.
	absentSince map[string]int64

	stop      chan struct{}
	done      chan struct{}
	closeOnce sync.Once
}

// PresenceConfig configures Presence. Zero values take defaults.
type PresenceConfig struct {
	// Conn is the NATS connection (required).
	Conn *nats.Conn
	// Stream is the registry's stream (default IDENTITY_INSTANCES, subjects
	// identity_instances.>).
	Stream string
	// Replicas of the registry stream (default 1); use the event stream's.
	Replicas int
	// TTL is how long a registration lasts on the server (default 10s); an existing registry's
	// own setting wins.
	TTL time.Duration
	// Refresh is how often an instance registers again (default 2s).
	Refresh time.Duration
	// Grace is how long a new registration waits before its first lease (default 3s).
	Grace time.Duration
	// Margin absorbs leases in flight and clock-rate differences (default 1s); more than
	// the credential cache's lease.
	Margin time.Duration
	// ViewEvery is how often the registry is read (default 500ms).
	ViewEvery time.Duration
	// Timeout bounds one request (default 1s).
	Timeout time.Duration
}

// WithDefaults returns c with its zero values replaced by the defaults, as OpenPresence uses it.
func (c PresenceConfig) WithDefaults() PresenceConfig {
	c.fill()
	return c
}

func (c *PresenceConfig) fill() {
	if c.Stream == "" {
		c.Stream = "IDENTITY_INSTANCES"
	}
	if c.Replicas <= 0 {
		c.Replicas = 1
	}
	if c.TTL <= 0 {
		c.TTL = 10 * time.Second
	}
	if c.Refresh <= 0 {
		c.Refresh = 2 * time.Second
	}
	if c.Grace <= 0 {
		c.Grace = 3 * time.Second
	}
	if c.Margin <= 0 {
		c.Margin = time.Second
	}
	if c.ViewEvery <= 0 {
		c.ViewEvery = 500 * time.Millisecond
	}
	if c.Timeout <= 0 {
		c.Timeout = time.Second
	}
}

// Validate reports a configuration under which the rules above do not hold or never let an
// instance be alone.
func (c PresenceConfig) Validate() error {
	switch {
	case c.Conn == nil:
		return errors.New("credcache: PresenceConfig needs Conn")
	case c.Refresh+c.Timeout >= c.TTL-c.Margin:
		return errors.New("credcache: presence Refresh + Timeout must be shorter than TTL - Margin")
	case c.ViewEvery+c.Timeout >= c.Grace-c.Margin:
		return errors.New("credcache: presence ViewEvery + Timeout must be shorter than Grace - Margin")
	}
	return nil
}

// Subjects of the registry, outside the event stream's: identity_instances.up.<id> holds an
// instance's registration, identity_instances.left.<id> says it stopped taking leases.
const (
	presenceRoot = "identity_instances"
	upPrefix     = presenceRoot + ".up."
	leftPrefix   = presenceRoot + ".left."
)

// OpenPresence creates the registry stream if needed, registers this instance and starts
// refreshing its registration and reading the registry until Close.
func OpenPresence(ctx context.Context, cfg PresenceConfig) (*Presence, error) {
	cfg.fill()
	if err := cfg.Validate(); err != nil {
		return nil, err
	}
	js, err := jetstream.New(cfg.Conn)
	if err != nil {
		return nil, err
	}
	// Created once; an existing registry keeps its settings, and its TTL is the one every
	// instance must go by (a later instance must not shorten it under the others).
	st, err := js.CreateStream(ctx, jetstream.StreamConfig{
		Name:              cfg.Stream,
		Description:       "identityd instances registered to take credential-cache leases",
		Subjects:          []string{presenceRoot + ".>"},
		Storage:           jetstream.FileStorage,
		Replicas:          cfg.Replicas,
		MaxAge:            cfg.TTL,
		MaxMsgsPerSubject: 1,
		Discard:           jetstream.DiscardOld,
	})
	if errors.Is(err, jetstream.ErrStreamNameAlreadyInUse) {
		st, err = js.Stream(ctx, cfg.Stream)
	}
	if err != nil {
		return nil, fmt.Errorf("presence stream: %w", err)
	}
	if ttl := st.CachedInfo().Config.MaxAge; ttl != cfg.TTL {
		if ttl <= 0 {
			return nil, fmt.Errorf("presence stream %s has no MaxAge: registrations would never expire", cfg.Stream)
		}
		cfg.TTL = ttl
		if err := cfg.Validate(); err != nil {
			return nil, fmt.Errorf("presence stream %s expires registrations after %s: %w", cfg.Stream, ttl, err)
		}
	}
	p := &Presence{cfg: cfg, id: uuid.NewString(), nc: cfg.Conn, base: time.Now(),
		stop: make(chan struct{}), done: make(chan struct{}), absentSince: map[string]int64{}}
	p.joined.Store(-1)
	p.viewAt.Store(-1)
	p.register(ctx)
	p.view(ctx)
	go p.run() //nolint:gosec,contextcheck // the registration lives until Close, not for the opening call; each request has its own timeout
	return p, nil
}

func (p *Presence) now() int64 { return time.Since(p.base).Nanoseconds() }

// MayLease reports whether this instance may take a credential-cache lease now.
func (p *Presence) MayLease() bool {
	j := p.joined.Load()
	now := p.now()
	return j >= 0 && now-j >= p.cfg.Grace.Nanoseconds() &&
		now-p.lastSent.Load() < (p.cfg.TTL-p.cfg.Margin).Nanoseconds()
}

// Alone reports whether no other instance can hold a lease: the last view, fresh enough,
// holds no other instance. False when unsure.
func (p *Presence) Alone() bool {
	at := p.viewAt.Load()
	return at >= 0 && p.now()-at < (p.cfg.Grace-p.cfg.Margin).Nanoseconds() && p.others.Load() == 0
}

func (p *Presence) run() {
	defer close(p.done)
	refresh := time.NewTicker(p.cfg.Refresh)
	defer refresh.Stop()
	view := time.NewTicker(p.cfg.ViewEvery)
	defer view.Stop()
	for {
		select {
		case <-p.stop:
			return
		case <-refresh.C:
			p.register(context.Background())
		case <-view.C:
			p.view(context.Background())
		}
	}
}

// register publishes this instance's registration; after a lapse it starts a new one.
func (p *Presence) register(ctx context.Context) {
	ctx, cancel := context.WithTimeout(ctx, p.cfg.Timeout)
	defer cancel()
	sent := p.now()
	if err := p.publish(ctx, upPrefix+p.id); err != nil {
		return
	}
	// Continuous only if this one was stored (before its ack, now) while the previous one,
	// stored after lastSent, had not expired yet.
	acked := p.now()
	lapsed := p.joined.Load() < 0 || acked-p.lastSent.Load() >= (p.cfg.TTL-p.cfg.Margin).Nanoseconds()
	p.lastSent.Store(sent)
	if lapsed {
		// The registration may have expired meanwhile, and others dropped this instance from
		// their views: start again, from when this one is surely stored.
		p.joined.Store(acked)
	}
}

// view asks the stream leader which instances are registered.
func (p *Presence) view(ctx context.Context) {
	ctx, cancel := context.WithTimeout(ctx, p.cfg.Timeout)
	defer cancel()
	asked := p.now()
	req, _ := json.Marshal(map[string]string{"subjects_filter": presenceRoot + ".>"})
	m, err := p.nc.RequestWithContext(ctx, "$JS.API.STREAM.INFO."+p.cfg.Stream, req)
	if err != nil {
		return
	}
	var resp struct {
		Error *struct {
			Desc string `json:"description"`
		} `json:"error"`
		State *struct {
			Subjects map[string]uint64 `json:"subjects"`
			// NumSubjects counts every subject even when the list is cut short.
			NumSubjects int `json:"num_subjects"`
		} `json:"state"`
		Cluster *eventstore.ClusterInfo `json:"cluster"`
	}
	if json.Unmarshal(m.Data, &resp) != nil || resp.Error != nil || resp.State == nil || !resp.Cluster.FromLeader() {
		return // no view: Alone turns false once the last one is too old
	}
	listed, left := map[string]bool{}, map[string]bool{}
	for subj := range resp.State.Subjects {
		switch {
		case strings.HasPrefix(subj, leftPrefix):
			left[strings.TrimPrefix(subj, leftPrefix)] = true
		case strings.HasPrefix(subj, upPrefix) && subj != upPrefix+p.id:
			id := strings.TrimPrefix(subj, upPrefix)
			listed[id] = true
			p.absentSince[id] = 0
		}
	}
	others := int64(len(listed))
	if n := int64(resp.State.NumSubjects); n > int64(len(resp.State.Subjects)) {
		others += n - int64(len(resp.State.Subjects)) // a list cut short: unknown others
	}
	for id, since := range p.absentSince {
		switch {
		case listed[id]:
		case left[id]:
			delete(p.absentSince, id) // it said it stopped taking leases
		case since == 0:
			p.absentSince[id] = asked
			others++
		case asked-since < p.cfg.TTL.Nanoseconds():
			others++
		default:
			delete(p.absentSince, id) // gone for a whole TTL on this clock
		}
	}
	p.others.Store(others)
	p.viewAt.Store(asked)
}

// publish stores a registration or a departure and checks that the registry stream
// acknowledged it: any other responder on the subject would make this instance believe it is
// registered while nobody sees it.
func (p *Presence) publish(ctx context.Context, subj string) error {
	m, err := p.nc.RequestWithContext(ctx, subj, []byte(`{}`))
	if err != nil {
		return err
	}
	var ack struct {
		Stream string `json:"stream"`
		Seq    uint64 `json:"seq"`
		Error  *struct {
			Desc string `json:"description"`
		} `json:"error"`
	}
	if json.Unmarshal(m.Data, &ack) != nil || ack.Error != nil || ack.Stream != p.cfg.Stream || ack.Seq == 0 {
		return errors.New("credcache: presence message not acknowledged by its stream")
	}
	return nil
}

// Close stops registering; after the leases in flight ran out it records its departure and
// removes its registration, so the other instances stop waiting for this one at once. lease
// is the credential cache's lease.
func (p *Presence) Close(lease time.Duration) {
	p.closeOnce.Do(func() {
		close(p.stop)
		<-p.done
		p.joined.Store(-1) // no new lease from here
		time.Sleep(lease)  // the last one ran out
		ctx, cancel := context.WithTimeout(context.Background(), p.cfg.Timeout)
		defer cancel()
		if err := p.publish(ctx, leftPrefix+p.id); err != nil {
			return // the others count this instance present until its registration is TTL gone
		}
		req, _ := json.Marshal(map[string]string{"filter": upPrefix + p.id})
		_, _ = p.nc.RequestWithContext(ctx, "$JS.API.STREAM.PURGE."+p.cfg.Stream, req)
	})
}
