package eventstore

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"sync"
	"sync/atomic"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/identityd/identityd/events"
)

// Arrival is a notice from the feed, in stream order: the event at Seq, stored under Subject,
// has arrived — it is not decoded or applied yet, and every event before it arrived first; or,
// with Restart, the feed (re)starts after Seq, the reader's checkpoint, and the events up to
// it were applied without arriving here.
type Arrival struct {
	Seq     uint64
	Subject string
	Restart bool
}

// RawEvent is one stream message as the feed hands it on, whichever way it was read: not
// verified or decoded yet.
type RawEvent struct {
	Subject string
	Seq     uint64
	Header  nats.Header
	Data    []byte
}

// FeedConfig configures a Feed. Zero values take defaults.
type FeedConfig struct {
	// JetStream reads the stream (required).
	JetStream jetstream.JetStream
	// Stream is the stream name (default events.StreamName).
	Stream string
	// MaxBatch bounds the events one Next returns, one pull asks for and one direct get
	// reads (default 500).
	MaxBatch int
	// Logger logs stalls and direct reads (default slog.Default()).
	Logger *slog.Logger
	// Arrived, if set, sees every event handed on, and each start, in stream order (Arrival).
	// It runs on the feed's goroutines and must be quick.
	Arrived func(Arrival)
}

func (c *FeedConfig) fill() {
	if c.Stream == "" {
		c.Stream = events.StreamName
	}
	if c.MaxBatch <= 0 {
		c.MaxBatch = 500
	}
	if c.Logger == nil {
		c.Logger = slog.Default()
	}
}

// Feed reads the stream in order, each event once, for a reader whose position lives
// elsewhere (the projector's checkpoint): an ordered consumer delivers, a watchdog replaces
// it when it stalls, and a bridge reads the stream directly meanwhile (Subscription).
// WaitingFor tells it that a caller waits for an event, so the bridge does not wait for the
// next probe.
type Feed struct {
	cfg       FeedConfig
	closing   chan struct{}
	closeOnce sync.Once
	wg        sync.WaitGroup
	want      atomic.Uint64 // the highest stream sequence a caller waits to see
	nudge     chan struct{} // wakes the bridge when a caller starts waiting
}

// NewFeed returns a feed; Start begins reading.
func NewFeed(cfg FeedConfig) *Feed {
	cfg.fill()
	return &Feed{cfg: cfg, closing: make(chan struct{}), nudge: make(chan struct{}, 1)}
}

// WaitingFor tells the feed that a caller waits for the event at seq: if the consumer stays
// silent while it waits, the feed reads the stream directly.
func (f *Feed) WaitingFor(seq uint64) {
	for {
		cur := f.want.Load()
		if seq <= cur {
			return
		}
		if f.want.CompareAndSwap(cur, seq) {
			select {
			case f.nudge <- struct{}{}:
			default:
			}
			return
		}
	}
}

// Close stops every subscription and waits for their goroutines.
func (f *Feed) Close() {
	f.closeOnce.Do(func() { close(f.closing) })
	f.wg.Wait()
}

// Start reads the events on subject (a filter such as events.SubjectRoot+".>") stored after
// stream sequence after, until ctx ends or the feed closes. It first tells Arrived of the
// restart.
func (f *Feed) Start(ctx context.Context, subject string, after uint64) (*Subscription, error) {
	if f.cfg.Arrived != nil {
		f.cfg.Arrived(Arrival{Seq: after, Restart: true})
	}
	s := f.subscription(subject, after)
	cc, err := s.consume(ctx)
	if err != nil {
		return nil, err
	}
	f.wg.Add(2)
	go func() {
		defer f.wg.Done()
		s.watch(ctx, cc)
	}()
	go func() {
		defer f.wg.Done()
		s.bridge(ctx)
	}()
	return s, nil
}

func (f *Feed) subscription(subject string, after uint64) *Subscription {
	s := &Subscription{f: f, topic: subject, in: make(chan RawEvent, 4*f.cfg.MaxBatch), handed: after}
	s.lastSeen.Store(after)
	return s
}

