package embedded_test

import (
	"context"
	"encoding/json"
	"errors"
	"os"
	"path/filepath"
	"reflect"
	"regexp"
	"strings"
	"testing"
	"time"

	"github.com/google/uuid"
	"github.com/nats-io/nats-server/v2/server"
	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
	"github.com/nats-io/nkeys"

	"github.com/identityd/identityd/events"
	"github.com/identityd/identityd/events/embedded"
	"github.com/identityd/identityd/events/eventstore"
	"github.com/identityd/identityd/events/eventstoretest"
)

// The attacker on the host: without a key the server is closed; with the reader's key the
// stream can be read but not written, changed or deleted; identityd's key writes.
func TestEmbeddedAuth(t *testing.T) {
	st, srv := eventstoretest.Start(t, embedded.Config{})
	checkAuth(t, srv.ClientURL(), eventstoretest.NATSKeys(t, srv), st)
}

// deploy/nats.conf with the include file `identityctl nats keys` writes admits the same users
// with the same permissions as the embedded server, binds monitoring to loopback, and holds no
// password.
func TestDeployConfig(t *testing.T) {
	dir := t.TempDir()
	k, err := embedded.LoadOrCreateKeys(filepath.Join(dir, "auth"))
	if err != nil {
		t.Fatal(err)
	}
	if _, err := embedded.WriteServerConfig(k); err != nil {
		t.Fatal(err)
	}
	conf, err := os.ReadFile("../../deploy/nats.conf")
	if err != nil {
		t.Fatal(err)
	}
	if !strings.Contains(string(conf), "include ./auth/"+embedded.ServerConfigFile) {
		t.Fatalf("deploy/nats.conf does not include auth/%s", embedded.ServerConfigFile)
	}
	for _, secret := range []*regexp.Regexp{regexp.MustCompile(`(?i)password|token\s*[:=]`), regexp.MustCompile(`S[UAO][A-Z2-7]{50,}`)} {
		if m := secret.FindString(string(conf)); m != "" {
			t.Errorf("deploy/nats.conf holds a secret: %q", m)
		}
	}
	path := filepath.Join(dir, "nats.conf")
	if err := os.WriteFile(path, conf, 0o600); err != nil {
		t.Fatal(err)
	}
	opts, err := server.ProcessConfigFile(path)
	if err != nil {
		t.Fatal(err)
	}
	if opts.HTTPHost != "127.0.0.1" {
		t.Errorf("monitoring listens on %q, want 127.0.0.1", opts.HTTPHost)
	}
	if len(opts.Users) != 0 || opts.Username != "" || opts.Authorization != "" || opts.NoAuthUser != "" {
		t.Errorf("password, token or anonymous users configured: %+v %q %q %q", opts.Users, opts.Username, opts.Authorization, opts.NoAuthUser)
	}
	want := map[string]*server.Permissions{k.Identityd: embedded.IdentitydPermissions(), k.Reader: embedded.ReaderPermissions()}
	if len(opts.Nkeys) != len(want) {
		t.Fatalf("nkey users = %d, want %d", len(opts.Nkeys), len(want))
	}
	for _, u := range opts.Nkeys {
		if !reflect.DeepEqual(u.Permissions, want[u.Nkey]) {
			got, _ := json.Marshal(u.Permissions)
			exp, _ := json.Marshal(want[u.Nkey])
			t.Errorf("user %s permissions\n got %s\nwant %s", u.Nkey, got, exp)
		}
	}
	// Run it, on a free port and a temp store, and attack it as on the embedded server.
	opts.Port, opts.HTTPPort, opts.StoreDir, opts.NoSigs, opts.NoLog = server.RANDOM_PORT, 0, filepath.Join(dir, "js"), true, true
	s, err := server.NewServer(opts)
	if err != nil {
		t.Fatal(err)
	}
	go s.Start()
	t.Cleanup(func() { s.Shutdown(); s.WaitForShutdown() })
	if !s.ReadyForConnections(10 * time.Second) {
		t.Fatal("server from deploy/nats.conf not ready")
	}
	url := strings.Replace(s.ClientURL(), "0.0.0.0", "127.0.0.1", 1)
	opt, err := embedded.ClientOptions(k.IdentitydSeed(), true)
	if err != nil {
		t.Fatal(err)
	}
	nc, err := nats.Connect(url, opt...)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(nc.Close)
	st, err := eventstore.Open(context.Background(), eventstore.Config{Conn: nc, Keys: eventstoretest.Keys, Signer: eventstoretest.Signer})
	if err != nil {
		t.Fatal(err)
	}
	checkAuth(t, url, k, st)
}

