package main

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"time"

	"github.com/nats-io/nats.go/jetstream"

	"github.com/identityd/identityd/events"
)

// run consumes the stream until ctx is canceled (then it returns nil) or something needs a
// human or a restart (then it returns the error). It starts from the state file every time, so
// after any error the safe recovery is simply to run again.
func run(ctx context.Context, js jetstream.JetStream, cfg config) error {
	if cfg.Keys == nil {
		return errors.New("no event public keys to verify events with")
	}
	if cfg.Stream == "" {
		cfg.Stream = events.StreamName
	}
	if cfg.AckWait <= 0 {
		cfg.AckWait = 30 * time.Second
	}
	log := cfg.Logger
	if log == nil {
		log = slog.Default()
	}
	log = log.With("durable", cfg.Durable)

	p, err := openProvisioner(cfg.StatePath, log)
	if err != nil {
		return err
	}

	stream, err := js.Stream(ctx, cfg.Stream)
	if errors.Is(err, jetstream.ErrStreamNotFound) {
		return fmt.Errorf("stream %s not found: start identityd first (it creates the stream): %w", cfg.Stream, err)
	}
	if err != nil {
		return fmt.Errorf("stream %s: %w", cfg.Stream, err)
	}
	// The stream is append-only (deletes and purges are denied), so a state file ahead of the
	// stream means it belongs to another stream, e.g. a wiped development server.
	if last := stream.CachedInfo().State.LastSeq; p.st.LastSeq > last {
		return fmt.Errorf("state file %s is at seq %d but stream %s ends at %d: it belongs to another stream; "+
			"remove it (and the consumer) to rebuild", cfg.StatePath, p.st.LastSeq, cfg.Stream, last)
	}

	// A durable consumer remembers, on the server, what this subscriber has acked, so a restart
	// continues where it stopped. CreateOrUpdateConsumer is idempotent: the first start creates
	// it, later starts find it.
	cons, err := stream.CreateOrUpdateConsumer(ctx, jetstream.ConsumerConfig{
		Durable:     cfg.Durable,
		Description: "example-subscriber: mailing list provisioner",
		// DeliverAll: a consumer created today still receives every event since the first one.
		// A mailing list built from "new events only" would miss everyone who signed up
		// before it started.
		DeliverPolicy: jetstream.DeliverAllPolicy,
		// AckExplicit: the server redelivers any message we have not acked within AckWait
		// (crash, lost ack, stuck handler). That is at-least-once delivery; the sequence check
		// in handle turns it into exactly-once in effect.
		AckPolicy:      jetstream.AckExplicitPolicy,
		AckWait:        cfg.AckWait,
		FilterSubjects: filterSubjects,
		// One message in flight at a time: events of a user are applied in stream order (a
		// rename can never overtake the registration), even when one is redelivered.
		MaxAckPending: 1,
		MaxDeliver:    -1, // never give up on an event: skipping one would corrupt the list
	})
	if err != nil {
		return fmt.Errorf("consumer %s: %w", cfg.Durable, err)
	}
	info := cons.CachedInfo()
	// The reverse mismatch: the server says this durable has already acked messages, but the
	// state file is empty (deleted, or a fresh disk). The server would resume after its ack
	// floor and the list would silently miss everyone before it. Refuse.
	if p.st.LastSeq == 0 && info.AckFloor.Consumer > 0 {
		return fmt.Errorf("state file %s is empty but durable %q has already acked %d messages: the state was lost; "+
			"delete the consumer (nats consumer rm %s %s) or use a new --durable to rebuild from the full history",
			cfg.StatePath, cfg.Durable, info.AckFloor.Consumer, cfg.Stream, cfg.Durable)
	}
	log.Info("consuming", "stream", cfg.Stream, "state", cfg.StatePath, "last_applied_seq", p.st.LastSeq,
		"accounts", len(p.st.Accounts), "pending", info.NumPending+uint64(info.NumAckPending)) //nolint:gosec // a count, never negative

	// Messages is a pull iterator: we ask for the next message only when done with the last.
	it, err := cons.Messages(jetstream.PullMaxMessages(1))
	if err != nil {
		return fmt.Errorf("consume: %w", err)
	}
	defer it.Stop()
	for {
		msg, err := it.Next(jetstream.NextContext(ctx))
		if err != nil {
			if ctx.Err() != nil {
				return nil // SIGINT/SIGTERM (or the test) asked us to stop
			}
			if errors.Is(err, jetstream.ErrNoHeartbeat) {
				// The server went quiet (outage, reconnect). The iterator re-issues its pull
				// request by itself; nothing is lost since nothing was acked.
				log.Warn("no heartbeat from the server; waiting", "err", err)
				continue
			}
			return fmt.Errorf("next message: %w", err)
		}
		if ctx.Err() != nil {
			// Asked to stop while a message was already on its way: leave it unacked, the
			// next run gets it. (Next may hand over a buffered message after cancellation.)
			return nil
		}
		if err := p.handle(ctx, msg, cfg); err != nil {
			return err
		}
	}
}

