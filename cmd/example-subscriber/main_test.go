package main

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"io"
	"log/slog"
	"maps"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/google/uuid"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/identityd/identityd/events"
	"github.com/identityd/identityd/events/embedded"
	"github.com/identityd/identityd/events/eventstore"
	"github.com/identityd/identityd/events/eventstoretest"
)

// harness is a real NATS server with identityd's stream, an event writer that goes through the
// real event store, and the expected fold of everything written so far.
type harness struct {
	t        *testing.T
	store    *eventstore.Store
	js       jetstream.JetStream
	model    map[string]account // what the mailing list must contain
	matching []uint64           // stream sequences of the events the provisioner consumes
}

func newHarness(t *testing.T) *harness {
	t.Helper()
	st, srv := eventstoretest.Start(t, embedded.Config{})
	// The subscriber reads with the read-only credentials, as it would in production.
	js, err := jetstream.New(eventstoretest.Connect(t, srv, embedded.ReaderUser))
	if err != nil {
		t.Fatal(err)
	}
	return &harness{t: t, store: st, js: js, model: map[string]account{}}
}

// append stores the payloads as one atomic batch, as identityd does, and records which of them
// the provisioner's filter lets through.
func (h *harness) append(payloads ...events.Event) {
	h.t.Helper()
	changes := make([]events.Change, len(payloads))
	for i, e := range payloads {
		changes[i] = events.Change{ID: uuid.Must(uuid.NewV7()), At: time.Now(), Event: e}
	}
	last, err := h.store.Append(context.Background(), events.Metadata{Actor: "system"}, nil, changes)
	if err != nil {
		h.t.Fatal(err)
	}
	for i, e := range payloads { // change i is at last-len+1+i
		switch e.(type) {
		case events.UserRegistered, events.UserRenamed, events.UserDeleted:
			h.matching = append(h.matching, last-uint64(len(payloads))+1+uint64(i))
		}
	}
}

// register writes a sign-up the way identityd does: claim the address, register, set a
// password (two of the three are filtered out by the consumer).
func (h *harness) register(name, email string) uuid.UUID {
	id := uuid.New()
	h.append(
		events.EmailClaimed{Versioned: events.V(), EmailHash: events.EmailAggregate(email).ID, UserID: id},
		events.UserRegistered{Versioned: events.V(), UserID: id, Email: email, Name: name, RegisteredAt: time.Now()},
		events.PasswordSet{Versioned: events.V(), UserID: id, PasswordHash: "$argon2id$v=19$m=8,t=1,p=1$c2FsdA$aGFzaA"},
	)
	h.model[id.String()] = account{UserID: id.String(), Email: email, Name: name}
	return id
}

func (h *harness) rename(id uuid.UUID, name string) {
	a := h.model[id.String()]
	h.append(events.Renamed(id, a.Name, name))
	a.Name = name
	h.model[id.String()] = a
}

func (h *harness) remove(id uuid.UUID) {
	email := h.model[id.String()].Email
	h.append(
		events.UserDeleted{Versioned: events.V(), UserID: id},
		events.EmailReleased{Versioned: events.V(), EmailHash: events.EmailAggregate(email).ID, UserID: id},
	)
	delete(h.model, id.String())
}

func (h *harness) lastMatching() uint64 { return h.matching[len(h.matching)-1] }

// tracker counts, across runs, how often each stream sequence was applied (state written) and
// skipped as a redelivery.
type tracker struct {
	mu      sync.Mutex
	applied map[uint64]int
	skipped map[uint64]int
	last    uint64
}

func newTracker() *tracker {
	return &tracker{applied: map[uint64]int{}, skipped: map[uint64]int{}}
}

func (tr *tracker) saved(seq uint64) int {
	tr.mu.Lock()
	defer tr.mu.Unlock()
	tr.applied[seq]++
	tr.last = seq
	return len(tr.applied)
}

func (tr *tracker) skip(seq uint64) {
	tr.mu.Lock()
	defer tr.mu.Unlock()
	tr.skipped[seq]++
}

func (tr *tracker) lastApplied() uint64 {
	tr.mu.Lock()
	defer tr.mu.Unlock()
	return tr.last
}