// checkAuth attacks the server at url whose users are k; st is identityd's store on it.
func checkAuth(t *testing.T, url string, k embedded.Keys, st *eventstore.Store) {
	ctx := context.Background()
	victim := uuid.New()
	if _, err := st.Append(ctx, events.Metadata{Actor: "system"}, nil, []events.Change{
		{ID: uuid.Must(uuid.NewV7()), At: time.Now(), Event: events.Renamed(victim, "Ada", "Ada King")},
	}); err != nil {
		t.Fatalf("identityd's key cannot append: %v", err)
	}
	last, err := st.LastSequence(ctx)
	if err != nil || last == 0 {
		t.Fatalf("last sequence %d, %v", last, err)
	}

	t.Run("no credentials are refused", func(t *testing.T) {
		nc, err := nats.Connect(url, nats.Timeout(2*time.Second))
		if err == nil {
			nc.Close()
			t.Fatal("connected without credentials")
		}
		if !errors.Is(err, nats.ErrAuthorization) {
			t.Fatalf("err = %v, want an authorization error", err)
		}
	})
	t.Run("an unknown key is refused", func(t *testing.T) {
		kp, _ := nkeys.CreateUser()
		seed, _ := kp.Seed()
		path := filepath.Join(t.TempDir(), "stranger.nk")
		if err := os.WriteFile(path, seed, 0o600); err != nil {
			t.Fatal(err)
		}
		opt, err := embedded.ClientOptions(path, false)
		if err != nil {
			t.Fatal(err)
		}
		if nc, err := nats.Connect(url, append(opt, nats.Timeout(2*time.Second))...); err == nil {
			nc.Close()
			t.Fatal("connected with a key the server does not know")
		}
	})

	// The reader, with an error handler that collects the server's permission refusals.
	asyncErrs := make(chan error, 100)
	opt, err := embedded.ClientOptions(k.ReaderSeed(), false)
	if err != nil {
		t.Fatal(err)
	}
	rc, err := nats.Connect(url, append(opt, nats.ErrorHandler(func(_ *nats.Conn, _ *nats.Subscription, err error) {
		asyncErrs <- err
	}))...)
	if err != nil {
		t.Fatalf("reader cannot connect: %v", err)
	}
	t.Cleanup(rc.Close)
	rjs, err := jetstream.New(rc)
	if err != nil {
		t.Fatal(err)
	}
	expectViolation := func(t *testing.T, subject string) {
		t.Helper()
		timeout := time.After(5 * time.Second)
		for {
			select {
			case err := <-asyncErrs:
				if errors.Is(err, nats.ErrPermissionViolation) && strings.Contains(err.Error(), subject) {
					return
				}
			case <-timeout:
				t.Fatalf("no permissions violation for %s", subject)
			}
		}
	}
	unchanged := func(t *testing.T) {
		t.Helper()
		if got, err := st.LastSequence(ctx); err != nil || got != last {
			t.Fatalf("stream's last sequence = %d, %v; want %d unchanged", got, err, last)
		}
	}

	t.Run("reader reads the stream", func(t *testing.T) {
		ro, err := eventstore.Open(ctx, eventstore.Config{Conn: rc, ReadOnly: true, Keys: eventstoretest.Keys})
		if err != nil {
			t.Fatalf("read-only open: %v", err)
		}
		if _, err := ro.Append(ctx, events.Metadata{Actor: "system"}, nil, []events.Change{
			{ID: uuid.New(), At: time.Now(), Event: events.Renamed(victim, "Ada King", "Mallory")},
		}); !errors.Is(err, eventstore.ErrReadOnly) {
			t.Fatalf("append on a read-only store: %v, want ErrReadOnly", err)
		}
		envs, err := ro.ReadAll(ctx, 1, 100) // direct gets
		if err != nil || len(envs) != int(last) {
			t.Fatalf("read %d events, %v; want %d", len(envs), err, last)
		}
		if ro.StreamConfig().Replicas != 1 {
			t.Fatalf("read-only replicas = %d, want the stream's 1", ro.StreamConfig().Replicas)
		}
		oc, err := rjs.OrderedConsumer(ctx, events.StreamName, jetstream.OrderedConsumerConfig{})
		if err != nil {
			t.Fatalf("ordered consumer: %v", err)
		}
		if _, err := oc.Next(jetstream.FetchMaxWait(5 * time.Second)); err != nil {
			t.Fatalf("ordered consumer next: %v", err)
		}
		s, err := rjs.Stream(ctx, events.StreamName)
		if err != nil {
			t.Fatal(err)
		}
		dc, err := s.CreateOrUpdateConsumer(ctx, jetstream.ConsumerConfig{Durable: "reader-test", AckPolicy: jetstream.AckExplicitPolicy})
		if err != nil {
			t.Fatalf("durable consumer: %v", err)
		}
		msg, err := dc.Next(jetstream.FetchMaxWait(5 * time.Second))
		if err != nil {
			t.Fatalf("durable next: %v", err)
		}
		if err := msg.DoubleAck(ctx); err != nil {
			t.Fatalf("ack: %v", err)
		}
		if _, err := s.Consumer(ctx, "reader-test"); err != nil {
			t.Fatalf("consumer info: %v", err)
		}
		if err := s.DeleteConsumer(ctx, "reader-test"); err != nil {
			t.Fatalf("delete own consumer: %v", err)
		}
	})

	t.Run("reader cannot publish events", func(t *testing.T) {
		subj := "identity.user." + victim.String() + ".token_created"
		pctx, cancel := context.WithTimeout(ctx, 2*time.Second)
		defer cancel()
		if _, err := rjs.Publish(pctx, subj, []byte(`{"schema_version":1}`)); err == nil {
			t.Fatal("JetStream publish on the event stream was acknowledged")
		}
		expectViolation(t, subj)
		if err := rc.Publish(subj, []byte(`{}`)); err != nil { // core publish: refused asynchronously
			t.Fatal(err)
		}
		expectViolation(t, subj)
		unchanged(t)
	})

	t.Run("reader cannot change, purge or delete the stream", func(t *testing.T) {
		for _, api := range []string{
			"$JS.API.STREAM.DELETE." + events.StreamName,
			"$JS.API.STREAM.PURGE." + events.StreamName,
			"$JS.API.STREAM.MSG.DELETE." + events.StreamName,
			"$JS.API.STREAM.UPDATE." + events.StreamName,
			"$JS.API.STREAM.CREATE.FORGED",
		} {
			body := []byte(`{}`)
			switch {
			case strings.Contains(api, "MSG.DELETE"):
				body = []byte(`{"seq":1,"no_erase":true}`)
			case strings.Contains(api, "UPDATE"):
				cfg := st.StreamConfig()
				cfg.DenyDelete, cfg.DenyPurge = false, false
				body, _ = json.Marshal(cfg)
			case strings.Contains(api, "CREATE"):
				body = []byte(`{"name":"FORGED","subjects":["identity_forged.>"]}`)
			}
			if m, err := rc.Request(api, body, time.Second); err == nil {
				t.Errorf("%s answered: %s", api, m.Data)
			}
			expectViolation(t, api)
		}
		info, err := st.JetStream().Stream(ctx, events.StreamName)
		if err != nil {
			t.Fatalf("stream gone: %v", err)
		}
		if c := info.CachedInfo().Config; !c.DenyDelete || !c.DenyPurge {
			t.Fatalf("stream config changed: %+v", c)
		}
		unchanged(t)
	})

	t.Run("reader cannot have the server deliver into the stream", func(t *testing.T) {
		s, err := rjs.Stream(ctx, events.StreamName)
		if err != nil {
			t.Fatal(err)
		}
		// A push consumer whose deliver subject is an event subject would make the server
		// publish for the reader; the server refuses the cycle.
		if _, err := s.CreateOrUpdateConsumer(ctx, jetstream.ConsumerConfig{
			Name: "forge", DeliverSubject: "identity.user." + victim.String() + ".token_created", AckPolicy: jetstream.AckNonePolicy,
		}); err == nil {
			t.Fatal("push consumer delivering into identity.> accepted")
		}
		time.Sleep(100 * time.Millisecond)
		unchanged(t)
	})

	t.Run("reader cannot watch identityd's replies", func(t *testing.T) {
		sub, err := rc.SubscribeSync(embedded.IdentitydInboxPrefix + ".>")
		if err != nil {
			t.Fatal(err)
		}
		defer func() { _ = sub.Unsubscribe() }()
		expectViolation(t, embedded.IdentitydInboxPrefix)
	})

	t.Run("identityd cannot delete or purge the event stream", func(t *testing.T) {
		if err := st.JetStream().DeleteStream(ctx, events.StreamName); err == nil {
			t.Fatal("identityd deleted the event stream")
		}
		if _, err := st.JetStream().Stream(ctx, events.StreamName); err != nil {
			t.Fatalf("stream gone: %v", err)
		}
		unchanged(t)
	})
}

