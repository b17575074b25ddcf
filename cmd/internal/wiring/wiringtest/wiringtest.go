// Package wiringtest is the integration tests' deployment: an in-process NATS JetStream server
// with its generated keys, a throwaway read-model database (PostgreSQL or SQLite, dbtest), and
// as many identityd instances (wiring.Start behind a test HTTP server) as a test starts. After
// every scenario, once its instances have stopped, Env checks the read models and hash chains
// against the stream with the check `identityctl verify` runs (wiring.OpenReader, wiring.Verify).
package wiringtest

import (
	"bytes"
	"context"
	"net/http/httptest"
	"slices"
	"testing"
	"time"

	"github.com/nats-io/nats.go"

	"github.com/identityd/identityd/cmd/internal/eventkeys"
	"github.com/identityd/identityd/cmd/internal/wiring"
	"github.com/identityd/identityd/events"
	"github.com/identityd/identityd/events/embedded"
	"github.com/identityd/identityd/events/eventstore"
	"github.com/identityd/identityd/projections/credcache"
	"github.com/identityd/identityd/projections/dbtest"
)

// Env is one deployment for a test: a NATS JetStream server and a read-model database, shared
// by every instance the test starts.
type Env struct {
	T       *testing.T
	NATSURL string
	Keys    embedded.Keys // the NATS users; zero for a server without authentication
	DBURL   string
	Secret  []byte // the instances' IDENTITYD_SECRET_KEY
	// BootstrapAdmin is IDENTITYD_BOOTSTRAP_ADMIN of the instances the test starts.
	BootstrapAdmin string
	// Forged and Replayed are the stream positions of events a test forged or replayed on
	// purpose: Verify must report exactly these, as signature_invalid and hash_chain_broken.
	Forged, Replayed []uint64
}

// TestSecret is the secret key of the instances an Env starts.
var TestSecret = bytes.Repeat([]byte{7}, 32)

// New starts an in-process NATS server with generated keys and a fresh database of backend,
// and verifies the deployment when the test ends.
func New(t *testing.T, backend dbtest.Backend) *Env {
	t.Helper()
	keys := NewKeys(t)
	srv, err := embedded.Start(embedded.Config{StoreDir: t.TempDir(), Keys: keys})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { srv.Shutdown(); srv.WaitForShutdown() })
	e := Attach(t, srv.ClientURL(), keys, backend.URL(t))
	// After every scenario, once its instances have stopped: the read models and the hash
	// chains must agree with the fold of the stream (what `identityctl verify` checks).
	t.Cleanup(e.Verify)
	return e
}

// Attach is an Env on a NATS server and database the test runs itself (a cluster, a proxy
// in front of PostgreSQL); it does not verify at the end, the test decides what to check.
func Attach(t *testing.T, natsURL string, keys embedded.Keys, dbURL string) *Env {
	return &Env{T: t, NATSURL: natsURL, Keys: keys, DBURL: dbURL, Secret: TestSecret}
}

// Verify runs the check `identityctl verify` runs, as identityctl runs it (read-only with the
// reader's key, every signature checked), and fails the test on any difference but the forged
// and replayed events the test declared.
func (e *Env) Verify() {
	e.T.Helper()
	ctx := context.Background()
	r, err := wiring.OpenReader(ctx, wiring.ReaderConfig{
		NATSURL: e.NATSURL, NATSCreds: e.ReaderCreds(), Name: "identityd-test-verify",
		EventKeys: PublicKey(e.T, e.Secret).String(), SignaturesOnly: true,
	})
	if err != nil {
		e.T.Fatalf("verify: %v", err)
	}
	defer r.Close()
	db, err := wiring.OpenReadModel(ctx, e.DBURL)
	if err != nil {
		e.T.Fatalf("verify: %v", err)
	}
	defer db.Close()
	rep, err := wiring.Verify(ctx, db, r.Store, nil)
	if err != nil {
		e.T.Fatalf("verify: %v", err)
	}
	var forged, replayed []uint64
	for _, d := range rep.Differences {
		switch {
		case d.Kind == "signature_invalid" && slices.Contains(e.Forged, d.Sequence):
			forged = append(forged, d.Sequence)
		case d.Kind == "hash_chain_broken" && slices.Contains(e.Replayed, d.Sequence):
			replayed = append(replayed, d.Sequence)
		default:
			e.T.Errorf("verify: %+v", d)
		}
	}
	if len(forged) != len(e.Forged) || len(replayed) != len(e.Replayed) {
		e.T.Errorf("verify reported forged events at %v and replays at %v, want %v and %v", forged, replayed, e.Forged, e.Replayed)
	}
	if rep.Events == 0 && rep.StreamLast > 0 {
		e.T.Errorf("verify checked nothing: read model at %d of %d", rep.Position, rep.StreamLast)
	}
}

// Instance is one identityd process's worth of wiring, served over real HTTP at URL.
type Instance struct {
	*wiring.App
	URL string
}

// Start starts an instance with the test configuration.
func (e *Env) Start() *Instance {
	e.T.Helper()
	return e.StartWith(func(*wiring.Config) {})
}