// config for one run; then(n, seq) runs after the n-th distinct event was saved, before its ack.
func (h *harness) config(durable, statePath string, tr *tracker, then func(n int, seq uint64) error) config {
	return config{
		Keys:      eventstoretest.Keys,
		Durable:   durable,
		StatePath: statePath,
		AckWait:   time.Second, // a "crashed" message comes back after 1 s instead of 30
		Logger:    slog.New(slog.NewTextHandler(testWriter(h.t), &slog.HandlerOptions{Level: slog.LevelDebug})),
		afterSave: func(seq uint64) error {
			n := tr.saved(seq)
			if then != nil {
				return then(n, seq)
			}
			return nil
		},
		onSkip: tr.skip,
	}
}

// testWriter shows the subscriber's logs with a failing test (or -v) only.
func testWriter(t *testing.T) io.Writer {
	if testing.Verbose() {
		return t.Output()
	}
	return io.Discard
}

// running is a run in a goroutine.
type running struct {
	cancel context.CancelFunc
	done   chan struct{}
	err    error
}

func (h *harness) start(cfg config) *running {
	ctx, cancel := context.WithCancel(context.Background())
	r := &running{cancel: cancel, done: make(chan struct{})}
	go func() {
		defer close(r.done)
		r.err = run(ctx, h.js, cfg)
	}()
	h.t.Cleanup(func() { _ = r.stop() })
	return r
}

func (r *running) stop() error {
	r.cancel()
	<-r.done
	return r.err
}

// waitApplied waits until the run has applied the event at seq.
func (r *running) waitApplied(t *testing.T, tr *tracker, seq uint64) {
	t.Helper()
	deadline := time.After(8 * time.Second)
	for tr.lastApplied() < seq {
		select {
		case <-r.done:
			t.Fatalf("run stopped before applying seq %d: %v", seq, r.err)
		case <-deadline:
			t.Fatalf("seq %d not applied in time (last applied %d)", seq, tr.lastApplied())
		case <-time.After(5 * time.Millisecond):
		}
	}
}

// runUntil runs synchronously until the run returns by itself (hooks cancel or crash it).
func (h *harness) runUntil(cfg config, cancelAt func(cancel context.CancelFunc) func(n int, seq uint64) error) error {
	ctx, cancel := context.WithTimeout(context.Background(), 8*time.Second)
	defer cancel()
	if cancelAt != nil {
		cfg.afterSave = wrap(cfg.afterSave, cancelAt(cancel))
	}
	err := run(ctx, h.js, cfg)
	if errors.Is(ctx.Err(), context.DeadlineExceeded) {
		h.t.Fatal("run did not stop in time")
	}
	return err
}

func wrap(first func(uint64) error, then func(n int, seq uint64) error) func(uint64) error {
	n := 0
	return func(seq uint64) error {
		if err := first(seq); err != nil {
			return err
		}
		n++
		return then(n, seq)
	}
}

func readState(t *testing.T, path string) state {
	t.Helper()
	data, err := os.ReadFile(path) // #nosec G304 -- test temp dir
	if err != nil {
		t.Fatal(err)
	}
	var st state
	if err := json.Unmarshal(data, &st); err != nil {
		t.Fatal(err)
	}
	if st.Accounts == nil {
		st.Accounts = map[string]account{}
	}
	return st
}

// checkFinal asserts the state file equals the expected fold and that every consumed event was
// applied exactly once.
func (h *harness) checkFinal(t *testing.T, statePath string, tr *tracker) {
	t.Helper()
	st := readState(t, statePath)
	if st.LastSeq != h.lastMatching() {
		t.Errorf("last_seq = %d, want %d", st.LastSeq, h.lastMatching())
	}
	if st.Applied != uint64(len(h.matching)) {
		t.Errorf("applied = %d, want %d (one per consumed event)", st.Applied, len(h.matching))
	}
	if !maps.Equal(st.Accounts, h.model) {
		t.Errorf("accounts =\n%v\nwant\n%v", st.Accounts, h.model)
	}
	tr.mu.Lock()
	defer tr.mu.Unlock()
	if got := slices.Sorted(maps.Keys(tr.applied)); !slices.Equal(got, h.matching) {
		t.Errorf("applied seqs = %v, want %v", got, h.matching)
	}
	for seq, n := range tr.applied {
		if n != 1 {
			t.Errorf("seq %d applied %d times", seq, n)
		}
	}
}

