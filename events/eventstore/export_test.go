package eventstore

import (
	"context"
	"io"
	"log/slog"
	"time"

	"github.com/nats-io/nats.go/jetstream"

	"github.com/identityd/identityd/events"
)

// The feed's parts, for its tests (package eventstore_test, which can start a server).

// ProbeEvery is probeEvery.
const ProbeEvery = probeEvery

// NewTestSubscription is a subscription to the whole stream from its start, with none of its
// goroutines running: a test runs the parts it exercises.
func NewTestSubscription(js jetstream.JetStream, batch int) *Subscription {
	f := NewFeed(FeedConfig{JetStream: js, MaxBatch: batch, Logger: slog.New(slog.NewTextHandler(io.Discard, nil))})
	s := f.subscription(events.SubjectRoot+".>", 0)
	s.lastAt.Store(time.Now().UnixNano())
	return s
}

// Feed is the subscription's feed.
func (s *Subscription) Feed() *Feed { return s.f }

// In is what the subscription hands on, before Next batches it.
func (s *Subscription) In() <-chan RawEvent { return s.in }

// LastSeen is the last stream sequence handed on.
func (s *Subscription) LastSeen() uint64 { return s.lastSeen.Load() }

// Bridge runs the direct-get bridge until ctx ends.
func (s *Subscription) Bridge(ctx context.Context) { s.bridge(ctx) }

// Consume starts an ordered consumer after LastSeen.
func (s *Subscription) Consume(ctx context.Context) (jetstream.ConsumeContext, error) {
	return s.consume(ctx)
}

// ReadDirect reads one bridging round with direct gets.
func (s *Subscription) ReadDirect(ctx context.Context) (int, error) { return s.readDirect(ctx) }
