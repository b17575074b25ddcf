package projections

import (
	"context"
	"fmt"
	"strings"

	"github.com/ThreeDotsLabs/watermill/message"
	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
)

// PoisonStream keeps events a projection could not decode, for operators to inspect; the
// original stays untouched in the event stream.
const PoisonStream = "IDENTITYD_POISON"

// poisonPublisher is the Watermill publisher behind the poison-queue middleware: it stores
// each poison message, with its metadata as headers, in PoisonStream.
type poisonPublisher struct {
	js jetstream.JetStream
}

func newPoisonPublisher(ctx context.Context, js jetstream.JetStream) (*poisonPublisher, error) {
	_, err := js.CreateOrUpdateStream(ctx, jetstream.StreamConfig{
		Name:        PoisonStream,
		Description: "events identityd's projections could not decode",
		Subjects:    []string{"identityd.poison.>"},
		Storage:     jetstream.FileStorage,
	})
	if err != nil {
		return nil, fmt.Errorf("poison stream: %w", err)
	}
	return &poisonPublisher{js: js}, nil
}

// Publish implements message.Publisher.
func (p *poisonPublisher) Publish(topic string, msgs ...*message.Message) error {
	for _, m := range msgs {
		nm := nats.NewMsg(topic)
		nm.Data = m.Payload
		for k, v := range m.Metadata {
			// The original's Nats-* headers (expectations, batch, message id) would be
			// enforced again on this publish and make it fail forever.
			if !strings.HasPrefix(strings.ToLower(k), "nats-") {
				nm.Header.Set(k, v)
			}
		}
		if _, err := p.js.PublishMsg(context.Background(), nm, jetstream.WithMsgID("poison-"+m.Metadata.Get(metaSequence))); err != nil {
			return err
		}
	}
	return nil
}

// Close implements message.Publisher.
func (p *poisonPublisher) Close() error { return nil }