var errCrash = errors.New("simulated crash after the state write, before the ack")

// A subscriber stopped abruptly, then crashed between writing its state and acking, then
// restarted with the same durable and state file ends with exactly the expected list, every
// event applied once.
func TestExactlyOnceAcrossStopAndCrash(t *testing.T) {
	h := newHarness(t)
	ada := h.register("Ada Lovelace", "ada@example.com")
	bob := h.register("Bob", "bob@example.com")
	cy := h.register("Cy", "cy@example.com")
	h.rename(ada, "Ada King")
	h.remove(bob)

	dir := t.TempDir()
	statePath := filepath.Join(dir, "state.json")
	tr := newTracker()
	const durable = "provisioner"

	// Run 1: canceled as soon as the 2nd event is saved.
	err := h.runUntil(h.config(durable, statePath, tr, nil), func(cancel context.CancelFunc) func(int, uint64) error {
		return func(n int, _ uint64) error {
			if n == 2 {
				cancel()
			}
			return nil
		}
	})
	if err != nil {
		t.Fatalf("run 1: %v", err)
	}
	if st := readState(t, statePath); st.Applied != 2 || st.LastSeq != h.matching[1] {
		t.Fatalf("after run 1: applied %d at seq %d, want 2 at %d", st.Applied, st.LastSeq, h.matching[1])
	}

	// Run 2: "crashes" after saving the next event, before acking it.
	var crashSeq uint64
	err = h.runUntil(h.config(durable, statePath, tr, func(n int, seq uint64) error {
		if n == 3 {
			crashSeq = seq
			return errCrash
		}
		return nil
	}), nil)
	if !errors.Is(err, errCrash) {
		t.Fatalf("run 2: want the simulated crash, got %v", err)
	}
	if crashSeq != h.matching[2] {
		t.Fatalf("crashed at seq %d, want %d (the next event in order)", crashSeq, h.matching[2])
	}
	if st := readState(t, statePath); st.LastSeq != crashSeq || st.Applied != 3 {
		t.Fatalf("after the crash: state at seq %d with %d applied, want %d and 3", st.LastSeq, st.Applied, crashSeq)
	}

	// More history arrives while the subscriber is down.
	dan := h.register("Dan", "dan@example.com")
	h.rename(cy, "Cy Two")
	h.rename(cy, "Cy Three")
	h.remove(ada)
	h.rename(dan, "Daniel")

	// Run 3: same durable, same file. The unacked event is redelivered after AckWait and
	// skipped; everything after it is applied once.
	r := h.start(h.config(durable, statePath, tr, nil))
	r.waitApplied(t, tr, h.lastMatching())
	if err := r.stop(); err != nil {
		t.Fatalf("run 3: %v", err)
	}

	h.checkFinal(t, statePath, tr)
	tr.mu.Lock()
	skippedCrash := tr.skipped[crashSeq]
	tr.mu.Unlock()
	if skippedCrash == 0 {
		t.Errorf("the event at seq %d (saved, never acked) was not redelivered and skipped", crashSeq)
	}
	if want := map[string]account{
		cy.String():  {UserID: cy.String(), Email: "cy@example.com", Name: "Cy Three"},
		dan.String(): {UserID: dan.String(), Email: "dan@example.com", Name: "Daniel"},
	}; !maps.Equal(readState(t, statePath).Accounts, want) {
		t.Errorf("accounts = %v, want %v", readState(t, statePath).Accounts, want)
	}
	// The atomic writes left no temporary files behind.
	entries, err := os.ReadDir(dir)
	if err != nil {
		t.Fatal(err)
	}
	if len(entries) != 1 || entries[0].Name() != "state.json" {
		t.Errorf("state dir holds %v, want only state.json", entries)
	}
}

