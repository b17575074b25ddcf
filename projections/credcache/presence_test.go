package credcache_test

import (
	"context"
	"testing"
	"time"

	"github.com/nats-io/nats-server/v2/server"
	"github.com/nats-io/nats.go"

	"github.com/identityd/identityd/events/embedded"
	"github.com/identityd/identityd/events/eventstoretest"
	"github.com/identityd/identityd/projections/credcache"
)

// fastPresence is PresenceConfig with timings short enough for tests, keeping the defaults'
// proportions.
func fastPresence(nc *nats.Conn) credcache.PresenceConfig {
	return credcache.PresenceConfig{Conn: nc, TTL: 1500 * time.Millisecond, Refresh: 200 * time.Millisecond,
		Grace: 600 * time.Millisecond, Margin: 100 * time.Millisecond, ViewEvery: 100 * time.Millisecond,
		Timeout: 300 * time.Millisecond}
}

func openPresence(t *testing.T, nc *nats.Conn) *credcache.Presence {
	t.Helper()
	p, err := credcache.OpenPresence(context.Background(), fastPresence(nc))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { p.Close(0) })
	return p
}

// waitUntil polls cond every millisecond for up to d and reports whether it became true.
func waitUntil(d time.Duration, cond func() bool) bool {
	for end := time.Now().Add(d); time.Now().Before(end); time.Sleep(time.Millisecond) {
		if cond() {
			return true
		}
	}
	return cond()
}

// connect connects as identityd, the registry's only writer.
func connect(t *testing.T, srv *server.Server) *nats.Conn {
	t.Helper()
	return eventstoretest.Connect(t, srv, embedded.IdentitydUser)
}

func TestPresence(t *testing.T) {
	_, srv := eventstoretest.Start(t, embedded.Config{})

	t.Run("a lone instance is alone at once and may lease after its grace", func(t *testing.T) {
		p := openPresence(t, connect(t, srv))
		if !p.Alone() {
			t.Fatal("a lone instance is not alone")
		}
		if p.MayLease() {
			t.Fatal("may lease before its grace")
		}
		if !waitUntil(2*time.Second, p.MayLease) {
			t.Fatal("may not lease after its grace")
		}
		p.Close(0)
	})

	t.Run("a joining instance is seen before it may lease, and its leaving after it stopped", func(t *testing.T) {
		first := openPresence(t, connect(t, srv))
		if !waitUntil(2*time.Second, func() bool { return first.MayLease() && first.Alone() }) {
			t.Fatal("the first instance never settled")
		}
		// The second instance runs on a connection of its own, so it can be cut off.
		nc2 := connect(t, srv)
		second := openPresence(t, nc2)
		if second.Alone() {
			t.Fatal("the second instance thinks it is alone")
		}
		// Whenever the second may lease, the first must not think itself alone.
		for end := time.Now().Add(time.Second); time.Now().Before(end); time.Sleep(time.Millisecond) {
			if second.MayLease() && first.Alone() {
				t.Fatal("the first instance is alone while the second may lease")
			}
		}
		if !second.MayLease() || first.Alone() {
			t.Fatalf("after the grace: second may lease %v, first alone %v", second.MayLease(), first.Alone())
		}

		// Cut the second off: its registration lapses. It must stop leasing before the first
		// thinks itself alone again.
		nc2.Close()
		var lastLease, firstAlone time.Time
		for end := time.Now().Add(4 * time.Second); time.Now().Before(end) && firstAlone.IsZero(); time.Sleep(time.Millisecond) {
			if second.MayLease() {
				lastLease = time.Now()
			}
			if first.Alone() {
				firstAlone = time.Now()
			}
		}
		if firstAlone.IsZero() {
			t.Fatal("the first instance never noticed the second was gone")
		}
		if !lastLease.Before(firstAlone) {
			t.Fatalf("the second could lease at %s, after the first thought itself alone at %s", lastLease.Format(time.StampMicro), firstAlone.Format(time.StampMicro))
		}
	})

	t.Run("closing removes the registration at once", func(t *testing.T) {
		first := openPresence(t, connect(t, srv))
		second := openPresence(t, connect(t, srv))
		// The first's view predates the second: it sees it at its next view, well within the
		// second's grace.
		if second.Alone() || !waitUntil(500*time.Millisecond, func() bool { return !first.Alone() }) {
			t.Fatal("two instances, one thinks it is alone")
		}
		second.Close(10 * time.Millisecond)
		if second.MayLease() {
			t.Fatal("a closed instance may lease")
		}
		// Well before the registration would expire (TTL 1.5s).
		if !waitUntil(500*time.Millisecond, first.Alone) {
			t.Fatal("the remaining instance is not alone after the other closed")
		}
	})
}

func TestPresenceNotAloneWithoutFreshViews(t *testing.T) {
	_, srv := eventstoretest.Start(t, embedded.Config{})
	nc := connect(t, srv)
	p := openPresence(t, nc)
	if !p.Alone() {
		t.Fatal("a lone instance is not alone")
	}
	nc.Close() // no more views
	// Grace - Margin = 500ms after the last view at most.
	if !waitUntil(time.Second, func() bool { return !p.Alone() }) {
		t.Fatal("still alone a second after its views stopped")
	}
}

func TestPresenceAdoptsTheRegistrysTTL(t *testing.T) {
	_, srv := eventstoretest.Start(t, embedded.Config{})
	openPresence(t, connect(t, srv)) // creates the registry with a 1.5s TTL
	// Timings that fit a 10s TTL but not the registry's 1.5s: refused, not silently unsafe.
	cfg := credcache.PresenceConfig{Conn: connect(t, srv), TTL: 10 * time.Second}
	if _, err := credcache.OpenPresence(context.Background(), cfg); err == nil {
		t.Fatal("timings that do not fit the registry's TTL were accepted")
	}
}

func TestPresenceDefaults(t *testing.T) {
	_, srv := eventstoretest.Start(t, embedded.Config{})
	p, err := credcache.OpenPresence(context.Background(), credcache.PresenceConfig{Conn: connect(t, srv)})
	if err != nil {
		t.Fatal(err)
	}
	defer p.Close(0)
	if !p.Alone() || p.MayLease() {
		t.Fatalf("a new lone instance: alone %v (want true), may lease %v (want false during its grace)", p.Alone(), p.MayLease())
	}
}

func TestPresenceConfigValidate(t *testing.T) {
	for name, cfg := range map[string]credcache.PresenceConfig{
		"no connection":            {TTL: time.Second},
		"refresh too slow for TTL": {Conn: &nats.Conn{}, TTL: 3 * time.Second, Refresh: 2 * time.Second, Margin: time.Second, Timeout: time.Second, Grace: 3 * time.Second, ViewEvery: 100 * time.Millisecond},
		"view too slow for grace":  {Conn: &nats.Conn{}, TTL: 10 * time.Second, Refresh: time.Second, Margin: time.Second, Timeout: time.Second, Grace: 2 * time.Second, ViewEvery: 500 * time.Millisecond},
	} {
		if _, err := credcache.OpenPresence(context.Background(), cfg); err == nil {
			t.Errorf("%s: accepted", name)
		}
	}
}
