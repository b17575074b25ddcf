package engine

import (
	"context"
	"errors"
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

// Publish implements message.Publisher. A copy that the server refuses (the original's
// headers and payload may be near the size limit, and the copy adds to them) is replaced by a
// short record naming the original's position, which stays in the event stream: a poison
// message must never stall the projection behind it.
func (p *poisonPublisher) Publish(topic string, msgs ...*message.Message) error {
	for _, m := range msgs {
		id := jetstream.WithMsgID("poison-" + m.Metadata.Get(metaSequence))
		nm := nats.NewMsg(topic)
		nm.Data = m.Payload
		for k, v := range m.Metadata {
			// The original's Nats-* headers (expectations, batch, message id) would be
			// enforced again on this publish and make it fail forever.
			if !strings.HasPrefix(strings.ToLower(k), "nats-") {
				nm.Header.Set(k, v)
			}
		}
		_, err := p.js.PublishMsg(context.Background(), nm, id)
		var apiErr *jetstream.APIError
		if errors.As(err, &apiErr) || errors.Is(err, nats.ErrMaxPayload) {
			short := nats.NewMsg(topic)
			short.Header.Set(metaSubject, truncate(m.Metadata.Get(metaSubject), 256))
			short.Header.Set(metaSequence, m.Metadata.Get(metaSequence))
			short.Header.Set(metaError, truncate(m.Metadata.Get(metaError), 1024))
			short.Header.Set("payload_omitted", "the copy was too large; read the original at stream_sequence")
			_, err = p.js.PublishMsg(context.Background(), short, id)
		}
		if err != nil {
			return err
		}
	}
	return nil
}

func truncate(s string, n int) string {
	if len(s) <= n {
		return s
	}
	return s[:n]
}

// Close implements message.Publisher.
func (p *poisonPublisher) Close() error { return nil }