// handle applies one message exactly once in effect. The order of the steps is the whole
// point:
//
//  1. seq <= LastSeq: already applied. We get here when the previous run wrote the state
//     file but crashed (or lost the connection) before the server recorded its ack, so the
//     server redelivered. Applying again would double-apply; ack it so it stops coming back.
//  2. Decode and apply in memory.
//  3. Save the state, data and LastSeq together, atomically, BEFORE acking. A crash before the
//     save leaves the old file and an unacked message: it is redelivered and applied then. A
//     crash after the save but before the ack leaves the new file and an unacked message: it
//     is redelivered and skipped by step 1. Either way it is applied exactly once.
//  4. Ack. A lost ack is harmless for the same reason.
//
// Acking first and saving second would be at-most-once: a crash in between loses the event.
func (p *provisioner) handle(ctx context.Context, msg jetstream.Msg, cfg config) error {
	md, err := msg.Metadata()
	if err != nil {
		return fmt.Errorf("message without JetStream metadata: %w", err)
	}
	seq := md.Sequence.Stream // the event's position in the stream, the same on every delivery

	if seq <= p.st.LastSeq { // 1.
		p.log.Info("already applied; acking the redelivery", "seq", seq, "deliveries", md.NumDelivered)
		if cfg.onSkip != nil {
			cfg.onSkip(seq)
		}
		p.ack(ctx, msg, seq)
		return nil
	}

	env, err := cfg.Keys.Decode(msg.Subject(), msg.Headers(), msg.Data(), seq) // 2.
	if events.IsRefused(err) {
		// Not identityd's event: someone with publish rights wrote it without the signing key.
		// Never apply it; terminate it so it is not redelivered, and tell the operator.
		p.log.Error("refused an event whose signature does not verify; not applied", "seq", seq, "subject", msg.Subject(), "err", err)
		if cfg.onRefused != nil {
			cfg.onRefused(seq)
		}
		if err := msg.Term(); err != nil {
			p.log.Warn("terminating the refused event failed; it will be redelivered and refused again", "seq", seq, "err", err)
		}
		return nil
	}
	if err != nil {
		// A newer schema or event type this build cannot read. Skipping it could drop an
		// unsubscription, so stop with the message unacked: after an upgrade, the restarted
		// subscriber gets it again.
		return fmt.Errorf("cannot decode the event at seq %d (upgrade this subscriber?): %w", seq, err)
	}
	if err := p.apply(env); err != nil {
		return err
	}

	if err := p.save(); err != nil { // 3.
		// The in-memory state is now ahead of the file; stop, and let a restart reload the
		// file and get this message again.
		return err
	}
	if cfg.afterSave != nil {
		if err := cfg.afterSave(seq); err != nil {
			return err // a simulated crash: state written, ack never sent
		}
	}

	p.ack(ctx, msg, seq) // 4.
	return nil
}

// ack acks and waits for the server to confirm. It is deliberately not canceled with ctx:
// on SIGTERM the message in hand is finished, ack included. A failure is only logged: the state
// file already records the event, so the redelivery will be skipped.
func (p *provisioner) ack(ctx context.Context, msg jetstream.Msg, seq uint64) {
	actx, cancel := context.WithTimeout(context.WithoutCancel(ctx), 5*time.Second)
	defer cancel()
	if err := msg.DoubleAck(actx); err != nil {
		p.log.Warn("ack failed; the message will be redelivered and skipped", "seq", seq, "err", err)
	}
}
