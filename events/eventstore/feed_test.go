package eventstore_test

import (
	"context"
	"fmt"
	"sync"
	"testing"
	"time"

	"github.com/nats-io/nats.go/jetstream"

	"github.com/identityd/identityd/events"
	"github.com/identityd/identityd/events/embedded"
	"github.com/identityd/identityd/events/eventstore"
	"github.com/identityd/identityd/events/eventstoretest"
)

// publishN appends n raw messages to the stream (the feed does not decode) and returns the
// last sequence.
func publishN(t *testing.T, js jetstream.JetStream, n int) uint64 {
	t.Helper()
	var last uint64
	for i := range n {
		ack, err := js.Publish(context.Background(), fmt.Sprintf("%s.user.feedtest%d.Probe", events.SubjectRoot, i%7), []byte(fmt.Sprint(i)))
		if err != nil {
			t.Fatal(err)
		}
		last = ack.Sequence
	}
	return last
}

// collect reads from the feed until it handed on `last`, and checks every sequence from
// first to last came exactly once and in order.
func collect(t *testing.T, f *eventstore.Subscription, first, last uint64, within time.Duration) {
	t.Helper()
	want := first
	deadline := time.After(within)
	for want <= last {
		select {
		case ev := <-f.In():
			if ev.Seq != want {
				t.Fatalf("feed handed on sequence %d, want %d", ev.Seq, want)
			}
			want++
		case <-deadline:
			t.Fatalf("feed stopped at %d of %d after %s", want-1, last, within)
		}
	}
	select {
	case ev := <-f.In():
		t.Fatalf("feed handed on %d after the last event %d", ev.Seq, last)
	case <-time.After(50 * time.Millisecond):
	}
}

// TestFeedBridgesALostConsumer: with no consumer at all (as when the node that hosted it died
// and no new one can be created yet), a caller waiting for an event still gets the stream,
// read directly, within about a second.
func TestFeedBridgesALostConsumer(t *testing.T) {
	st, _ := eventstoretest.Start(t, embedded.Config{})
	js := st.JetStream()
	last := publishN(t, js, 1200)
	f := eventstore.NewTestSubscription(js, 100)
	defer f.Feed().Close()
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	var wg sync.WaitGroup
	wg.Go(func() { f.Bridge(ctx) })
	defer wg.Wait()
	defer cancel()

	start := time.Now()
	f.Feed().WaitingFor(last)
	collect(t, f, 1, last, 5*time.Second)
	t.Logf("bridged %d events in %s", last, time.Since(start).Round(time.Millisecond))

	// Appended later and nobody waits: the periodic probe still picks them up.
	more := publishN(t, js, 10)
	collect(t, f, last+1, more, 3*eventstore.ProbeEvery)
}

// TestFeedTwoSourcesHandOnEachEventOnce: a consumer and direct reads running at the same time
// over the same range hand on each sequence once, in order.
func TestFeedTwoSourcesHandOnEachEventOnce(t *testing.T) {
	st, _ := eventstoretest.Start(t, embedded.Config{})
	js := st.JetStream()
	last := publishN(t, js, 2000)
	f := eventstore.NewTestSubscription(js, 50)
	defer f.Feed().Close()
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	cc, err := f.Consume(ctx)
	if err != nil {
		t.Fatal(err)
	}
	defer cc.Stop()
	var wg sync.WaitGroup
	for range 3 {
		wg.Go(func() {
			for f.LastSeen() < last && ctx.Err() == nil {
				if _, err := f.ReadDirect(ctx); err != nil && ctx.Err() == nil {
					t.Error(err)
					return
				}
			}
		})
	}
	collect(t, f, 1, last, 10*time.Second)
	cancel()
	wg.Wait()
}
