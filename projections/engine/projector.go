package engine

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"strconv"
	"sync"
	"sync/atomic"
	"time"

	"github.com/ThreeDotsLabs/watermill"
	"github.com/ThreeDotsLabs/watermill/message"
	"github.com/ThreeDotsLabs/watermill/message/router/middleware"
	"github.com/nats-io/nats.go/jetstream"
	"github.com/uptrace/bun"

	"github.com/identityd/identityd/events"
	"github.com/identityd/identityd/events/eventstore"
)

// ProjectorConfig configures a Projector. Zero values take defaults.
type ProjectorConfig struct {
	// DB is the read-model database (required).
	DB *bun.DB
	// Projections are the read models to keep (required): each batch is applied to all of
	// them in one transaction, under one checkpoint.
	Projections []Projection
	// JetStream reads the stream (required).
	JetStream jetstream.JetStream
	// Keys verifies each event's signature (required); a refused event goes to the poison
	// queue and is counted in Refused.
	Keys *events.Keyring
	// Stream is the stream name (default events.StreamName).
	Stream string
	// Tables is the generation of tables to build (default CurrentTables).
	Tables Tables
	// MaxBatch bounds the events applied in one transaction (default 500).
	MaxBatch int
	// PoisonSubject is where undecodable events are published (default "identityd.poison.users").
	PoisonSubject string
	// Logger logs progress and failures (default slog.Default()).
	Logger *slog.Logger
}

func (c *ProjectorConfig) fill() {
	if c.Stream == "" {
		c.Stream = events.StreamName
	}
	if c.Tables == (Tables{}) {
		c.Tables = CurrentTables
	}
	if c.MaxBatch <= 0 {
		c.MaxBatch = 500
	}
	if c.PoisonSubject == "" {
		c.PoisonSubject = "identityd.poison.users"
	}
	if c.Logger == nil {
		c.Logger = slog.Default()
	}
}

// Validate reports a configuration that cannot work.
func (c ProjectorConfig) Validate() error {
	if c.DB == nil || c.JetStream == nil || c.Keys == nil {
		return errors.New("projections: DB, JetStream and Keys are required")
	}
	if len(c.Projections) == 0 {
		return errors.New("projections: no projection to keep")
	}
	return nil
}

// Projector keeps one generation of every projection's tables up to date with the stream.
type Projector struct {
	cfg    ProjectorConfig
	router *message.Router
	sub    *streamSubscriber

	refused atomic.Uint64 // events refused by signature verification since start

	mu        sync.Mutex
	pos       uint64
	changed   chan struct{}
	onArrival []func(eventstore.Arrival)
}

// OnArrival registers f to see every arrival notice of the projector's feed
// (eventstore.Arrival), including events another instance already applied: the in-memory
// credential cache invalidates from them as soon as they arrive.
// f runs on the feed's goroutine and must be quick. Observers run in the order registered;
// register before Run to see every event.
func (p *Projector) OnArrival(f func(eventstore.Arrival)) {
	p.mu.Lock()
	defer p.mu.Unlock()
	p.onArrival = append(p.onArrival, f)
}

func (p *Projector) arrived(a eventstore.Arrival) {
	p.mu.Lock()
	observers := p.onArrival
	p.mu.Unlock()
	for _, f := range observers {
		f(a)
	}
}

// NewProjector creates the tables if needed and wires the Watermill router: recoverer (a panic
// becomes an error), retry with backoff for transient failures, and a poison queue for events
// that cannot be decoded. A batch that still fails is nacked and redelivered, so the projection
// pauses (say, while the database is down) and resumes from its checkpoint, never skipping.
func NewProjector(ctx context.Context, cfg ProjectorConfig) (*Projector, error) {
	cfg.fill()
	if err := cfg.Validate(); err != nil {
		return nil, err
	}
	if err := CreateSchema(ctx, cfg.DB, cfg.Projections, cfg.Tables); err != nil {
		return nil, err
	}
	p := &Projector{cfg: cfg, changed: make(chan struct{})}
	pos, err := p.checkpoint(ctx)
	if err != nil {
		return nil, err
	}
	p.pos = pos
	logger := watermill.NewSlogLogger(cfg.Logger)
	router, err := message.NewRouter(message.RouterConfig{CloseTimeout: 10 * time.Second}, logger)
	if err != nil {
		return nil, err
	}
	poisonPub, err := newPoisonPublisher(ctx, cfg.JetStream)
	if err != nil {
		return nil, err
	}
	poison, err := middleware.PoisonQueueWithFilter(poisonPub, cfg.PoisonSubject, func(err error) bool { return errors.Is(err, errPoison) })
	if err != nil {
		return nil, err
	}
	router.AddMiddleware(
		poison,
		middleware.Retry{
			MaxRetries:      5,
			InitialInterval: 50 * time.Millisecond,
			MaxInterval:     2 * time.Second,
			Multiplier:      2,
			Logger:          logger,
			ShouldRetry:     func(p middleware.RetryParams) bool { return !errors.Is(p.Err, errPoison) },
		}.Middleware,
		middleware.Recoverer,
	)
	p.sub = &streamSubscriber{
		feed: eventstore.NewFeed(eventstore.FeedConfig{
			JetStream: cfg.JetStream, Stream: cfg.Stream, MaxBatch: cfg.MaxBatch, Logger: cfg.Logger, Arrived: p.arrived,
		}),
		start: p.checkpoint, backoff: 500 * time.Millisecond, closing: make(chan struct{}),
		keys: cfg.Keys, refused: p.refuse,
	}
	router.AddConsumerHandler("project_"+cfg.Tables.Checkpoint(), events.SubjectRoot+".>", p.sub, p.handle)
	p.router = router
	return p, nil
}

