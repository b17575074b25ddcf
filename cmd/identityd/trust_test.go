package main

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/google/uuid"
	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/identityd/identityd/bench/benchtoken"
	"github.com/identityd/identityd/cmd/internal/eventkeys"
	"github.com/identityd/identityd/cmd/internal/wiring"
	"github.com/identityd/identityd/events"
	"github.com/identityd/identityd/events/eventstoretest"
	"github.com/identityd/identityd/projections/dbtest"
)

// TestForgedEventsAreRefused acts as the red team did: with publish rights on the stream but
// without the signing key, append a token_created for the victim, chained to the victim's last
// event, carrying the digest of a secret the attacker chose, and a rename. Neither takes
// effect: the token does not authenticate, the name stays, the victim's next command succeeds,
// and verify (run when the test ends) reports both events as signature_invalid.
func TestForgedEventsAreRefused(t *testing.T) {
	e := newEnv(t, dbtest.Backends[0])
	in := e.start()
	session, victim := signUp(t, in.URL, "victim@example.com", "Victim")
	ctx := context.Background()

	st := e.store()
	history, err := st.Load(ctx, events.UserAggregate(uuid.MustParse(victim)), 0)
	if err != nil || len(history) == 0 {
		t.Fatalf("victim's history: %d events, %v", len(history), err)
	}
	chain := history[len(history)-1].ChainHash
	attacker, err := events.NewSigningKey(bytes.Repeat([]byte("mallory!"), 4))
	if err != nil {
		t.Fatal(err)
	}
	js := writer(t, e)
	secret := benchtoken.New("idt_")
	now := time.Now().UTC().Truncate(time.Microsecond)
	for _, ev := range []events.Event{
		events.TokenCreated{Versioned: events.V(), UserID: uuid.MustParse(victim), TokenID: uuid.New(), Description: "backdoor",
			Digest: benchtoken.Digest(secret), CreatedAt: now},
		events.Renamed(uuid.MustParse(victim), "Victim", "Mallory"),
	} {
		m, next, err := events.Encode(attacker, uuid.NewString(), now, events.Metadata{Actor: "user:" + victim}, chain, ev)
		if err != nil {
			t.Fatal(err)
		}
		ack, err := js.PublishMsg(ctx, m)
		if err != nil {
			t.Fatal(err)
		}
		chain = next
		e.Forged = append(e.Forged, ack.Sequence)
	}
	wctx, cancel := context.WithTimeout(ctx, 15*time.Second)
	defer cancel()
	if err := in.Projector().WaitFor(wctx, e.Forged[len(e.Forged)-1]); err != nil {
		t.Fatal(err)
	}
	if r := call(t, in.URL, "GET", "/api/v0/user", secret, nil); r.Status != 401 {
		t.Fatalf("the forged token authenticated: %d %s", r.Status, r.Body)
	}
	if got := call(t, in.URL, "GET", "/api/v0/user", session, nil).json(t)["name"]; got != "Victim" {
		t.Fatalf("the forged rename took effect: name %v", got)
	}
	if in.Projector().Refused() != 2 {
		t.Fatalf("projector counted %d refused events, want 2", in.Projector().Refused())
	}
	// The domain skips the forged events but expects their positions: commands still work.
	r := call(t, in.URL, "PATCH", "/api/v0/user", session, map[string]string{"name": "Victim Again"})
	mustStatus(t, r, 200)
	if got := call(t, in.URL, "GET", "/api/v0/user", session, nil).json(t)["name"]; got != "Victim Again" {
		t.Fatalf("rename after the forgery: %v", got)
	}
}

// TestEventKeysArePublished: the keys at /api/v0/event-keys (and in the data dir's
// event-keys.pub) verify what the service appends, and a keyring built from them alone refuses
// an event signed with any other key.
func TestEventKeysArePublished(t *testing.T) {
	e := newEnv(t, dbtest.Backends[1])
	dataDir := t.TempDir()
	in := e.startWith(func(c *wiring.Config) { c.DataDir = dataDir })
	signUp(t, in.URL, "keys@example.com", "Keys")
	r := call(t, in.URL, "GET", "/api/v0/event-keys", "", nil)
	mustStatus(t, r, 200)
	var body struct {
		SigningKeyID string `json:"signing_key_id"`
		Keys         []struct {
			KeyID     string `json:"key_id"`
			PublicKey string `json:"public_key"`
		} `json:"keys"`
	}
	if err := json.Unmarshal(r.Body, &body); err != nil || len(body.Keys) != 1 || body.Keys[0].KeyID != body.SigningKeyID {
		t.Fatalf("event keys: %s (%v)", r.Body, err)
	}
	pub, err := events.ParsePublicKey(body.Keys[0].PublicKey)
	if err != nil {
		t.Fatal(err)
	}
	file, err := os.ReadFile(filepath.Join(dataDir, eventkeys.FileName))
	if err != nil || !strings.Contains(string(file), pub.String()) {
		t.Fatalf("%s: %q %v", eventkeys.FileName, file, err)
	}
	ring := events.NewKeyring(0, pub)
	st := e.store()
	evs, err := st.ReadAll(context.Background(), 1, 0)
	if err != nil || len(evs) == 0 {
		t.Fatal(err)
	}
	raw, err := st.JetStream().Stream(context.Background(), events.StreamName)
	if err != nil {
		t.Fatal(err)
	}
	for _, ev := range evs {
		m, err := raw.GetMsg(context.Background(), ev.Sequence)
		if err != nil {
			t.Fatal(err)
		}
		if _, err := ring.Decode(m.Subject, nats.Header(m.Header), m.Data, ev.Sequence); err != nil {
			t.Fatalf("seq %d does not verify with the published key: %v", ev.Sequence, err)
		}
		other := events.NewKeyring(0, eventstoretest.Signer.PublicKey())
		if _, err := other.Decode(m.Subject, nats.Header(m.Header), m.Data, ev.Sequence); !errors.Is(err, events.ErrUnknownKey) {
			t.Fatalf("seq %d verifies with another key: %v", ev.Sequence, err)
		}
	}
}

