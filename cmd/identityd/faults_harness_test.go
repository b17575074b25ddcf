//go:build faults

package main

import (
	"testing"

	"github.com/identityd/identityd/cmd/internal/wiring/wiringtest"
	"github.com/identityd/identityd/events/embedded"
	"github.com/identityd/identityd/events/eventstore"
)

// identitydStore opens the event store read-only with identityd's key.
func (e *env) identitydStore() *eventstore.Store { return e.IdentitydStore() }

// testKeys creates the NATS users of a test's server.
func testKeys(t testing.TB) embedded.Keys { return wiringtest.NewKeys(t) }

// openStore opens the event store at url as an auditor would (wiringtest.OpenStore).
func openStore(t testing.TB, url string, keys embedded.Keys, replicas int, secret []byte) *eventstore.Store {
	return wiringtest.OpenStore(t, url, keys, replicas, secret)
}