// StartWith starts an instance with the test configuration as edit changed it.
func (e *Env) StartWith(edit func(*wiring.Config)) *Instance {
	e.T.Helper()
	cfg := Config(e.T, e.NATSURL, e.DBURL)
	cfg.SecretKey, cfg.BootstrapAdmin, cfg.NATSCreds = e.Secret, e.BootstrapAdmin, e.Creds()
	edit(&cfg)
	return Start(e.T, cfg)
}

// Config is an instance's configuration for tests: the given NATS and database, a temp data
// dir, a cheap argon2id, and a long read-your-writes wait for slow shared machines.
func Config(t testing.TB, natsURL, dbURL string) wiring.Config {
	return wiring.Config{
		DataDir: t.TempDir(), NATSURL: natsURL, NATSReplicas: 1,
		DatabaseURL: dbURL, SecretKey: TestSecret,
		SessionTTL: time.Hour, Argon2MemKiB: 64, Argon2Time: 1, ConsistencyMax: 10 * time.Second,
		CacheLease: 10 * time.Millisecond, CacheEntries: 100_000, // the defaults
		// The registry's defaults scaled down tenfold, so an instance takes leases after 300ms.
		Presence: credcache.PresenceConfig{TTL: time.Second, Refresh: 200 * time.Millisecond, Grace: 300 * time.Millisecond,
			Margin: 100 * time.Millisecond, ViewEvery: 50 * time.Millisecond, Timeout: 100 * time.Millisecond},
	}
}

// Start runs wiring.Start behind a test HTTP server until the test ends; a nil cfg.Logger
// discards the logs.
func Start(t testing.TB, cfg wiring.Config) *Instance {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	a, err := wiring.Start(ctx, cfg)
	if err != nil {
		t.Fatal(err)
	}
	hs := httptest.NewServer(a.API())
	a.API().SetPublicURL(hs.URL)
	t.Cleanup(func() { hs.Close(); a.Close() })
	return &Instance{App: a, URL: hs.URL}
}

// Creds is identityd's seed file, "" without authentication.
func (e *Env) Creds() string {
	if e.Keys.Dir == "" {
		return ""
	}
	return e.Keys.IdentitydSeed()
}

// ReaderCreds is the reader's seed file, "" without authentication.
func (e *Env) ReaderCreds() string {
	if e.Keys.Dir == "" {
		return ""
	}
	return e.Keys.ReaderSeed()
}

// Store opens the event store directly, as an auditor would: with the reader's credentials,
// read-only.
func (e *Env) Store() *eventstore.Store {
	e.T.Helper()
	return OpenStore(e.T, e.NATSURL, e.Keys, 0, e.Secret)
}

// IdentitydStore opens the event store read-only with identityd's key, which may also list and
// read the server's other streams.
func (e *Env) IdentitydStore() *eventstore.Store {
	e.T.Helper()
	opts, err := embedded.ClientOptions(e.Creds(), true)
	if err != nil {
		e.T.Fatal(err)
	}
	nc, err := nats.Connect(e.NATSURL, opts...)
	if err != nil {
		e.T.Fatal(err)
	}
	e.T.Cleanup(nc.Close)
	st, err := eventstore.Open(context.Background(), eventstore.Config{Conn: nc, Keys: Keyring(e.T, e.Secret), ReadOnly: true})
	if err != nil {
		e.T.Fatal(err)
	}
	return st
}

// NewKeys creates the NATS users of a test's server.
func NewKeys(t testing.TB) embedded.Keys {
	t.Helper()
	k, err := embedded.LoadOrCreateKeys(t.TempDir())
	if err != nil {
		t.Fatal(err)
	}
	return k
}

// PublicKey is the event public key of instances with this secret key.
func PublicKey(t testing.TB, secret []byte) events.PublicKey {
	t.Helper()
	signer, err := eventkeys.Signer(secret, nil)
	if err != nil {
		t.Fatal(err)
	}
	return signer.PublicKey()
}

// Keyring trusts what instances with this secret key sign, as an auditor given their public
// key does.
func Keyring(t testing.TB, secret []byte) *events.Keyring {
	t.Helper()
	return events.NewKeyring(0, PublicKey(t, secret))
}

// OpenStore opens the event store at url as an auditor would, trusting what instances with
// secret sign: read-only with the reader's key, or, on a server without authentication (zero
// keys), creating or updating the stream with the given replicas as deployed.
func OpenStore(t testing.TB, url string, keys embedded.Keys, replicas int, secret []byte) *eventstore.Store {
	t.Helper()
	var opts []nats.Option
	if keys.Dir != "" {
		var err error
		if opts, err = embedded.ClientOptions(keys.ReaderSeed(), false); err != nil {
			t.Fatal(err)
		}
	}
	nc, err := nats.Connect(url, opts...)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(nc.Close)
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	st, err := eventstore.Open(ctx, eventstore.Config{Conn: nc, Replicas: replicas, ReadOnly: true, Keys: Keyring(t, secret)})
	if err != nil {
		t.Fatal(err)
	}
	return st
}
