// Package eventstoretest gives tests a real event store: an in-process nats-server with
// JetStream on a random port and a temporary directory, a connection, and the IDENTITY stream,
// all closed when the test ends.
package eventstoretest

import (
	"bytes"
	"context"
	"testing"

	"github.com/nats-io/nats-server/v2/server"
	"github.com/nats-io/nats.go"

	"github.com/identityd/identityd/events"
	"github.com/identityd/identityd/events/embedded"
	"github.com/identityd/identityd/events/eventstore"
)

// Signer signs the events tests append; Keys trusts it (and nothing unsigned).
var (
	Signer = mustKey()
	Keys   = events.NewKeyring(0, Signer.PublicKey())
)

func mustKey() events.SigningKey {
	k, err := events.NewSigningKey(bytes.Repeat([]byte("test-key"), 4))
	if err != nil {
		panic(err) // a constant 32-byte seed
	}
	return k
}

// Start runs a server (cfg.StoreDir defaults to a temporary directory) and opens the store.
func Start(t testing.TB, cfg embedded.Config) (*eventstore.Store, *server.Server) {
	t.Helper()
	if cfg.StoreDir == "" {
		cfg.StoreDir = t.TempDir()
	}
	srv, err := embedded.Start(cfg)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { srv.Shutdown(); srv.WaitForShutdown() })
	nc, err := nats.Connect(srv.ClientURL())
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(nc.Close)
	st, err := eventstore.Open(context.Background(), eventstore.Config{Conn: nc, Keys: Keys, Signer: Signer})
	if err != nil {
		t.Fatal(err)
	}
	return st, srv
}
