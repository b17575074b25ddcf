package main

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/google/uuid"
	"github.com/uptrace/bun"

	"github.com/identityd/identityd/cmd/internal/wiring"
	"github.com/identityd/identityd/cmd/internal/wiring/wiringtest"
	"github.com/identityd/identityd/domain"
	"github.com/identityd/identityd/events"
	"github.com/identityd/identityd/events/embedded"
	"github.com/identityd/identityd/events/eventstore"
	"github.com/identityd/identityd/projections"
	"github.com/identityd/identityd/projections/dbtest"
)

// world is one deployment, wired by the wiring package as identityd wires it: an in-process
// NATS JetStream server (random port, temp dir), a real read-model database and one identityd
// instance (event store, running projector, domain service) that writes the history
// identityctl then audits.
type world struct {
	t       *testing.T
	natsURL string
	keys    embedded.Keys // the NATS users; identityctl gets the reader's
	dbURL   string
	env     map[string]string // what identityctl sees through getenv
	store   *eventstore.Store
	db      *bun.DB // the test's own handle, to tamper with the read model
	proj    *projections.Projector
	svc     *domain.Service
	reqs    int
	reqMu   sync.Mutex
}

// eventKeys is the public key the world's instance signs with, as IDENTITYD_EVENT_PUBLIC_KEYS.
func eventKeys(t testing.TB) string { return wiringtest.PublicKey(t, wiringtest.TestSecret).String() }

// newWorld starts NATS and an instance projecting into dbURL; env is filled for an external
// deployment (IDENTITYD_NATS_URL + IDENTITYD_DATABASE_URL).
func newWorld(t *testing.T, dbURL string) *world {
	t.Helper()
	w := startWorld(t, dbURL, t.TempDir(), t.TempDir())
	w.env = map[string]string{"IDENTITYD_NATS_URL": w.natsURL, "IDENTITYD_NATS_CREDS": w.keys.ReaderSeed(), "IDENTITYD_DATABASE_URL": w.dbURL,
		"IDENTITYD_EVENT_PUBLIC_KEYS": eventKeys(t)}
	return w
}

// newPostgresWorld is newWorld on a fresh PostgreSQL database.
func newPostgresWorld(t *testing.T) *world {
	t.Helper()
	return newWorld(t, dbtest.PostgresURL(t))
}

// startWorld starts the deployment with the NATS users' keys in keyDir (created there, as
// identityd does in its data dir) and the instance's data (its published event keys) in
// dataDir.
func startWorld(t *testing.T, dbURL, keyDir, dataDir string) *world {
	t.Helper()
	keys, err := embedded.LoadOrCreateKeys(keyDir)
	if err != nil {
		t.Fatal(err)
	}
	srv, err := embedded.Start(embedded.Config{StoreDir: t.TempDir(), Keys: keys})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { srv.Shutdown(); srv.WaitForShutdown() })
	e := wiringtest.Attach(t, srv.ClientURL(), keys, dbURL)
	cfg := wiringtest.Config(t, e.NATSURL, dbURL)
	cfg.DataDir, cfg.NATSCreds = dataDir, e.Creds() // the writer, as identityd
	cfg.CacheLease = 0                              // identityctl reads the database, not an instance's memory
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	app, err := wiring.Start(ctx, cfg)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(app.Close)
	return &world{t: t, natsURL: e.NATSURL, keys: keys, dbURL: dbURL,
		store: app.Store(), db: dbtest.Open(t, dbURL), proj: app.Projector(), svc: app.Service()}
}

func (w *world) meta() events.Metadata {
	w.reqMu.Lock()
	defer w.reqMu.Unlock()
	w.reqs++
	return events.Metadata{Actor: "system", RequestID: fmt.Sprintf("req-%d", w.reqs)}
}

// last is the stream's last sequence.
func (w *world) last() uint64 {
	w.t.Helper()
	seq, err := w.store.LastSequence(context.Background())
	if err != nil {
		w.t.Fatal(err)
	}
	return seq
}

