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

	"github.com/identityd/identityd/events"
	"github.com/identityd/identityd/events/embedded"
	"github.com/identityd/identityd/projections/dbtest"
)

// identityctl reads with the reader's key: from --nats-creds, else from the data dir; without
// any key it is refused, and it never creates the stream.
func TestNATSCredentials(t *testing.T) {
	t.Parallel()
	dir := t.TempDir()
	w := startWorld(t, dbtest.PostgresURL(t), embedded.KeyDir(dir), t.TempDir())
	w.seed()
	last := w.sync()
	eventKeys := eventKeys(t)

	t.Run("the reader's key from the data dir", func(t *testing.T) {
		env := map[string]string{"IDENTITYD_NATS_URL": w.natsURL, "IDENTITYD_DATABASE_URL": w.dbURL, "IDENTITYD_DATA_DIR": dir, "IDENTITYD_EVENT_PUBLIC_KEYS": eventKeys}
		ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
		defer cancel()
		if n := len(runCtl(ctx, t, env, "events", "export").expect(t, 0).lines); uint64(n) != last {
			t.Fatalf("exported %d of %d events", n, last)
		}
		line := decode[credentialsLine](t, runCtl(ctx, t, env, "nats", "credentials").expect(t, 0).lines[0])
		if line.User != embedded.ReaderUser || line.File != w.keys.ReaderSeed() || line.PublicKey != w.keys.Reader {
			t.Fatalf("nats credentials = %+v, want the reader's %s %s", line, w.keys.ReaderSeed(), w.keys.Reader)
		}
		seed := runRaw(ctx, env, "nats", "credentials", "--seed")
		want, err := os.ReadFile(w.keys.ReaderSeed())
		if err != nil || seed.code != 0 || seed.stdout != string(want) {
			t.Fatalf("nats credentials --seed: %v\n%s", err, seed)
		}
	})

	t.Run("without a key identityctl is refused", func(t *testing.T) {
		env := map[string]string{"IDENTITYD_NATS_URL": w.natsURL, "IDENTITYD_DATABASE_URL": w.dbURL, "IDENTITYD_DATA_DIR": t.TempDir(), "IDENTITYD_EVENT_PUBLIC_KEYS": eventKeys}
		ctx := context.Background()
		r := runCtl(ctx, t, env, "events", "export").expect(t, exitError)
		if !strings.Contains(r.stderr, "uthorization") {
			t.Fatalf("stderr does not say authorization:\n%s", r)
		}
		r = runCtl(ctx, t, env, "nats", "credentials").expect(t, exitError)
		if !strings.Contains(r.stderr, "no reader key") {
			t.Fatalf("nats credentials without a key:\n%s", r)
		}
	})

	t.Run("an unknown stream is not created", func(t *testing.T) {
		// A second server with the same users and no stream yet.
		srv, err := embedded.Start(embedded.Config{StoreDir: t.TempDir(), Keys: w.keys})
		if err != nil {
			t.Fatal(err)
		}
		defer func() { srv.Shutdown(); srv.WaitForShutdown() }()
		env := map[string]string{"IDENTITYD_NATS_URL": srv.ClientURL(), "IDENTITYD_NATS_CREDS": w.keys.ReaderSeed(), "IDENTITYD_DATABASE_URL": w.dbURL, "IDENTITYD_EVENT_PUBLIC_KEYS": eventKeys}
		ctx := context.Background()
		r := runCtl(ctx, t, env, "events", "export").expect(t, exitError)
		if !strings.Contains(r.stderr, "not found") {
			t.Fatalf("export without a stream:\n%s", r)
		}
		auth, err := embedded.ClientOptions(w.keys.IdentitydSeed(), true)
		if err != nil {
			t.Fatal(err)
		}
		nc, err := nats.Connect(srv.ClientURL(), auth...)
		if err != nil {
			t.Fatal(err)
		}
		defer nc.Close()
		js, _ := jetstream.New(nc)
		if _, err := js.Stream(ctx, events.StreamName); !errors.Is(err, jetstream.ErrStreamNotFound) {
			t.Fatalf("identityctl created the stream: %v", err)
		}
	})
}

// nats keys writes both seeds (0600) and the server include file, and keeps the keys on a
// second run.
func TestNATSKeys(t *testing.T) {
	t.Parallel()
	dir := filepath.Join(t.TempDir(), "keys")
	ctx := context.Background()
	first := runCtl(ctx, t, nil, "nats", "keys", "--dir", dir).expect(t, 0)
	if len(first.lines) != 3 {
		t.Fatalf("nats keys printed %d lines:\n%s", len(first.lines), first)
	}
	k, err := embedded.LoadOrCreateKeys(dir)
	if err != nil {
		t.Fatal(err)
	}
	for i, want := range []credentialsLine{
		{User: embedded.IdentitydUser, File: k.IdentitydSeed(), PublicKey: k.Identityd},
		{User: embedded.ReaderUser, File: k.ReaderSeed(), PublicKey: k.Reader},
	} {
		if got := decode[credentialsLine](t, first.lines[i]); got != want {
			t.Errorf("line %d = %+v, want %+v", i, got, want)
		}
	}
	conf, err := os.ReadFile(filepath.Join(dir, embedded.ServerConfigFile))
	if err != nil {
		t.Fatal(err)
	}
	want, _ := embedded.ServerConfig(k)
	if string(conf) != want {
		t.Fatalf("server config:\n%s\nwant:\n%s", conf, want)
	}
	second := runCtl(ctx, t, nil, "nats", "keys", "--dir", dir).expect(t, 0)
	if second.stdout != first.stdout {
		t.Fatalf("a second run changed the keys:\n%s\n%s", first, second)
	}
	runCtl(ctx, t, nil, "nats", "keys").expect(t, exitUsage)
}
