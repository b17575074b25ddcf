package eventstore_test

import (
	"context"
	"errors"
	"strconv"
	"strings"
	"testing"

	"github.com/google/uuid"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/identityd/identityd/events"
	"github.com/identityd/identityd/events/eventstore"
	"github.com/identityd/identityd/events/eventstoretest"
)

// TestReplay: a replay hands out exactly the events of its range, in order, in batches of the
// size asked, the same events a direct read returns; it ends quietly short of an end the stream
// has not reached, stops at the caller's error, and names the sequence it cannot decode.
func TestReplay(t *testing.T) {
	st := openStore(t)
	ctx := context.Background()
	var last uint64
	for i := range 25 {
		id := uuid.New()
		seq, err := st.Append(ctx, events.Metadata{Actor: "system"}, []events.Expectation{{Aggregate: events.UserAggregate(id)}},
			[]events.Change{change(events.UserRegistered{Versioned: events.V(), UserID: id, Email: id.String() + "@b.co", Name: "U" + string(rune('a'+i))})})
		if err != nil {
			t.Fatal(err)
		}
		last = seq
	}
	want, err := st.ReadAll(ctx, 1, 0)
	if err != nil || uint64(len(want)) != last {
		t.Fatalf("read %d events (%v), want %d", len(want), err, last)
	}
	replay := func(from, end uint64, batch int) ([]events.Envelope, []int, error) {
		var got []events.Envelope
		var sizes []int
		err := st.Replay(ctx, from, end, batch, func(evs []events.Envelope) error {
			got = append(got, evs...)
			sizes = append(sizes, len(evs))
			return nil
		})
		return got, sizes, err
	}

	got, sizes, err := replay(1, last, 4)
	if err != nil || len(got) != len(want) {
		t.Fatalf("whole stream: %d events (%v), want %d", len(got), err, len(want))
	}
	for i := range got {
		if got[i].Sequence != want[i].Sequence || got[i].ID != want[i].ID || got[i].Type != want[i].Type {
			t.Fatalf("event %d: replayed seq %d id %s, read seq %d id %s", i, got[i].Sequence, got[i].ID, want[i].Sequence, want[i].ID)
		}
	}
	for i, n := range sizes {
		if n > 4 || (i < len(sizes)-1 && n != 4) {
			t.Fatalf("batch sizes %v, want 4s and a last one of at most 4", sizes)
		}
	}

	if got, _, err = replay(10, 20, 3); err != nil || len(got) != 11 || got[0].Sequence != 10 || got[10].Sequence != 20 {
		t.Fatalf("range 10..20: %d events (%v)", len(got), err)
	}
	if got, _, err = replay(last-2, last+100, 10); err != nil || len(got) != 3 {
		t.Fatalf("end beyond the stream: %d events (%v), want the last 3 and no error", len(got), err)
	}
	if got, _, err = replay(last+1, last+5, 10); err != nil || len(got) != 0 {
		t.Fatalf("from beyond the stream: %d events (%v), want none", len(got), err)
	}

	stop := errors.New("stop here")
	calls := 0
	err = st.Replay(ctx, 1, last, 2, func([]events.Envelope) error { calls++; return stop })
	if !errors.Is(err, stop) || calls != 1 {
		t.Fatalf("caller's error: %v after %d calls, want it after 1", err, calls)
	}

	cctx, cancel := context.WithCancel(ctx)
	err = st.Replay(cctx, 1, last, 2, func([]events.Envelope) error { cancel(); return nil })
	if !errors.Is(err, context.Canceled) {
		t.Fatalf("canceled replay: %v, want context.Canceled", err)
	}

	js, err := jetstream.New(st.Conn())
	if err != nil {
		t.Fatal(err)
	}
	stream, err := js.Stream(ctx, "IDENTITY")
	if err != nil {
		t.Fatal(err)
	}
	info, err := stream.Info(ctx)
	if err != nil || info.State.Consumers != 0 {
		t.Fatalf("%d consumers left behind by the replays (%v), want 0", info.State.Consumers, err)
	}
	ack, err := js.Publish(ctx, events.SubjectRoot+".user."+uuid.NewString()+".renamed", []byte("not an event"))
	if err != nil {
		t.Fatal(err)
	}
	// Unsigned, it is not identityd's: the replay hands it out as a refused stub and goes on.
	stubbed, _, err := replay(1, ack.Sequence, 100)
	if err != nil || uint64(len(stubbed)) != ack.Sequence || stubbed[len(stubbed)-1].Refusal == nil || stubbed[len(stubbed)-1].Data != nil ||
		!errors.Is(stubbed[len(stubbed)-1].Refusal, events.ErrUnsigned) {
		t.Fatalf("unsigned event at %d: %d events, %v", ack.Sequence, len(stubbed), err)
	}
	// Accepted as legacy (unsigned history: a stream with no record of where signing began,
	// as an older version left it), it cannot be decoded: the replay stops, naming it.
	cfg := stream.CachedInfo().Config
	cfg.Metadata = nil
	if _, err := js.UpdateStream(ctx, cfg); err != nil {
		t.Fatal(err)
	}
	legacy, err := eventstore.Open(ctx, eventstore.Config{Conn: st.Conn(), ReadOnly: true, Keys: events.NewKeyring(ack.Sequence, eventstoretest.Signer.PublicKey())})
	if err != nil {
		t.Fatal(err)
	}
	err = legacy.Replay(ctx, 1, ack.Sequence, 100, func([]events.Envelope) error { return nil })
	if err == nil || !strings.Contains(err.Error(), strconv.FormatUint(ack.Sequence, 10)) {
		t.Fatalf("undecodable event at %d: %v, want an error naming it", ack.Sequence, err)
	}
}