// TestReplayedEventsAreRefused: an attacker with publish rights appends genuine, signed events
// again — the token_created of a token its owner revoked, the admin_granted of a revoked admin.
// The signature verifies, but the event was applied before and does not continue its
// aggregate's chain: the token stays revoked, the rights stay revoked, the owner's next command
// works, and verify reports each replay as hash_chain_broken.
func TestReplayedEventsAreRefused(t *testing.T) {
	e := newEnv(t, dbtest.Backends[0])
	in := e.start()
	session, owner := signUp(t, in.URL, "replayed@example.com", "Owner")
	r := call(t, in.URL, "POST", "/api/v0/user/api-tokens", session, map[string]any{"description": "leaked"})
	mustStatus(t, r, 201)
	leaked := r.json(t)["token"].(string)
	tokID := r.json(t)["api_token"].(map[string]any)["id"].(string)
	mustStatus(t, call(t, in.URL, "DELETE", "/api/v0/user/api-tokens/"+tokID, session, nil), 204)
	mustStatus(t, call(t, in.URL, "GET", "/api/v0/user", leaked, nil), 401)

	ctx := context.Background()
	st := e.store()
	stream, err := st.JetStream().Stream(ctx, events.StreamName)
	if err != nil {
		t.Fatal(err)
	}
	orig, err := stream.GetLastMsgForSubject(ctx, "identity.user."+owner+".token_created")
	if err != nil {
		t.Fatal(err)
	}
	js := writer(t, e)
	again := nats.NewMsg(orig.Subject)
	again.Data = orig.Data
	for k, v := range orig.Header {
		if !strings.HasPrefix(k, "Nats-") { // the stored expectations would refuse it; not signed
			again.Header[k] = v
		}
	}
	again.Header.Set(jetstream.MsgIDHeader, uuid.NewString()) // not signed: past the stream's deduplication
	ack, err := js.PublishMsg(ctx, again)
	if err != nil {
		t.Fatal(err)
	}
	e.Replayed = append(e.Replayed, ack.Sequence)
	wctx, cancel := context.WithTimeout(ctx, 15*time.Second)
	defer cancel()
	if err := in.Projector().WaitFor(wctx, ack.Sequence); err != nil {
		t.Fatal(err)
	}
	if r := call(t, in.URL, "GET", "/api/v0/user", leaked, nil); r.Status != 401 {
		t.Fatalf("the replay brought the revoked token back: %d %s", r.Status, r.Body)
	}
	if in.Projector().Refused() != 1 {
		t.Fatalf("projector counted %d refused events, want 1", in.Projector().Refused())
	}
	// The owner's aggregate skips the replay and expects its position: commands still work, and
	// a second instance, loading the history from the stream, agrees.
	mustStatus(t, call(t, in.URL, "PATCH", "/api/v0/user", session, map[string]string{"name": "Owner Again"}), 200)
	other := e.start()
	if r := call(t, other.URL, "GET", "/api/v0/user", leaked, nil); r.Status != 401 {
		t.Fatalf("second instance: %d %s", r.Status, r.Body)
	}
	mustStatus(t, call(t, other.URL, "PATCH", "/api/v0/user", session, map[string]string{"name": "Owner Thrice"}), 200)
}

// TestForgedGrantDoesNotBlockBootstrap: an admin_granted written without the signing key
// before the first administrator exists neither makes an administrator nor stops the bootstrap
// (which happens once, after the first genuine grant).
func TestForgedGrantDoesNotBlockBootstrap(t *testing.T) {
	e := newEnv(t, dbtest.Backends[1])
	in := e.start()
	opsSession, ops := signUp(t, in.URL, "ops@example.com", "Ops")
	attackerSession, attacker := signUp(t, in.URL, "mallory@example.com", "Mallory")
	key, err := events.NewSigningKey(bytes.Repeat([]byte("mallory!"), 4))
	if err != nil {
		t.Fatal(err)
	}
	m, _, err := events.Encode(key, uuid.NewString(), time.Now().UTC(), events.Metadata{Actor: "system"}, "",
		events.AdminGranted{Versioned: events.V(), UserID: uuid.MustParse(attacker)})
	if err != nil {
		t.Fatal(err)
	}
	js := writer(t, e)
	ack, err := js.PublishMsg(context.Background(), m)
	if err != nil {
		t.Fatal(err)
	}
	e.Forged = append(e.Forged, ack.Sequence)

	e.BootstrapAdmin = ops
	admin := e.start()
	mustStatus(t, call(t, admin.URL, "GET", "/api/v0/admin/events", opsSession, nil), 200)
	mustStatus(t, call(t, admin.URL, "GET", "/api/v0/admin/events", attackerSession, nil), 403)
}

// writer is a JetStream client with publish rights on the stream but without the signing key:
// the attacker these tests play.
func writer(t *testing.T, e *env) jetstream.JetStream {
	t.Helper()
	nc, err := nats.Connect(e.NATSURL, natsTestCredentials(t, e)...)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(nc.Close)
	js, err := jetstream.New(nc)
	if err != nil {
		t.Fatal(err)
	}
	return js
}