// Run applies events until ctx ends or Close is called.
func (p *Projector) Run(ctx context.Context) error {
	return p.router.Run(ctx)
}

// Running is closed once the projector consumes the stream.
func (p *Projector) Running() chan struct{} { return p.router.Running() }

// Close stops the projector, letting an in-flight batch finish.
func (p *Projector) Close() error {
	err := p.router.Close()
	return errors.Join(err, p.sub.Close())
}

func (p *Projector) handle(msg *message.Message) error {
	batch, ok := batchOf(msg)
	if !ok {
		// Never applied, but passed: the checkpoint moves past it, so readers waiting for later
		// positions and a restart do not wait for it again. The poison queue keeps it.
		if seq, err := strconv.ParseUint(msg.Metadata.Get(metaSequence), 10, 64); err == nil {
			if err := skipPast(msg.Context(), p.cfg.DB, p.cfg.Tables, seq); err != nil {
				return err
			}
			p.advance(seq)
		}
		return fmt.Errorf("%w: seq %s on %s: %s", errPoison,
			msg.Metadata.Get(metaSequence), msg.Metadata.Get(metaSubject), msg.Metadata.Get(metaError))
	}
	start := time.Now()
	pos, replays, err := applyBatchReplays(msg.Context(), p.cfg.DB, p.cfg.Projections, p.cfg.Tables, batch)
	if err != nil {
		return err
	}
	for _, seq := range replays {
		p.refused.Add(1)
		p.cfg.Logger.Error("refused a replayed event: a genuine event appended again under a new position; not applied", "seq", seq)
	}
	p.advance(pos)
	p.cfg.Logger.Debug("projected batch", "events", len(batch), "position", pos, "apply_ms", float64(time.Since(start).Microseconds())/1000)
	return nil
}

// refuse records an event whose signature does not verify: it is never applied (the feed sends
// it to the poison queue), and an operator must learn of it, since only a holder of publish
// rights on the stream could have written it.
func (p *Projector) refuse(seq uint64, subject string, err error) {
	p.refused.Add(1)
	p.cfg.Logger.Error("refused an event whose signature does not verify: not applied, moved to the poison queue",
		"seq", seq, "subject", subject, "err", err, "poison_stream", PoisonStream)
}

// Refused is the number of events refused since the projector started: by signature
// verification, or as replays of events applied before.
func (p *Projector) Refused() uint64 { return p.refused.Load() }

func (p *Projector) checkpoint(ctx context.Context) (uint64, error) {
	return Position(ctx, p.cfg.DB, p.cfg.Tables)
}

func (p *Projector) advance(pos uint64) {
	p.mu.Lock()
	defer p.mu.Unlock()
	if pos > p.pos {
		p.pos = pos
		close(p.changed)
		p.changed = make(chan struct{})
	}
}

// Position is the stream sequence up to which this projector knows the read model is current.
func (p *Projector) Position() uint64 {
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.pos
}

// WaitFor blocks until the read model includes the event at stream sequence seq: the
// read-your-writes barrier a command's caller passes before it answers.
func (p *Projector) WaitFor(ctx context.Context, seq uint64) error {
	p.sub.feed.WaitingFor(seq)
	for {
		p.mu.Lock()
		pos, ch := p.pos, p.changed
		p.mu.Unlock()
		if pos >= seq {
			return nil
		}
		select {
		case <-ch:
		case <-ctx.Done():
			return fmt.Errorf("read model at %d, waiting for %d: %w", pos, seq, ctx.Err())
		}
	}
}
