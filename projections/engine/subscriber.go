package engine

import (
	"context"
	"errors"
	"fmt"
	"sync"
	"time"

	"github.com/ThreeDotsLabs/watermill"
	"github.com/ThreeDotsLabs/watermill/message"

	"github.com/identityd/identityd/events"
	"github.com/identityd/identityd/events/eventstore"
)

// streamSubscriber is the Watermill subscriber over the event store's feed
// (eventstore.Feed), which reads the stream in order from the read model's checkpoint: it
// verifies and decodes the events the feed hands on and delivers them batched, each Watermill
// message carrying every event that was waiting (up to a limit), so one transaction can apply
// many. The next message is sent only after the previous one is acked; a nacked message is
// sent again after a backoff, so a batch that failed (database down) is retried until it
// succeeds and nothing is skipped.
//
// Watermill's own NATS subscriber delivers one message per ack and starts its AckWait before
// the handler sees a message (watermill#609); an ordered consumer whose position lives in the
// database checkpoint avoids both.
type streamSubscriber struct {
	feed      *eventstore.Feed
	start     func(context.Context) (uint64, error)
	backoff   time.Duration
	closing   chan struct{}
	closeOnce sync.Once
	wg        sync.WaitGroup
	keys      *events.Keyring
	refused   func(seq uint64, subject string, err error) // sees each event refused by signature verification
}

type batchKey struct{}

// batchOf returns the events a message carries, or false for a poison message.
func batchOf(msg *message.Message) ([]events.Envelope, bool) {
	b, ok := msg.Context().Value(batchKey{}).([]events.Envelope)
	return b, ok
}

// Metadata keys of poison messages.
const (
	metaSubject  = "nats_subject"
	metaSequence = "stream_sequence"
	metaError    = "decode_error"
)

// Subscribe starts delivering from just after the checkpoint. topic is the subject filter.
func (s *streamSubscriber) Subscribe(ctx context.Context, topic string) (<-chan *message.Message, error) {
	pos, err := s.start(ctx)
	if err != nil {
		return nil, fmt.Errorf("read checkpoint: %w", err)
	}
	sub, err := s.feed.Start(ctx, topic, pos)
	if err != nil {
		return nil, err
	}
	out := make(chan *message.Message)
	s.wg.Add(1)
	go func() {
		defer s.wg.Done()
		defer close(out)
		for {
			raw, ok := sub.Next(ctx)
			if !ok {
				return
			}
			for _, msg := range s.messages(ctx, raw) {
				if !s.deliver(ctx, out, msg) {
					return
				}
			}
		}
	}()
	return out, nil
}

// messages verifies and decodes raw messages into batches; an undecodable or refused one
// (signature) travels alone as a poison message (payload and headers kept) so it ends in the
// poison queue instead of blocking, and is never applied.
func (s *streamSubscriber) messages(ctx context.Context, raw []eventstore.RawEvent) []*message.Message {
	var out []*message.Message
	var batch []events.Envelope
	flush := func() {
		if len(batch) > 0 {
			m := message.NewMessage(watermill.NewUUID(), nil)
			m.SetContext(context.WithValue(ctx, batchKey{}, batch))
			out = append(out, m)
			batch = nil
		}
	}
	for _, r := range raw {
		env, err := s.keys.Decode(r.Subject, r.Header, r.Data, r.Seq)
		if err != nil {
			if events.IsRefused(err) && s.refused != nil {
				s.refused(r.Seq, r.Subject, err)
			}
			flush()
			m := message.NewMessage(watermill.NewUUID(), r.Data)
			for k, v := range r.Header {
				if len(v) > 0 {
					m.Metadata.Set(k, v[0])
				}
			}
			m.Metadata.Set(metaSubject, r.Subject)
			m.Metadata.Set(metaSequence, fmt.Sprint(r.Seq))
			m.Metadata.Set(metaError, err.Error())
			out = append(out, m)
			continue
		}
		batch = append(batch, env)
	}
	flush()
	return out
}

// deliver sends msg and waits for its ack, resending copies after nacks.
func (s *streamSubscriber) deliver(ctx context.Context, out chan<- *message.Message, msg *message.Message) bool {
	backoff := s.backoff
	for {
		select {
		case out <- msg:
		case <-ctx.Done():
			return false
		case <-s.closing:
			return false
		}
		select {
		case <-msg.Acked():
			return true
		case <-msg.Nacked():
		case <-ctx.Done():
			return false
		case <-s.closing:
			return false
		}
		select {
		case <-time.After(backoff):
		case <-ctx.Done():
			return false
		case <-s.closing:
			return false
		}
		backoff = min(2*backoff, 5*time.Second)
		next := msg.Copy()
		next.SetContext(msg.Context()) //nolint:contextcheck // the redelivered copy carries the same batch
		msg = next
	}
}

// Close stops every subscription.
func (s *streamSubscriber) Close() error {
	s.closeOnce.Do(func() { close(s.closing) })
	s.feed.Close()
	s.wg.Wait()
	return nil
}

// errPoison marks a message that no retry can apply.
var errPoison = errors.New("poison message")