// sync waits until the running projector has applied everything stored so far.
func (w *world) sync() uint64 {
	w.t.Helper()
	seq := w.last()
	w.waitFor(seq)
	return seq
}

func (w *world) waitFor(seq uint64) {
	w.t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 15*time.Second)
	defer cancel()
	if err := w.proj.WaitFor(ctx, seq); err != nil {
		w.t.Fatal(err)
	}
}

// result is one identityctl invocation.
type result struct {
	code   int
	lines  []json.RawMessage
	stdout string
	stderr string
}

// ctl runs identityctl in-process with the world's environment.
func (w *world) ctl(args ...string) result {
	w.t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	return runCtl(ctx, w.t, w.env, args...)
}

func runCtl(ctx context.Context, t *testing.T, env map[string]string, args ...string) result {
	t.Helper()
	return runRaw(ctx, env, args...).parse(t)
}

// runRaw runs identityctl without touching t, so it may run on another goroutine.
func runRaw(ctx context.Context, env map[string]string, args ...string) result {
	var stdout, stderr bytes.Buffer
	code := run(ctx, args, func(k string) string { return env[k] }, &stdout, &stderr)
	return result{code: code, stdout: stdout.String(), stderr: stderr.String()}
}

// parse splits stdout into its JSON lines.
func (r result) parse(t *testing.T) result {
	t.Helper()
	r.lines = jsonLines(t, r.stdout)
	return r
}

// jsonLines splits stdout into JSON values, one per line; anything else fails the test.
func jsonLines(t *testing.T, out string) []json.RawMessage {
	t.Helper()
	var lines []json.RawMessage
	for i, l := range strings.Split(out, "\n") {
		if l == "" {
			continue
		}
		if !json.Valid([]byte(l)) {
			t.Fatalf("stdout line %d is not JSON: %q", i+1, l)
		}
		lines = append(lines, json.RawMessage(l))
	}
	return lines
}

func (r result) String() string {
	return fmt.Sprintf("exit %d\nstdout:\n%s\nstderr:\n%s", r.code, r.stdout, r.stderr)
}

// expect fails the test unless identityctl exited with code.
func (r result) expect(t *testing.T, code int) result {
	t.Helper()
	if r.code != code {
		t.Fatalf("want exit %d, got %s", code, r)
	}
	return r
}

func decode[T any](t *testing.T, raw json.RawMessage) T {
	t.Helper()
	var v T
	if err := json.Unmarshal(raw, &v); err != nil {
		t.Fatalf("%s: %v", raw, err)
	}
	return v
}

func decodeAll[T any](t *testing.T, lines []json.RawMessage) []T {
	t.Helper()
	out := make([]T, len(lines))
	for i, l := range lines {
		out[i] = decode[T](t, l)
	}
	return out
}

// summary is verify's last line.
type summary struct {
	Verified    *bool  `json:"verified"`
	Differences int    `json:"differences"`
	Position    uint64 `json:"position"`
	StreamLast  uint64 `json:"stream_last"`
	Events      uint64 `json:"events"`
	Users       int    `json:"users"`
}

// verifyOutput splits verify's output into its difference lines and its summary.
func verifyOutput(t *testing.T, r result) ([]projections.Difference, summary) {
	t.Helper()
	if len(r.lines) == 0 {
		t.Fatalf("verify printed nothing: %s", r)
	}
	s := decode[summary](t, r.lines[len(r.lines)-1])
	if s.Verified == nil {
		t.Fatalf("last line is not the summary: %s", r)
	}
	diffs := decodeAll[projections.Difference](t, r.lines[:len(r.lines)-1])
	for _, d := range diffs {
		if d.Kind == "" || d.Detail == "" {
			t.Fatalf("difference line without kind or detail: %s", r)
		}
	}
	if s.Differences != len(diffs) || *s.Verified != (len(diffs) == 0) {
		t.Fatalf("summary disagrees with the difference lines: %s", r)
	}
	return diffs, s
}