// Subscription keeps an ordered consumer delivering, replaces it when it stalls, and bridges
// the gap by reading the stream directly meanwhile; Next hands the events on.
//
// The ordered consumer of nats.go recreates itself after missed heartbeats, but with backoff
// up to 10 s; and in a cluster, creating a consumer needs the JetStream meta leader, which
// takes seconds to elect again when the node that hosted it dies. The projection — and every
// write waiting to read its own result — would stall that long. So two things run beside the
// consumer: a watchdog that starts a fresh consumer after the last event delivered when the
// stream has moved on while nothing arrives, and a bridge that, while a caller waits for an
// event the consumer has not delivered, reads the stream with direct gets, which any current
// replica answers without a leader or a consumer. Both sources hand over through push, which
// passes each stream sequence on once and in increasing order.
type Subscription struct {
	f        *Feed
	topic    string
	in       chan RawEvent
	pushMu   sync.Mutex    // serializes push: check, hand over, record
	gen      atomic.Int64  // the current consumer's generation
	lastSeen atomic.Uint64 // stream sequence of the last message handed to in
	lastAt   atomic.Int64  // when it was handed (unix nanoseconds)
	sending  atomic.Bool   // a delivery is waiting for room in `in`
	bridging atomic.Bool   // the bridge handed on the last event: the consumer is presumed lost
	handed   uint64        // the last stream sequence Next returned; Next's alone
}

// Next waits for the next event and returns it with those waiting behind it, up to MaxBatch,
// in stream order, each stream sequence once; false once ctx ends or the feed closes. One
// goroutine calls it.
func (s *Subscription) Next(ctx context.Context) ([]RawEvent, bool) {
	for {
		var first RawEvent
		select {
		case first = <-s.in:
		case <-ctx.Done():
			return nil, false
		case <-s.f.closing:
			return nil, false
		}
		raw := []RawEvent{first}
	drain:
		for len(raw) < s.f.cfg.MaxBatch {
			select {
			case m := <-s.in:
				raw = append(raw, m)
			default:
				break drain
			}
		}
		var fresh []RawEvent
		for _, m := range raw {
			// Belt and braces: push already passes each stream sequence on once, in
			// increasing order.
			if m.Seq > s.handed {
				s.handed = m.Seq
				fresh = append(fresh, m)
			}
		}
		if len(fresh) > 0 {
			return fresh, true
		}
	}
}

const (
	// stallAfter is how long the feed may stay silent while the stream has newer events
	// before the watchdog replaces the consumer.
	stallAfter = 2 * time.Second
	// bridgeAfter is how long the feed may stay silent while a caller waits for an event it
	// has not delivered before the bridge reads the stream directly. The consumer normally
	// delivers within milliseconds, so the bridge only runs when the consumer is lost.
	bridgeAfter = 300 * time.Millisecond
	// probeEvery is how often a silent feed checks the stream directly even when nobody
	// waits, so events appended by other instances are read while a consumer is lost.
	probeEvery = 2 * time.Second
	// bridgeRounds bounds the direct-get batches of one bridging round, so the consumer gets
	// a chance to take over again.
	bridgeRounds = 20
)

// push hands ev on unless a sequence at or after it was already handed on. Each source (a
// consumer, the bridge) reads the stream in order without gaps from a start at or before
// lastSeen+1, so under the mutex the sequences handed on are each stream event once, in order.
func (s *Subscription) push(ev RawEvent, direct bool) bool {
	s.pushMu.Lock()
	defer s.pushMu.Unlock()
	if ev.Seq <= s.lastSeen.Load() {
		return true // already delivered by the other source
	}
	if s.f.cfg.Arrived != nil {
		// Before the hand-over, which may wait for the reader: observers (the credential
		// cache) learn of the event as soon as it is here, not after the batches ahead of it.
		s.f.cfg.Arrived(Arrival{Seq: ev.Seq, Subject: ev.Subject})
	}
	s.sending.Store(true) // a full channel is backpressure, not a stall
	defer s.sending.Store(false)
	select {
	case s.in <- ev:
		s.lastSeen.Store(ev.Seq)
		s.lastAt.Store(time.Now().UnixNano())
		s.bridging.Store(direct)
		return true
	case <-s.f.closing:
		return false
	}
}

func (s *Subscription) consume(ctx context.Context) (jetstream.ConsumeContext, error) {
	gen := s.gen.Add(1)
	s.lastAt.Store(time.Now().UnixNano())
	cons, err := s.f.cfg.JetStream.OrderedConsumer(ctx, s.f.cfg.Stream, jetstream.OrderedConsumerConfig{
		FilterSubjects: []string{s.topic},
		DeliverPolicy:  jetstream.DeliverByStartSequencePolicy,
		OptStartSeq:    s.lastSeen.Load() + 1,
	})
	if err != nil {
		return nil, fmt.Errorf("ordered consumer: %w", err)
	}
	cc, err := cons.Consume(func(m jetstream.Msg) {
		md, err := m.Metadata()
		if err != nil || s.gen.Load() != gen {
			return // from a replaced consumer
		}
		s.push(RawEvent{Subject: m.Subject(), Seq: md.Sequence.Stream, Header: m.Headers(), Data: m.Data()}, false)
	}, jetstream.PullMaxMessages(s.f.cfg.MaxBatch),
		// Short pulls with frequent heartbeats, so a lost consumer is noticed quickly.
		jetstream.PullExpiry(5*time.Second), jetstream.PullHeartbeat(time.Second))
	if err != nil {
		return nil, fmt.Errorf("consume: %w", err)
	}
	return cc, nil
}

