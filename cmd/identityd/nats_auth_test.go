package main

import (
	"context"
	"errors"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/identityd/identityd/cmd/internal/wiring"
	"github.com/identityd/identityd/events/embedded"
	"github.com/identityd/identityd/events/eventstore"
	"github.com/identityd/identityd/projections/dbtest"
)

// TestEmbeddedNATSAuth: identityd on embedded NATS generates its keys into the data dir
// (0600), reuses them on restart, serves writes with its own key; a client without a key is
// refused, and the reader's key reads the stream but cannot publish an event.
func TestEmbeddedNATSAuth(t *testing.T) {
	cfg := testConfig(t, "", dbtest.Backends[0].URL(t))
	cfg.NATSListen = "127.0.0.1:0"
	reader := filepath.Join(embedded.KeyDir(cfg.DataDir), embedded.ReaderSeedFile)
	// The first instance stops when this subtest ends; the restart below reuses its data dir.
	t.Run("first start", func(t *testing.T) { firstStart(t, cfg) })
	readerKey, err := embedded.PublicKey(reader)
	if err != nil {
		t.Fatal(err)
	}
	opts, err := embedded.ClientOptions(reader, false)
	if err != nil {
		t.Fatal(err)
	}
	// A restart on the same data dir keeps the keys handed out to subscribers.
	in := startInstance(t, cfg, nil)
	signUp(t, in.URL, "grace@example.com", "Grace")
	if again, _ := embedded.PublicKey(reader); again != readerKey {
		t.Fatal("the reader's key changed on restart")
	}
	nc, err := nats.Connect(in.EmbeddedNATS().ClientURL(), opts...)
	if err != nil {
		t.Fatalf("the reader's key no longer works after a restart: %v", err)
	}
	nc.Close()
}

func firstStart(t *testing.T, cfg wiring.Config) {
	in := startInstance(t, cfg, nil)
	_, id := signUp(t, in.URL, "ada@example.com", "Ada")

	keyDir := embedded.KeyDir(cfg.DataDir)
	for _, name := range []string{embedded.IdentitydSeedFile, embedded.ReaderSeedFile} {
		st, err := os.Stat(filepath.Join(keyDir, name))
		if err != nil {
			t.Fatal(err)
		}
		if st.Mode().Perm() != 0o600 {
			t.Errorf("%s has mode %#o, want 0600", name, st.Mode().Perm())
		}
	}
	url := in.EmbeddedNATS().ClientURL()
	if !strings.HasPrefix(url, "nats://127.0.0.1:") {
		t.Errorf("embedded NATS at %s, want loopback", url)
	}
	if nc, err := nats.Connect(url, nats.Timeout(2*time.Second)); err == nil {
		nc.Close()
		t.Fatal("connected to identityd's NATS without credentials")
	} else if !errors.Is(err, nats.ErrAuthorization) {
		t.Fatalf("err = %v, want an authorization error", err)
	}

	reader := embedded.DefaultReaderCredentials(cfg.DataDir)
	opts, err := embedded.ClientOptions(reader, false)
	if err != nil {
		t.Fatal(err)
	}
	violations := make(chan error, 10)
	nc, err := nats.Connect(url, append(opts, nats.ErrorHandler(func(_ *nats.Conn, _ *nats.Subscription, err error) {
		violations <- err
	}))...)
	if err != nil {
		t.Fatalf("reader: %v", err)
	}
	defer nc.Close()
	ctx := context.Background()
	st, err := eventstore.Open(ctx, eventstore.Config{Conn: nc, ReadOnly: true, Keys: keyringFor(t, cfg.SecretKey)})
	if err != nil {
		t.Fatal(err)
	}
	last, err := st.LastSequence(ctx)
	if err != nil || last == 0 {
		t.Fatalf("last = %d, %v", last, err)
	}
	if envs, err := st.ReadAll(ctx, 1, 100); err != nil || len(envs) != int(last) {
		t.Fatalf("reader read %d events, %v", len(envs), err)
	}
	js, _ := jetstream.New(nc)
	pctx, cancel := context.WithTimeout(ctx, 2*time.Second)
	defer cancel()
	if _, err := js.Publish(pctx, "identity.user."+id+".token_created", []byte(`{"schema_version":1}`)); err == nil {
		t.Fatal("the reader published an event")
	}
	select {
	case err := <-violations:
		if !errors.Is(err, nats.ErrPermissionViolation) {
			t.Fatalf("async error %v, want a permissions violation", err)
		}
	case <-time.After(5 * time.Second):
		t.Fatal("no permissions violation reported")
	}
	if got, _ := st.LastSequence(ctx); got != last {
		t.Fatalf("stream moved from %d to %d", last, got)
	}

}

func TestConfigNATSCredsNeedsExternalNATS(t *testing.T) {
	env := map[string]string{"IDENTITYD_NATS_CREDS": "/keys/identityd.nk"}
	_, err := loadConfig(nil, func(k string) string { return env[k] }, &strings.Builder{})
	if err == nil || !strings.Contains(err.Error(), "IDENTITYD_NATS_CREDS") {
		t.Fatalf("creds with the embedded server: %v", err)
	}
	env["IDENTITYD_NATS_URL"] = "nats://nats:4222"
	c, err := loadConfig(nil, func(k string) string { return env[k] }, &strings.Builder{})
	if err != nil || c.NATSCreds != "/keys/identityd.nk" {
		t.Fatalf("config = %+v, %v", c, err)
	}
}
