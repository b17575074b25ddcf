package main

import (
	"context"
	"flag"
	"fmt"
	"strings"

	"github.com/google/uuid"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/identityd/identityd/events"
)

// subjectFilter narrows the stream to one user's events and/or one event type.
func subjectFilter(user, typ string) (string, error) {
	aggID, kind, suffix := "*", "*", "*"
	if user != "" {
		id, err := uuid.Parse(user)
		if err != nil {
			return "", usageError{"--user must be a user UUID"}
		}
		aggID, kind = id.String(), "user"
	}
	if typ != "" {
		if events.CurrentVersion(events.Type(typ)) == 0 {
			return "", usageError{fmt.Sprintf("--type: unknown event type %q", typ)}
		}
		parts := strings.Split(typ, ".") // identityd.<kind>.<event>
		if kind == "user" && parts[1] != "user" {
			return "", usageError{"--type " + typ + " is not a user event"}
		}
		kind, suffix = parts[1], parts[2]
	}
	if aggID == "*" && kind == "*" && suffix == "*" {
		return events.SubjectRoot + ".>", nil
	}
	return strings.Join([]string{events.SubjectRoot, kind, aggID, suffix}, "."), nil
}

// refused notes on stderr an event skipped because its signature does not verify.
func (c *cli) refused(e events.Envelope) {
	fmt.Fprintf(c.stderr, "identityctl: skipping event %d on %s, refused: %v\n", e.Sequence, e.NATSSubj, e.Refusal)
}

func (c *cli) print(e events.Envelope) error {
	ce, err := events.ToCloudEvent(e)
	if err != nil {
		return err
	}
	return c.out.Encode(ce)
}

// eventsTail follows the stream live, one JSON line per event.
func (c *cli) eventsTail(ctx context.Context, args []string) error {
	var user, typ string
	var fromStart bool
	var count int
	pos, err := subFlags("events tail", args, func(fs *flag.FlagSet) {
		fs.StringVar(&user, "user", "", "")
		fs.StringVar(&typ, "type", "", "")
		fs.BoolVar(&fromStart, "from-start", false, "")
		fs.IntVar(&count, "count", 0, "")
	})
	if err != nil {
		return err
	}
	if len(pos) > 0 {
		return usageError{"events tail takes no arguments"}
	}
	filter, err := subjectFilter(user, typ)
	if err != nil {
		return err
	}
	st, err := c.events(ctx)
	if err != nil {
		return err
	}
	policy := jetstream.DeliverNewPolicy
	if fromStart {
		policy = jetstream.DeliverAllPolicy
	}
	cons, err := st.JetStream().OrderedConsumer(ctx, st.StreamName(), jetstream.OrderedConsumerConfig{
		FilterSubjects: []string{filter}, DeliverPolicy: policy,
	})
	if err != nil {
		return err
	}
	msgs, err := cons.Messages()
	if err != nil {
		return err
	}
	go func() { <-ctx.Done(); msgs.Stop() }()
	for n := 0; count == 0 || n < count; {
		m, err := msgs.Next()
		if err != nil {
			if ctx.Err() != nil {
				return ctx.Err()
			}
			return err
		}
		md, err := m.Metadata()
		if err != nil {
			return err
		}
		env, err := st.Keys().Decode(m.Subject(), m.Headers(), m.Data(), md.Sequence.Stream)
		if events.IsRefused(err) {
			c.refused(env)
			continue
		}
		if err != nil {
			fmt.Fprintln(c.stderr, "identityctl: skipping undecodable event:", err)
			continue
		}
		if err := c.print(env); err != nil {
			return err
		}
		n++
	}
	msgs.Stop()
	return nil
}

// eventsExport writes the stream (or a window of it) as JSON Lines and stops at its end.
func (c *cli) eventsExport(ctx context.Context, args []string) error {
	var sinceS, untilS, user, typ string
	pos, err := subFlags("events export", args, func(fs *flag.FlagSet) {
		fs.StringVar(&sinceS, "since", "", "")
		fs.StringVar(&untilS, "until", "", "")
		fs.StringVar(&user, "user", "", "")
		fs.StringVar(&typ, "type", "", "")
	})
	if err != nil {
		return err
	}
	if len(pos) > 0 {
		return usageError{"events export takes no arguments"}
	}
	since, err := parseTime("since", sinceS)
	if err != nil {
		return err
	}
	until, err := parseTime("until", untilS)
	if err != nil {
		return err
	}
	filter, err := subjectFilter(user, typ)
	if err != nil {
		return err
	}
	st, err := c.events(ctx)
	if err != nil {
		return err
	}
	end, err := st.LastSequence(ctx)
	if err != nil {
		return err
	}
	from := uint64(1)
	if !since.IsZero() {
		if from, err = st.SequenceAt(ctx, since); err != nil {
			return err
		}
	}
	prog := c.newProgress("export")
	defer prog.done()
	for from <= end {
		batch, err := st.Read(ctx, filter, from, 1000)
		if err != nil {
			return err
		}
		if len(batch) == 0 {
			break
		}
		for _, e := range batch {
			if e.Sequence > end || (!until.IsZero() && !e.Time.Before(until)) {
				return nil
			}
			if e.Refusal != nil {
				c.refused(e)
				continue
			}
			if e.Time.Before(since) {
				continue
			}
			if err := c.print(e); err != nil {
				return err
			}
		}
		from = batch[len(batch)-1].Sequence + 1
		prog.update(from-1, end)
		if err := ctx.Err(); err != nil {
			return err
		}
	}
	return nil
}