// A subscriber that starts after the history was written, with a new durable and no state,
// receives all of it; an earlier one resumes and converges on the same list.
func TestLateConsumerGetsFullHistory(t *testing.T) {
	h := newHarness(t)
	ids := make([]uuid.UUID, 0, 6)
	for _, n := range []string{"Ann", "Ben", "Cat", "Dee", "Eve", "Fay"} {
		ids = append(ids, h.register(n, strings.ToLower(n)+"@example.com"))
	}
	earlyPath := filepath.Join(t.TempDir(), "early.json")
	earlyTr := newTracker()
	early := h.start(h.config("early", earlyPath, earlyTr, nil))
	early.waitApplied(t, earlyTr, h.lastMatching())
	if err := early.stop(); err != nil {
		t.Fatal(err)
	}

	h.rename(ids[0], "Ann B")
	h.remove(ids[1])
	h.remove(ids[2])
	h.rename(ids[3], "Dee D")
	h.register("Gus", "gus@example.com")

	latePath := filepath.Join(t.TempDir(), "late.json")
	lateTr := newTracker()
	late := h.start(h.config("late", latePath, lateTr, nil))
	late.waitApplied(t, lateTr, h.lastMatching())
	if err := late.stop(); err != nil {
		t.Fatal(err)
	}
	h.checkFinal(t, latePath, lateTr)
	if got := len(readState(t, latePath).Accounts); got != 5 {
		t.Errorf("late consumer has %d accounts, want 5", got)
	}

	early = h.start(h.config("early", earlyPath, earlyTr, nil))
	early.waitApplied(t, earlyTr, h.lastMatching())
	if err := early.stop(); err != nil {
		t.Fatal(err)
	}
	h.checkFinal(t, earlyPath, earlyTr)
}

// An event written by someone with publish rights but without identityd's signing key (here:
// a rename signed with another key, on a real subscriber's subject) is refused: never applied,
// reported, and the events after it are applied as usual.
func TestForgedEventIsRefused(t *testing.T) {
	h := newHarness(t)
	ann := h.register("Ann", "ann@example.com")
	attacker, err := events.NewSigningKey(bytes.Repeat([]byte{0x66}, 32))
	if err != nil {
		t.Fatal(err)
	}
	forged, _, err := events.Encode(attacker, uuid.NewString(), time.Now(), events.Metadata{Actor: "system"}, "", events.Renamed(ann, "Ann", "Mallory"))
	if err != nil {
		t.Fatal(err)
	}
	// The forger holds publish rights (identityd's NATS key); the subscriber reads with the reader's.
	ack, err := h.store.JetStream().PublishMsg(context.Background(), forged)
	if err != nil {
		t.Fatal(err)
	}
	h.rename(ann, "Ann B")

	path := filepath.Join(t.TempDir(), "state.json")
	tr := newTracker()
	var refused []uint64
	var mu sync.Mutex
	cfg := h.config("forged", path, tr, nil)
	cfg.onRefused = func(seq uint64) { mu.Lock(); refused = append(refused, seq); mu.Unlock() }
	r := h.start(cfg)
	r.waitApplied(t, tr, h.lastMatching())
	if err := r.stop(); err != nil {
		t.Fatal(err)
	}
	mu.Lock()
	defer mu.Unlock()
	if len(refused) != 1 || refused[0] != ack.Sequence || tr.applied[ack.Sequence] != 0 {
		t.Fatalf("forged event at %d: refused %v, applied %d times", ack.Sequence, refused, tr.applied[ack.Sequence])
	}
	if got := readState(t, path).Accounts[ann.String()].Name; got != "Ann B" {
		t.Fatalf("Ann's name is %q", got)
	}
}

// Losing the state file while the durable survives would resume after the server's ack floor
// and silently miss earlier sign-ups; run refuses instead.
func TestLostStateIsRefused(t *testing.T) {
	h := newHarness(t)
	h.register("Ann", "ann@example.com")
	statePath := filepath.Join(t.TempDir(), "state.json")
	tr := newTracker()
	r := h.start(h.config("p", statePath, tr, nil))
	r.waitApplied(t, tr, h.lastMatching())
	if err := r.stop(); err != nil {
		t.Fatal(err)
	}
	if err := os.Remove(statePath); err != nil {
		t.Fatal(err)
	}
	err := h.runUntil(h.config("p", statePath, tr, nil), nil)
	if err == nil || !strings.Contains(err.Error(), "state was lost") {
		t.Fatalf("want a lost-state error, got %v", err)
	}
}

