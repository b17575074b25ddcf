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

// Signer signs (and MACs) the events tests append; Keys trusts it, nothing unsigned, and takes
// the MAC fast path as identityd's own readers do. SignatureKeys trusts the same key without
// the MAC key, as a subscriber given only the public key does.
var (
	Signer        = mustKey()
	SignatureKeys = events.NewKeyring(0, Signer.PublicKey())
	Keys          = SignatureKeys.WithMAC(testMAC)
)

var testMAC = events.MACKey(bytes.Repeat([]byte("test-mac"), 4))

func mustKey() events.SigningKey {
	k, err := events.NewSigningKey(bytes.Repeat([]byte("test-key"), 4))
	if err != nil {
		panic(err) // a constant 32-byte seed
	}
	return k.WithMAC(testMAC)
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