// watch replaces a stalled consumer until ctx ends or the feed closes.
func (s *Subscription) watch(ctx context.Context, cc jetstream.ConsumeContext) {
	tick := time.NewTicker(time.Second)
	defer tick.Stop()
	defer func() {
		if cc != nil {
			cc.Stop()
		}
	}()
	for {
		select {
		case <-ctx.Done():
			return
		case <-s.f.closing:
			return
		case <-tick.C:
		}
		if cc != nil && (s.sending.Load() || time.Since(time.Unix(0, s.lastAt.Load())) < stallAfter) {
			continue
		}
		if cc != nil && !s.behind(ctx) {
			continue
		}
		if cc != nil {
			s.f.cfg.Logger.Info("projection feed stalled; starting a new consumer", "after_seq", s.lastSeen.Load())
			cc.Stop()
			cc = nil
		}
		next, err := s.consume(ctx)
		if err != nil {
			s.f.cfg.Logger.Error("projection feed: cannot start a consumer; retrying", "error", err)
			continue
		}
		cc = next
	}
}

// behind reports whether the stream holds events after the last one delivered.
func (s *Subscription) behind(ctx context.Context) bool {
	ctx, cancel := context.WithTimeout(ctx, time.Second)
	defer cancel()
	st, err := s.f.cfg.JetStream.Stream(ctx, s.f.cfg.Stream)
	if err != nil {
		return true // cannot even ask: treat as stalled, a new consumer will retry
	}
	return st.CachedInfo().State.LastSeq > s.lastSeen.Load()
}

// bridge reads the stream directly while the consumer is silent and a caller waits for an
// event it has not delivered, and probes now and then while it is silent at all.
func (s *Subscription) bridge(ctx context.Context) {
	tick := time.NewTicker(100 * time.Millisecond)
	defer tick.Stop()
	var lastProbe time.Time
	for {
		select {
		case <-ctx.Done():
			return
		case <-s.f.closing:
			return
		case <-tick.C:
		case <-s.f.nudge:
		}
		if s.sending.Load() {
			continue
		}
		silent := time.Since(time.Unix(0, s.lastAt.Load()))
		waiting := s.f.want.Load() > s.lastSeen.Load()
		// Once the bridge carries the feed, a waiting caller is served at once, not after
		// another silence: until the consumer hands on an event again.
		serveWaiting := waiting && (silent >= bridgeAfter || s.bridging.Load())
		probe := silent >= probeEvery && time.Since(lastProbe) >= probeEvery
		if !serveWaiting && !probe {
			continue
		}
		lastProbe = time.Now()
		from := s.lastSeen.Load() + 1
		n, err := s.readDirect(ctx)
		switch {
		case err != nil && waiting:
			s.f.cfg.Logger.Error("projection feed: direct read failed; retrying", "from_seq", from, "error", err)
		case n > 0:
			s.f.cfg.Logger.Info("projection feed: consumer silent; read events directly", "from_seq", from, "events", n)
		}
	}
}

// errFeedClosed stops a direct read when the feed closes.
var errFeedClosed = errors.New("projection feed closed")

// readDirect hands on the events after lastSeen with batched direct gets, up to bridgeRounds
// batches, and returns how many it read.
func (s *Subscription) readDirect(ctx context.Context) (int, error) {
	ctx, cancel := context.WithTimeout(ctx, 2*time.Second)
	defer cancel()
	read := 0
	err := DirectRead(ctx, s.f.cfg.JetStream.Conn(), s.f.cfg.Stream, s.topic, s.lastSeen.Load()+1, s.f.cfg.MaxBatch, bridgeRounds*s.f.cfg.MaxBatch,
		func(m *nats.Msg, seq uint64) error {
			if !s.push(RawEvent{Subject: m.Header.Get(jetstream.SubjectHeader), Seq: seq, Header: m.Header, Data: m.Data}, true) {
				return errFeedClosed
			}
			read++
			return nil
		})
	if errors.Is(err, errFeedClosed) {
		err = nil
	}
	return read, err
}
