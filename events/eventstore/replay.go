package eventstore

import (
	"context"
	"fmt"
	"runtime"
	"time"

	"github.com/nats-io/nats.go/jetstream"

	"github.com/identityd/identityd/events"
)

// The replay's ordered consumer: how many messages it asks the server for at a time, how many
// times in a row it recreates itself after losing its connection or its consumer, and how long
// the server keeps it after its last activity.
const (
	replayPull     = 4096
	replayResets   = 3
	replayInactive = 30 * time.Second
)

// Replay hands the events from stream sequence `from` to `end` (inclusive) to each, in stream
// order, in batches of up to `batch` events, and returns when it has handed out `end`, when the
// stream holds nothing more to hand out (a short replay: the caller decides what that means),
// at the first error of each or of decoding, or when ctx ends. An event whose signature does
// not verify is handed out as a stub with Refusal set.
//
// It reads with one ordered consumer, not with direct gets: for reading the whole stream that
// is several times cheaper for the server and the client together (README, "Performance"),
// because the server streams the stored messages as they are instead of answering each with
// generated headers. Decoding, the
// client's main cost after that, runs on up to GOMAXPROCS goroutines, one batch each, and the
// batches are handed out in order. Rebuilds and verification read the whole stream this way;
// short reads (loads, the projection feed's bridge) keep using DirectRead, which needs no
// consumer.
func (s *Store) Replay(ctx context.Context, from, end uint64, batch int, each func([]events.Envelope) error) error {
	if from == 0 {
		from = 1
	}
	if from > end {
		return nil
	}
	if batch <= 0 {
		batch = loadBatch
	}
	ctx, cancel := context.WithCancelCause(ctx)
	defer cancel(nil)
	c, err := s.js.OrderedConsumer(ctx, s.cfg.Stream, jetstream.OrderedConsumerConfig{
		DeliverPolicy: jetstream.DeliverByStartSequencePolicy, OptStartSeq: from,
		// A lost connection or consumer is recreated a few times, not forever (the default),
		// so an outage fails the replay as it would fail a read, instead of hanging it.
		MaxResetAttempts: replayResets,
		// The server drops the consumer this long after a replay that could not delete it.
		InactiveThreshold: replayInactive,
	})
	if err != nil {
		return classify(err)
	}
	it, err := c.Messages(jetstream.PullMaxMessages(replayPull))
	if err != nil {
		return classify(err)
	}
	defer func() {
		it.Stop()
		if info := c.CachedInfo(); info != nil { // best effort: the inactive threshold is the fallback
			dctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), s.cfg.Timeout)
			_ = s.js.DeleteConsumer(dctx, s.cfg.Stream, info.Name)
			cancel()
		}
	}()
	// Canceling ctx stops the iterator, which ends a Next that waits for a consumer reset.
	defer context.AfterFunc(ctx, it.Stop)()
	if info := c.CachedInfo(); info != nil && info.NumPending == 0 {
		return nil // nothing stored at or after from
	}

	// Stages: the reader cuts the delivered messages into batches and queues each to the
	// decoders and, in the same order, its result slot to the caller's loop below.
	type result struct {
		evs []events.Envelope
		err error
	}
	type job struct {
		msgs []jetstream.Msg
		seqs []uint64
		out  chan result
	}
	workers := max(1, runtime.GOMAXPROCS(0))
	jobs := make(chan job, workers)
	order := make(chan chan result, 2*workers)
	for range workers {
		go func() {
			for j := range jobs {
				evs := make([]events.Envelope, 0, len(j.msgs))
				var err error
				for i, m := range j.msgs {
					var env events.Envelope
					if env, err = s.decode(m.Subject(), m.Headers(), m.Data(), j.seqs[i]); err != nil {
						err = fmt.Errorf("eventstore: replay: %w", err)
						break
					}
					evs = append(evs, env)
				}
				j.out <- result{evs: evs, err: err}
			}
		}()
	}
	readErr := make(chan error, 1)
	go func() {
		defer close(order)
		defer close(jobs)
		j := job{out: make(chan result, 1)}
		flush := func() bool {
			if len(j.msgs) == 0 {
				return true
			}
			select {
			case jobs <- j:
			case <-ctx.Done():
				return false
			}
			select {
			case order <- j.out:
			case <-ctx.Done():
				return false
			}
			j = job{out: make(chan result, 1)}
			return true
		}
		for {
			m, err := it.Next(jetstream.NextContext(ctx))
			if err != nil {
				if ctx.Err() == nil {
					readErr <- classify(err)
				}
				return
			}
			md, err := m.Metadata()
			if err != nil {
				readErr <- fmt.Errorf("eventstore: replay: %w", err)
				return
			}
			seq := md.Sequence.Stream
			if seq > end {
				flush()
				return
			}
			j.msgs, j.seqs = append(j.msgs, m), append(j.seqs, seq)
			last := seq == end || md.NumPending == 0
			if (len(j.msgs) == batch || last) && !flush() {
				return
			}
			if last {
				return
			}
		}
	}()
	for {
		var out chan result
		select {
		case o, ok := <-order:
			if !ok {
				select {
				case err := <-readErr:
					return err
				default:
				}
				return context.Cause(ctx)
			}
			out = o
		case <-ctx.Done():
			return context.Cause(ctx)
		}
		var r result
		select {
		case r = <-out:
		case <-ctx.Done():
			return context.Cause(ctx)
		}
		if r.err == nil && len(r.evs) > 0 {
			r.err = each(r.evs)
		}
		if r.err != nil {
			cancel(r.err)
			return r.err
		}
	}
}
