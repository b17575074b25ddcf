package eventstore_test

import (
	"context"
	"errors"
	"testing"
	"time"

	"github.com/google/uuid"
	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/identityd/identityd/events"
	"github.com/identityd/identityd/events/embedded"
	"github.com/identityd/identityd/events/eventstore"
	"github.com/identityd/identityd/events/eventstoretest"
)

// unsigned is an identityd event as a version that did not sign wrote it.
func unsigned(t *testing.T) *nats.Msg {
	t.Helper()
	m, _, err := events.Encode(eventstoretest.Signer, uuid.NewString(), time.Now().UTC(), events.Metadata{Actor: "system"}, "",
		events.UserDeleted{Versioned: events.V(), UserID: uuid.New()})
	if err != nil {
		t.Fatal(err)
	}
	for _, h := range []string{events.HeaderKeyID, events.HeaderSignature, events.HeaderMAC} {
		m.Header.Del(h)
	}
	return m
}

func openWith(t *testing.T, nc *nats.Conn, keys *events.Keyring, readOnly bool) (*eventstore.Store, error) {
	t.Helper()
	cfg := eventstore.Config{Conn: nc, Keys: keys, ReadOnly: readOnly}
	if !readOnly {
		cfg.Signer = eventstoretest.Signer
	}
	return eventstore.Open(context.Background(), cfg)
}

// TestUnsignedEventOnANewStream: identityd records, signed, that a stream it creates is
// signed from its first event, so an unsigned event published later is refused as a forgery
// and does not stop the next start.
func TestUnsignedEventOnANewStream(t *testing.T) {
	srv := eventstoretest.StartServer(t, embedded.Config{})
	nc := eventstoretest.Connect(t, srv, embedded.IdentitydUser)
	if _, err := openWith(t, nc, eventstoretest.Keys, false); err != nil {
		t.Fatal(err)
	}
	js, _ := jetstream.New(nc)
	ack, err := js.PublishMsg(context.Background(), unsigned(t))
	if err != nil || ack.Sequence != 1 {
		t.Fatalf("publish: %v %v", ack, err)
	}
	st, err := openWith(t, nc, eventstoretest.Keys, false)
	if err != nil {
		t.Fatalf("restart after an unsigned first event: %v", err)
	}
	evs, err := st.ReadAll(context.Background(), 1, 0)
	if err != nil || len(evs) != 1 || !errors.Is(evs[0].Refusal, events.ErrUnsigned) {
		t.Fatalf("read: %+v %v", evs, err)
	}
	reader, err := openWith(t, eventstoretest.Connect(t, srv, embedded.ReaderUser), eventstoretest.SignatureKeys.WithUnsignedThrough(5), true)
	if err != nil {
		t.Fatal(err)
	}
	if reader.Keys().UnsignedThrough() != 0 {
		t.Fatalf("a reader's setting overrode the stream's record: unsigned through %d", reader.Keys().UnsignedThrough())
	}
}

// TestUnsignedHistory: a stream written before identityd signed events is refused until the
// operator says where its unsigned history ends; identityd records that position in the
// stream, so later starts and readers need no setting, and unsigned events after it are refused.
func TestUnsignedHistory(t *testing.T) {
	srv := eventstoretest.StartServer(t, embedded.Config{})
	nc := eventstoretest.Connect(t, srv, embedded.IdentitydUser)
	js, _ := jetstream.New(nc)
	ctx := context.Background()
	// The stream as an older version created it: no record of where signing began.
	if _, err := js.CreateStream(ctx, jetstream.StreamConfig{Name: events.StreamName, Subjects: []string{events.SubjectRoot + ".>"},
		AllowDirect: true, AllowAtomicPublish: true, Duplicates: 2 * time.Minute}); err != nil {
		t.Fatal(err)
	}
	for range 2 {
		if _, err := js.PublishMsg(ctx, unsigned(t)); err != nil {
			t.Fatal(err)
		}
	}
	if _, err := openWith(t, nc, eventstoretest.Keys, false); !errors.Is(err, eventstore.ErrUnsignedHistory) {
		t.Fatalf("open without a setting: %v", err)
	}
	if _, err := openWith(t, nc, eventstoretest.Keys.WithUnsignedThrough(2), false); err != nil {
		t.Fatalf("open with the history's end: %v", err)
	}
	if _, err := js.PublishMsg(ctx, unsigned(t)); err != nil {
		t.Fatal(err)
	}
	for _, c := range []struct {
		name     string
		nc       *nats.Conn
		readOnly bool
	}{{"identityd", nc, false}, {"reader", eventstoretest.Connect(t, srv, embedded.ReaderUser), true}} {
		st, err := openWith(t, c.nc, eventstoretest.SignatureKeys, c.readOnly)
		if err != nil {
			t.Fatalf("%s: open with no setting: %v", c.name, err)
		}
		evs, err := st.ReadAll(ctx, 1, 0)
		if err != nil || len(evs) != 3 || evs[0].Refusal != nil || evs[1].Refusal != nil || !errors.Is(evs[2].Refusal, events.ErrUnsigned) {
			t.Fatalf("%s: %+v %v", c.name, evs, err)
		}
	}
}
