package eventstore

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
)

// Presence registers this identityd instance in a small JetStream stream, one subject per
// instance, and reads who else is registered. It lets the credential cache's commit wait be
// skipped when no other instance can hold a lease (projections.Peers):
//
//   - An instance takes leases only while it is registered: its first registration was
//     acknowledged at least Grace ago, and its last one was sent less than TTL-Margin ago
//     (MayLease). A registration that comes after a lapse counts as a first one.
//   - Registrations expire TTL after the server stored them (the stream's MaxAge), so a
//     registration still valid for its instance is always in the stream.
//   - Every ViewEvery an instance asks the stream leader which subjects the stream holds. The
//     view is a list of the instances registered when the question was sent, or earlier.
//   - Alone is true while the last view, asked less than Grace-Margin ago, holds no other
//     instance. Any instance whose registration was stored before the view was asked is in it;
//     one stored later waits Grace before its first lease, longer than the view stays valid,
//     so by then this instance asks again and sees it. A write whose commit wait is skipped
//     because this instance was alone therefore has no other instance that took a lease
//     before its append (which would be stale) and is still using it.
//
// Intervals are measured on each instance's monotonic clock; Margin absorbs the leases still
// running (a few milliseconds) and the difference in clock rates. Deleting or purging the
// stream by hand while instances run breaks the rule: do not.
type Presence struct {
	cfg PresenceConfig
	id  string
	nc  *nats.Conn

	base     time.Time    // monotonic origin of the times below
	joined   atomic.Int64 // ns since base at which the current registration began (acked); -1: none
	lastSent atomic.Int64 // ns since base at which the last acknowledged registration was sent
	viewAt   atomic.Int64 // ns since base at which the last view was asked; -1: none
	others   atomic.Int64 // other instances in the last view

	stop      chan struct{}
	done      chan struct{}
	closeOnce sync.Once
}

// PresenceConfig configures Presence. Zero values take defaults.
type PresenceConfig struct {
	// Conn is the NATS connection (required).
	Conn *nats.Conn
	// Stream is the registry's stream (default IDENTITY_INSTANCES, subjects
	// identity_instances.<id>).
	Stream string
	// Replicas of the registry stream (default 1); use the event stream's.
	Replicas int
	// TTL is how long a registration lasts on the server (default 10s).
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
		return errors.New("eventstore: PresenceConfig needs Conn")
	case c.Refresh+c.Timeout >= c.TTL-c.Margin:
		return errors.New("eventstore: presence Refresh + Timeout must be shorter than TTL - Margin")
	case c.ViewEvery+c.Timeout >= c.Grace-c.Margin:
		return errors.New("eventstore: presence ViewEvery + Timeout must be shorter than Grace - Margin")
	}
	return nil
}

// presenceRoot is the subject prefix of registrations; it is outside the event stream's.
const presenceRoot = "identity_instances"

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
	if _, err := js.CreateOrUpdateStream(ctx, jetstream.StreamConfig{
		Name:              cfg.Stream,
		Description:       "identityd instances registered to take credential-cache leases",
		Subjects:          []string{presenceRoot + ".*"},
		Storage:           jetstream.FileStorage,
		Replicas:          cfg.Replicas,
		MaxAge:            cfg.TTL,
		MaxMsgsPerSubject: 1,
		Discard:           jetstream.DiscardOld,
	}); err != nil {
		return nil, fmt.Errorf("presence stream: %w", err)
	}
	p := &Presence{cfg: cfg, id: uuid.NewString(), nc: cfg.Conn, base: time.Now(),
		stop: make(chan struct{}), done: make(chan struct{})}
	p.joined.Store(-1)
	p.viewAt.Store(-1)
	p.register(ctx)
	p.view(ctx)
	go p.run() //nolint:gosec,contextcheck // the registration lives until Close, not for the opening call; each request has its own timeout
	return p, nil
}

// ID is this instance's id in the registry.
func (p *Presence) ID() string { return p.id }

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
	if _, err := p.request(ctx, presenceRoot+"."+p.id, []byte(`{}`)); err != nil {
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
	req, _ := json.Marshal(map[string]string{"subjects_filter": presenceRoot + ".*"})
	m, err := p.request(ctx, "$JS.API.STREAM.INFO."+p.cfg.Stream, req)
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
	}
	if json.Unmarshal(m.Data, &resp) != nil || resp.Error != nil || resp.State == nil {
		return
	}
	others := int64(0)
	for subj := range resp.State.Subjects {
		if subj != presenceRoot+"."+p.id {
			others++
		}
	}
	if n := int64(resp.State.NumSubjects); n > int64(len(resp.State.Subjects)) {
		others += n - int64(len(resp.State.Subjects))
	}
	p.others.Store(others)
	p.viewAt.Store(asked)
}

// request publishes to subj (a registration) or asks the JetStream API, and checks for an
// error reply.
func (p *Presence) request(ctx context.Context, subj string, body []byte) (*nats.Msg, error) {
	m, err := p.nc.RequestWithContext(ctx, subj, body)
	if err != nil {
		return nil, err
	}
	if strings.HasPrefix(subj, presenceRoot+".") {
		var ack struct {
			Error *struct {
				Desc string `json:"description"`
			} `json:"error"`
		}
		if json.Unmarshal(m.Data, &ack) != nil || ack.Error != nil {
			return nil, errors.New("eventstore: presence registration refused")
		}
	}
	return m, nil
}

// Close stops registering; after the leases in flight ran out it removes the registration,
// so the other instances stop waiting for this one at once. lease is the credential cache's
// lease: the caller has stopped taking leases before calling Close.
func (p *Presence) Close(lease time.Duration) {
	p.closeOnce.Do(func() {
		close(p.stop)
		<-p.done
		p.joined.Store(-1)
		time.Sleep(lease)
		ctx, cancel := context.WithTimeout(context.Background(), p.cfg.Timeout)
		defer cancel()
		req, _ := json.Marshal(map[string]string{"filter": presenceRoot + "." + p.id})
		_, _ = p.nc.RequestWithContext(ctx, "$JS.API.STREAM.PURGE."+p.cfg.Stream, req)
	})
}