// apply refuses an event at or below the last applied sequence, so a caller that forgot the
// redelivery check cannot double-apply.
func TestApplyRefusesReplays(t *testing.T) {
	p, err := openProvisioner(filepath.Join(t.TempDir(), "s.json"), slog.New(slog.DiscardHandler))
	if err != nil {
		t.Fatal(err)
	}
	id := uuid.New()
	reg := events.Envelope{Type: events.TypeUserRegistered, Sequence: 7,
		Data: events.UserRegistered{Versioned: events.V(), UserID: id, Email: "a@b.co", Name: "A"}}
	if err := p.apply(reg); err != nil {
		t.Fatal(err)
	}
	if err := p.apply(reg); err == nil {
		t.Fatal("the same event applied twice")
	}
	if err := p.save(); err != nil {
		t.Fatal(err)
	}
	q, err := openProvisioner(p.path, slog.New(slog.DiscardHandler))
	if err != nil {
		t.Fatal(err)
	}
	if q.st.LastSeq != 7 || q.st.Applied != 1 || q.st.Accounts[id.String()].Email != "a@b.co" {
		t.Fatalf("reloaded state = %+v", q.st)
	}
}

func TestLoadConfig(t *testing.T) {
	env := map[string]string{"IDENTITYD_DATA_DIR": t.TempDir()}
	getenv := func(k string) string { return env[k] }
	if _, err := loadConfig(nil, getenv, io.Discard); err == nil || !strings.Contains(err.Error(), "no event public keys") {
		t.Fatalf("no keys to verify events with: %v", err)
	}
	env["IDENTITYD_EVENT_PUBLIC_KEYS"] = eventstoretest.Signer.PublicKey().String()
	c, err := loadConfig(nil, getenv, io.Discard)
	if err != nil {
		t.Fatal(err)
	}
	if len(c.Keys.Keys()) != 1 || c.Keys.Keys()[0].KeyID() != eventstoretest.Signer.PublicKey().KeyID() {
		t.Fatalf("keys = %v", c.Keys.Keys())
	}
	if c.NATSURL != "nats://127.0.0.1:14222" || c.Durable != "example-provisioner" || c.StatePath != "./example-state.json" {
		t.Fatalf("defaults = %+v", c)
	}
	env["IDENTITYD_NATS_URL"] = "nats://nats:4222"
	env["EXAMPLE_SUBSCRIBER_DURABLE"] = "from-env"
	c, err = loadConfig([]string{"--durable", "from-flag", "--state", "/tmp/s.json"}, getenv, io.Discard)
	if err != nil {
		t.Fatal(err)
	}
	if c.NATSURL != "nats://nats:4222" || c.Durable != "from-flag" || c.StatePath != "/tmp/s.json" {
		t.Fatalf("env and flags = %+v", c)
	}
	if _, err := loadConfig([]string{"--durable", "a.b"}, getenv, io.Discard); err == nil {
		t.Fatal("a durable name with a dot was accepted")
	}
}

// The credentials: the reader's seed in identityd's data dir when it exists, else the named file.
func TestLoadConfigCredentials(t *testing.T) {
	data := t.TempDir()
	env := map[string]string{"IDENTITYD_DATA_DIR": data, "IDENTITYD_EVENT_PUBLIC_KEYS": eventstoretest.Signer.PublicKey().String()}
	getenv := func(k string) string { return env[k] }
	c, err := loadConfig(nil, getenv, io.Discard)
	if err != nil {
		t.Fatal(err)
	}
	if c.NATSCreds != "" {
		t.Fatalf("no key in the data dir yet, creds = %q", c.NATSCreds)
	}
	k, err := embedded.LoadOrCreateKeys(embedded.KeyDir(data))
	if err != nil {
		t.Fatal(err)
	}
	if c, _ = loadConfig(nil, getenv, io.Discard); c.NATSCreds != k.ReaderSeed() {
		t.Fatalf("creds = %q, want the reader's seed %q", c.NATSCreds, k.ReaderSeed())
	}
	env["IDENTITYD_NATS_CREDS"] = "/etc/sub.creds"
	if c, _ = loadConfig(nil, getenv, io.Discard); c.NATSCreds != "/etc/sub.creds" {
		t.Fatalf("creds = %q, want the named file", c.NATSCreds)
	}
}