// history is what seed wrote: three users, renames, tokens created and revoked, a second
// session that was ended, and a deleted user.
type history struct {
	alice, bob, carol           uuid.UUID
	laptop, ci, script          uuid.UUID // alice's live, alice's revoked, bob's live token
	aliceNames                  []string  // alice's names in order
	beforeSecondRename          time.Time // between alice's first and second rename
	beforeSignUp, afterDeletion time.Time
	renames                     int
}

func (w *world) signUp(email, name string) uuid.UUID {
	w.t.Helper()
	out, err := w.svc.SignUp(context.Background(), w.meta(), domain.SignUp{Email: email, Name: name, Password: "correct horse battery"})
	if err != nil {
		w.t.Fatalf("sign up %s: %v", email, err)
	}
	return out.User.ID
}

func (w *world) rename(id uuid.UUID, name string) uint64 {
	w.t.Helper()
	_, res, err := w.svc.Rename(context.Background(), w.meta(), id, name)
	if err != nil {
		w.t.Fatalf("rename %s: %v", id, err)
	}
	return res.Seq
}

func (w *world) createToken(user uuid.UUID, desc string) uuid.UUID {
	w.t.Helper()
	exp := time.Now().Add(24 * time.Hour).UTC().Truncate(time.Microsecond)
	out, err := w.svc.CreateToken(context.Background(), w.meta(), user, domain.CreateToken{Description: desc, ExpiresAt: &exp})
	if err != nil {
		w.t.Fatalf("create token: %v", err)
	}
	return out.Token.ID
}

// pause separates two instants on the service clock (microseconds).
func pause() { time.Sleep(3 * time.Millisecond) }

func (w *world) seed() history {
	w.t.Helper()
	ctx := context.Background()
	var h history
	h.beforeSignUp = time.Now().UTC()
	pause()
	h.alice = w.signUp("alice@example.com", "Alice Liddell")
	h.bob = w.signUp("bob@example.com", "Bob Builder")
	h.carol = w.signUp("carol@example.com", "Carol Danvers")
	h.aliceNames = []string{"Alice Liddell"}

	pause()
	w.rename(h.alice, "Alice Pleasance")
	h.aliceNames = append(h.aliceNames, "Alice Pleasance")
	pause()
	h.beforeSecondRename = time.Now().UTC()
	pause()
	w.rename(h.alice, "Alice Hargreaves")
	h.aliceNames = append(h.aliceNames, "Alice Hargreaves")
	w.rename(h.bob, "Robert Builder")
	h.renames = 3

	h.laptop = w.createToken(h.alice, "laptop")
	h.ci = w.createToken(h.alice, "ci")
	h.script = w.createToken(h.bob, "script")
	if _, err := w.svc.RevokeToken(ctx, w.meta(), h.alice, h.ci); err != nil {
		w.t.Fatal(err)
	}
	in, err := w.svc.LogIn(ctx, w.meta(), domain.LogIn{Email: "alice@example.com", Password: "correct horse battery"})
	if err != nil {
		w.t.Fatal(err)
	}
	if _, err := w.svc.EndSession(ctx, w.meta(), h.alice, in.Session.ID); err != nil {
		w.t.Fatal(err)
	}
	w.createToken(h.carol, "doomed")
	if _, err := w.svc.DeleteUser(ctx, w.meta(), h.carol); err != nil {
		w.t.Fatal(err)
	}
	pause()
	h.afterDeletion = time.Now().UTC()
	w.sync()
	return h
}

// exportAll is every event in the stream as identityctl prints it.
func (w *world) exportAll() []events.CloudEvent {
	w.t.Helper()
	return decodeAll[events.CloudEvent](w.t, w.ctl("events", "export").expect(w.t, 0).lines)
}
