package projections

import (
	"context"
	"errors"
	"fmt"
	"sync"
	"sync/atomic"
	"time"

	"github.com/ThreeDotsLabs/watermill"
	"github.com/ThreeDotsLabs/watermill/message"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/identityd/identityd/events"
)

// streamSubscriber is a Watermill subscriber over a JetStream ordered consumer that delivers
// events in stream order, batched: each Watermill message carries every event that was waiting
// (up to a limit), so one transaction can apply many events. The next message is sent only
// after the previous one is acked; a nacked message is sent again after a backoff, so a batch
// that failed (database down) is retried until it succeeds and nothing is skipped.
//
// Watermill's own NATS subscriber delivers one message per ack and starts its AckWait before
// the handler sees a message (watermill#609); an ordered consumer whose position lives in the
// database checkpoint avoids both.
type streamSubscriber struct {
	js        jetstream.JetStream
	stream    string
	start     func(context.Context) (uint64, error)
	maxBatch  int
	backoff   time.Duration
	logger    watermill.LoggerAdapter
	closing   chan struct{}
	closeOnce sync.Once
	wg        sync.WaitGroup
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
	in := make(chan jetstream.Msg, 4*s.maxBatch)
	f := &feed{s: s, topic: topic, in: in}
	f.lastSeen.Store(pos)
	cc, err := f.consume(ctx)
	if err != nil {
		return nil, err
	}
	s.wg.Add(1)
	go func() {
		defer s.wg.Done()
		f.watch(ctx, cc)
	}()
	out := make(chan *message.Message)
	s.wg.Add(1)
	handed := pos // the last stream sequence passed on to the router
	go func() {
		defer s.wg.Done()
		defer close(out)
		for {
			var first jetstream.Msg
			select {
			case first = <-in:
			case <-ctx.Done():
				return
			case <-s.closing:
				return
			}
			raw := []jetstream.Msg{first}
		drain:
			for len(raw) < s.maxBatch {
				select {
				case m := <-in:
					raw = append(raw, m)
				default:
					break drain
				}
			}
			var fresh []jetstream.Msg
			for _, m := range raw {
				// A replaced consumer may have handed over a message the new one repeats:
				// pass each stream sequence on once, in increasing order.
				if md, err := m.Metadata(); err == nil && md.Sequence.Stream > handed {
					handed = md.Sequence.Stream
					fresh = append(fresh, m)
				}
			}
			for _, msg := range s.messages(ctx, fresh) {
				if !s.deliver(ctx, out, msg) {
					return
				}
			}
		}
	}()
	return out, nil
}

// feed keeps an ordered consumer delivering into in, and replaces it when it stalls.
//
// The ordered consumer of nats.go recreates itself after missed heartbeats, but with backoff
// up to 10 s; when the server that hosted it dies in a cluster, the projection — and every
// write waiting to read its own result — would stall that long. The watchdog notices that the
// stream has moved on while nothing arrives, and starts a fresh consumer after the last event
// delivered. Deliveries from a replaced consumer are dropped, so nothing is delivered twice or
// out of order.
type feed struct {
	s        *streamSubscriber
	topic    string
	in       chan jetstream.Msg
	gen      atomic.Int64  // the current consumer's generation
	lastSeen atomic.Uint64 // stream sequence of the last message handed to in
	lastAt   atomic.Int64  // when it was handed (unix nanoseconds)
	sending  atomic.Bool   // a delivery is waiting for room in `in`
}

// stallAfter is how long the feed may stay silent while the stream has newer events.
const stallAfter = 2 * time.Second

func (f *feed) consume(ctx context.Context) (jetstream.ConsumeContext, error) {
	gen := f.gen.Add(1)
	f.lastAt.Store(time.Now().UnixNano())
	cons, err := f.s.js.OrderedConsumer(ctx, f.s.stream, jetstream.OrderedConsumerConfig{
		FilterSubjects: []string{f.topic},
		DeliverPolicy:  jetstream.DeliverByStartSequencePolicy,
		OptStartSeq:    f.lastSeen.Load() + 1,
	})
	if err != nil {
		return nil, fmt.Errorf("ordered consumer: %w", err)
	}
	cc, err := cons.Consume(func(m jetstream.Msg) {
		md, err := m.Metadata()
		if err != nil || f.gen.Load() != gen || md.Sequence.Stream <= f.lastSeen.Load() {
			return // from a replaced consumer, or already delivered
		}
		f.sending.Store(true) // a full channel is backpressure, not a stall
		select {
		case f.in <- m:
			f.lastSeen.Store(md.Sequence.Stream)
			f.lastAt.Store(time.Now().UnixNano())
		case <-f.s.closing:
		}
		f.sending.Store(false)
	}, jetstream.PullMaxMessages(f.s.maxBatch),
		// Short pulls with frequent heartbeats, so a lost consumer is noticed quickly.
		jetstream.PullExpiry(5*time.Second), jetstream.PullHeartbeat(time.Second))
	if err != nil {
		return nil, fmt.Errorf("consume: %w", err)
	}
	return cc, nil
}

// watch replaces a stalled consumer until ctx ends or the subscriber closes.
func (f *feed) watch(ctx context.Context, cc jetstream.ConsumeContext) {
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
		case <-f.s.closing:
			return
		case <-tick.C:
		}
		if cc != nil && (f.sending.Load() || time.Since(time.Unix(0, f.lastAt.Load())) < stallAfter) {
			continue
		}
		if cc != nil && !f.behind(ctx) {
			continue
		}
		if cc != nil {
			f.s.logger.Info("projection feed stalled; starting a new consumer", watermill.LogFields{"after_seq": f.lastSeen.Load()})
			cc.Stop()
			cc = nil
		}
		next, err := f.consume(ctx)
		if err != nil {
			f.s.logger.Error("projection feed: cannot start a consumer; retrying", err, nil)
			continue
		}
		cc = next
	}
}

// behind reports whether the stream holds events after the last one delivered.
func (f *feed) behind(ctx context.Context) bool {
	ctx, cancel := context.WithTimeout(ctx, time.Second)
	defer cancel()
	st, err := f.s.js.Stream(ctx, f.s.stream)
	if err != nil {
		return true // cannot even ask: treat as stalled, a new consumer will retry
	}
	return st.CachedInfo().State.LastSeq > f.lastSeen.Load()
}

// messages decodes raw messages into batches; an undecodable one travels alone as a poison
// message (payload and headers kept) so it ends in the poison queue instead of blocking.
func (s *streamSubscriber) messages(ctx context.Context, raw []jetstream.Msg) []*message.Message {
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
		md, err := r.Metadata()
		if err != nil {
			continue // not a stream message; cannot happen on an ordered consumer
		}
		env, err := events.Decode(r.Subject(), r.Headers(), r.Data(), md.Sequence.Stream)
		if err != nil {
			flush()
			m := message.NewMessage(watermill.NewUUID(), r.Data())
			for k, v := range r.Headers() {
				if len(v) > 0 {
					m.Metadata.Set(k, v[0])
				}
			}
			m.Metadata.Set(metaSubject, r.Subject())
			m.Metadata.Set(metaSequence, fmt.Sprint(md.Sequence.Stream))
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
	s.wg.Wait()
	return nil
}

// errPoison marks a message that no retry can apply.
var errPoison = errors.New("poison message")