// A restart reuses the keys; seeds are private to the owner; a seed others can read is refused.
func TestLoadOrCreateKeys(t *testing.T) {
	dir := filepath.Join(t.TempDir(), "credentials")
	k, err := embedded.LoadOrCreateKeys(dir)
	if err != nil {
		t.Fatal(err)
	}
	if err := k.Validate(); err != nil {
		t.Fatal(err)
	}
	for _, p := range []string{dir, k.IdentitydSeed(), k.ReaderSeed()} {
		st, err := os.Stat(p)
		if err != nil {
			t.Fatal(err)
		}
		if st.Mode().Perm()&0o077 != 0 {
			t.Errorf("%s has mode %#o", p, st.Mode().Perm())
		}
	}
	again, err := embedded.LoadOrCreateKeys(dir)
	if err != nil || again != k {
		t.Fatalf("restart: %+v, %v; want %+v", again, err, k)
	}
	if err := os.Chmod(k.ReaderSeed(), 0o644); err != nil {
		t.Fatal(err)
	}
	if _, err := embedded.LoadOrCreateKeys(dir); !errors.Is(err, embedded.ErrKeyFileMode) {
		t.Fatalf("world-readable seed: %v, want ErrKeyFileMode", err)
	}
	if err := embedded.Config.Validate(embedded.Config{StoreDir: dir, Listen: "127.0.0.1:0"}); err == nil {
		t.Fatal("a server without keys is valid")
	}
}

func TestLoopback(t *testing.T) {
	for addr, want := range map[string]bool{
		"127.0.0.1:14222": true, "[::1]:4222": true, "localhost:1": true,
		"0.0.0.0:14222": false, ":14222": false, "10.0.0.5:4222": false,
	} {
		if got := embedded.Loopback(addr); got != want {
			t.Errorf("Loopback(%q) = %v, want %v", addr, got, want)
		}
	}
}
