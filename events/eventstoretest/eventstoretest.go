// Package eventstoretest gives tests a real event store: an in-process nats-server with
// JetStream on a random port and a temporary directory, a connection, and the IDENTITY stream,
// all closed when the test ends. The server authenticates as identityd's does: the store
// connects with identityd's NATS key, and Connect gives a test a connection as either user.
package eventstoretest

import (
	"bytes"
	"context"
	"sync"
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

// natsKeys remembers each running server's NATS users, for Connect.
var natsKeys sync.Map // *server.Server → embedded.Keys

// StartServer runs a server (cfg.StoreDir defaults to a temporary directory; cfg.Keys, when
// unset, are created in another one) until the test ends.
func StartServer(t testing.TB, cfg embedded.Config) *server.Server {
	t.Helper()
	if cfg.StoreDir == "" {
		cfg.StoreDir = t.TempDir()
	}
	if cfg.Keys.Dir == "" {
		k, err := embedded.LoadOrCreateKeys(t.TempDir())
		if err != nil {
			t.Fatal(err)
		}
		cfg.Keys = k
	}
	srv, err := embedded.Start(cfg)
	if err != nil {
		t.Fatal(err)
	}
	natsKeys.Store(srv, cfg.Keys)
	t.Cleanup(func() { srv.Shutdown(); srv.WaitForShutdown(); natsKeys.Delete(srv) })
	return srv
}

// NATSKeys are the NATS users of a server started by StartServer or Start.
func NATSKeys(t testing.TB, srv *server.Server) embedded.Keys {
	t.Helper()
	k, ok := natsKeys.Load(srv)
	if !ok {
		t.Fatal("eventstoretest: server not started by eventstoretest")
	}
	return k.(embedded.Keys) //nolint:forcetypeassert // only Keys are stored
}

// Connect connects to srv as user (embedded.IdentitydUser or embedded.ReaderUser) until the
// test ends.
func Connect(t testing.TB, srv *server.Server, user string, opts ...nats.Option) *nats.Conn {
	t.Helper()
	nc, err := nats.Connect(srv.ClientURL(), append(ClientOptions(t, srv, user), opts...)...)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(nc.Close)
	return nc
}

// ClientOptions are the options that authenticate as user on srv.
func ClientOptions(t testing.TB, srv *server.Server, user string) []nats.Option {
	t.Helper()
	k := NATSKeys(t, srv)
	path := k.ReaderSeed()
	if user == embedded.IdentitydUser {
		path = k.IdentitydSeed()
	}
	opts, err := embedded.ClientOptions(path, user == embedded.IdentitydUser)
	if err != nil {
		t.Fatal(err)
	}
	return opts
}

// Start runs a server (see StartServer) and opens the store as identityd.
func Start(t testing.TB, cfg embedded.Config) (*eventstore.Store, *server.Server) {
	t.Helper()
	srv := StartServer(t, cfg)
	nc := Connect(t, srv, embedded.IdentitydUser)
	st, err := eventstore.Open(context.Background(), eventstore.Config{Conn: nc, Keys: Keys, Signer: Signer})
	if err != nil {
		t.Fatal(err)
	}
	return st, srv
}
