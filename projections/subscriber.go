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
	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/identityd/identityd/events"
	"github.com/identityd/identityd/events/eventstore"
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
	want      atomic.Uint64 // the highest stream sequence a caller waits to see projected
	arrived   func(Arrival) // sees every event handed on, and each start, in stream order
	keys      *events.Keyring
	refused   func(seq uint64, subject string, err error) // sees each event refused by signature verification
	nudge     chan struct{}                               // wakes the bridge when a caller starts waiting
}

// waitingFor tells the feed that a caller waits for the event at seq: if the consumer stays
// silent while it waits, the feed reads the stream directly.
func (s *streamSubscriber) waitingFor(seq uint64) {
	for {
		cur := s.want.Load()
		if seq <= cur {
			return
		}
		if s.want.CompareAndSwap(cur, seq) {
			select {
			case s.nudge <- struct{}{}:
			default:
			}
			return
		}
	}
}

// rawEvent is one stream message as the feed hands it on, whichever way it was read.
type rawEvent struct {
	subject string
	seq     uint64
	header  nats.Header
	data    []byte
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
	if s.arrived != nil {
		s.arrived(Arrival{Seq: pos, Restart: true})
	}
	in := make(chan rawEvent, 4*s.maxBatch)
	f := &feed{s: s, topic: topic, in: in}
	f.lastSeen.Store(pos)
	cc, err := f.consume(ctx)
	if err != nil {
		return nil, err
	}
	s.wg.Add(2)
	go func() {
		defer s.wg.Done()
		f.watch(ctx, cc)
	}()
	go func() {
		defer s.wg.Done()
		f.bridge(ctx)
	}()
	out := make(chan *message.Message)
	s.wg.Add(1)
	handed := pos // the last stream sequence passed on to the router
	go func() {
		defer s.wg.Done()
		defer close(out)
		for {
			var first rawEvent
			select {
			case first = <-in:
			case <-ctx.Done():
				return
			case <-s.closing:
				return
			}
			raw := []rawEvent{first}
		drain:
			for len(raw) < s.maxBatch {
				select {
				case m := <-in:
					raw = append(raw, m)
				default:
					break drain
				}
			}
			var fresh []rawEvent
			for _, m := range raw {
				// Belt and braces: the feed already passes each stream sequence on once, in
				// increasing order.
				if m.seq > handed {
					handed = m.seq
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

// feed keeps an ordered consumer delivering into in, replaces it when it stalls, and bridges
// the gap by reading the stream directly meanwhile.
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
type feed struct {
	s        *streamSubscriber
	topic    string
	in       chan rawEvent
	pushMu   sync.Mutex    // serializes push: check, hand over, record
	gen      atomic.Int64  // the current consumer's generation
	lastSeen atomic.Uint64 // stream sequence of the last message handed to in
	lastAt   atomic.Int64  // when it was handed (unix nanoseconds)
	sending  atomic.Bool   // a delivery is waiting for room in `in`
	bridging atomic.Bool   // the bridge handed on the last event: the consumer is presumed lost
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
	// waits, so events appended by other instances are projected while a consumer is lost.
	probeEvery = 2 * time.Second
	// bridgeRounds bounds the direct-get batches of one bridging round, so the consumer gets
	// a chance to take over again.
	bridgeRounds = 20
)

// push hands ev on unless a sequence at or after it was already handed on. Each source (a
// consumer, the bridge) reads the stream in order without gaps from a start at or before
// lastSeen+1, so under the mutex the sequences handed on are each stream event once, in order.
func (f *feed) push(ev rawEvent, direct bool) bool {
	f.pushMu.Lock()
	defer f.pushMu.Unlock()
	if ev.seq <= f.lastSeen.Load() {
		return true // already delivered by the other source
	}
	if f.s.arrived != nil {
		// Before the hand-over, which may wait for the projector: observers (the credential
		// cache) learn of the event as soon as it is here, not after the batches ahead of it.
		f.s.arrived(Arrival{Seq: ev.seq, Subject: ev.subject})
	}
	f.sending.Store(true) // a full channel is backpressure, not a stall
	defer f.sending.Store(false)
	select {
	case f.in <- ev:
		f.lastSeen.Store(ev.seq)
		f.lastAt.Store(time.Now().UnixNano())
		f.bridging.Store(direct)
		return true
	case <-f.s.closing:
		return false
	}
}

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
		if err != nil || f.gen.Load() != gen {
			return // from a replaced consumer
		}
		f.push(rawEvent{subject: m.Subject(), seq: md.Sequence.Stream, header: m.Headers(), data: m.Data()}, false)
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

// bridge reads the stream directly while the consumer is silent and a caller waits for an
// event it has not delivered, and probes now and then while it is silent at all.
func (f *feed) bridge(ctx context.Context) {
	tick := time.NewTicker(100 * time.Millisecond)
	defer tick.Stop()
	var lastProbe time.Time
	for {
		select {
		case <-ctx.Done():
			return
		case <-f.s.closing:
			return
		case <-tick.C:
		case <-f.s.nudge:
		}
		if f.sending.Load() {
			continue
		}
		silent := time.Since(time.Unix(0, f.lastAt.Load()))
		waiting := f.s.want.Load() > f.lastSeen.Load()
		// Once the bridge carries the feed, a waiting caller is served at once, not after
		// another silence: until the consumer hands on an event again.
		serveWaiting := waiting && (silent >= bridgeAfter || f.bridging.Load())
		probe := silent >= probeEvery && time.Since(lastProbe) >= probeEvery
		if !serveWaiting && !probe {
			continue
		}
		lastProbe = time.Now()
		from := f.lastSeen.Load() + 1
		n, err := f.readDirect(ctx)
		switch {
		case err != nil && waiting:
			f.s.logger.Error("projection feed: direct read failed; retrying", err, watermill.LogFields{"from_seq": from})
		case n > 0:
			f.s.logger.Info("projection feed: consumer silent; read events directly", watermill.LogFields{"from_seq": from, "events": n})
		}
	}
}

// errFeedClosed stops a direct read when the subscriber closes.
var errFeedClosed = errors.New("projection feed closed")

// readDirect hands on the events after lastSeen with batched direct gets, up to bridgeRounds
// batches, and returns how many it read.
func (f *feed) readDirect(ctx context.Context) (int, error) {
	ctx, cancel := context.WithTimeout(ctx, 2*time.Second)
	defer cancel()
	read := 0
	err := eventstore.DirectRead(ctx, f.s.js.Conn(), f.s.stream, f.topic, f.lastSeen.Load()+1, f.s.maxBatch, bridgeRounds*f.s.maxBatch,
		func(m *nats.Msg, seq uint64) error {
			if !f.push(rawEvent{subject: m.Header.Get(jetstream.SubjectHeader), seq: seq, header: m.Header, data: m.Data}, true) {
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

// messages verifies and decodes raw messages into batches; an undecodable or refused one
// (signature) travels alone as a poison message (payload and headers kept) so it ends in the
// poison queue instead of blocking, and is never applied.
func (s *streamSubscriber) messages(ctx context.Context, raw []rawEvent) []*message.Message {
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
		env, err := s.keys.Decode(r.subject, r.header, r.data, r.seq)
		if err != nil {
			if events.IsRefused(err) && s.refused != nil {
				s.refused(r.seq, r.subject, err)
			}
			flush()
			m := message.NewMessage(watermill.NewUUID(), r.data)
			for k, v := range r.header {
				if len(v) > 0 {
					m.Metadata.Set(k, v[0])
				}
			}
			m.Metadata.Set(metaSubject, r.subject)
			m.Metadata.Set(metaSequence, fmt.Sprint(r.seq))
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
