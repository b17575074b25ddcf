package main

import (
	"context"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/identityd/identityd/cmd/internal/wiring"
	"github.com/identityd/identityd/events"
)

// adminGrantedFilter matches every admin_granted event of every user.
var adminGrantedFilter = events.SubjectRoot + ".user.*." + strings.TrimPrefix(string(events.TypeAdminGranted), "identityd.user.")

// adminGrants is every admin_granted event in the stream.
func (e *env) adminGrants() []events.Envelope {
	e.T.Helper()
	evs, err := e.store().Read(context.Background(), adminGrantedFilter, 1, 0)
	if err != nil {
		e.T.Fatal(err)
	}
	return evs
}

// adminStatus is the status of the admin audit log for a token, on an instance.
func adminStatus(t *testing.T, in *instance, token string) int {
	t.Helper()
	r := call(t, in.URL, "GET", "/api/v0/admin/events", token, nil)
	if r.Status != 200 && r.errCode(t) != "scope_not_granted" {
		t.Fatalf("admin log: %d %s", r.Status, r.Body)
	}
	return r.Status
}

// The look-alike attack (issue 11, item 2): with the first administrator configured as
// ops@example.com, an account signed up as opſ@example.com (U+017F LATIN SMALL LETTER LONG S,
// which strings.EqualFold matches with "s") gets no administrator rights. Rights are the
// user id's that held ops@example.com at the bootstrap; no e-mail is compared afterwards.
func TestAdminLookAlikeEmailGetsNoRights(t *testing.T) {
	e := postgresEnv(t)
	in := e.start()
	ops, opsID := signUp(t, in.URL, "ops@example.com", "Ops")

	// The attacker signs up with the look-alike address. Normalization may refuse it
	// (invalid_email) or fold it onto the real address (email_taken); if it is accepted, the
	// account must still be an ordinary user.
	r := call(t, in.URL, "POST", "/api/v0/users", "", map[string]string{"email": "opſ@example.com", "name": "Mallory", "password": "correct horse battery"})
	var attacker string
	switch r.Status {
	case 201:
		attacker = r.json(t)["token"].(string)
		t.Log("the look-alike address was accepted at sign-up")
	case 400, 409:
		if code := r.errCode(t); code != "invalid_email" && code != "email_taken" {
			t.Fatalf("look-alike sign-up: %d %s", r.Status, r.Body)
		}
	default:
		t.Fatalf("look-alike sign-up: %d %s", r.Status, r.Body)
	}

	e.BootstrapAdmin = "ops@example.com"
	again := e.start() // a restart with the bootstrap configured
	if g := e.adminGrants(); len(g) != 1 || g[0].Subject != "user/"+opsID || g[0].Metadata.Actor != "system" {
		t.Fatalf("bootstrap grants: %+v, want one, to ops, by the system", g)
	}
	for _, inst := range []*instance{in, again} {
		if s := adminStatus(t, inst, ops); s != 200 {
			t.Fatalf("ops: %d, want 200", s)
		}
		if attacker != "" {
			if s := adminStatus(t, inst, attacker); s != 403 {
				t.Fatalf("look-alike account on the admin log: %d, want 403", s)
			}
			if r := call(t, inst.URL, "PUT", "/api/v0/admin/users/"+opsID+"/admin", attacker, nil); r.Status != 403 || r.errCode(t) != "scope_not_granted" {
				t.Fatalf("look-alike account granting: %d %s", r.Status, r.Body)
			}
		}
	}
}

// The first-registration attack (issue 11, item 3): the first administrator is configured by
// e-mail and made by the bootstrap; after the administrator deletes the account, whoever
// registers the same address is a new user, and no restart makes it an administrator.
func TestAdminAddressReRegisteredGetsNoRights(t *testing.T) {
	e := postgresEnv(t)
	e.BootstrapAdmin = "ops@example.com"
	first := e.start() // nobody holds the address yet: a warning, no grant
	if g := e.adminGrants(); len(g) != 0 {
		t.Fatalf("grants before the account exists: %+v", g)
	}
	ops, opsID := signUp(t, first.URL, "ops@example.com", "Ops")
	if s := adminStatus(t, first, ops); s != 403 {
		t.Fatalf("ops before the bootstrap ran: %d, want 403", s)
	}
	second := e.start() // restart: the bootstrap grants ops's account
	if s := adminStatus(t, second, ops); s != 200 {
		t.Fatalf("ops after the bootstrap: %d, want 200", s)
	}
	if s := adminStatus(t, first, ops); s != 200 {
		t.Fatalf("ops on the other instance: %d, want 200", s)
	}
	mustStatus(t, call(t, second.URL, "DELETE", "/api/v0/user", ops, nil), 204)

	attacker, attackerID := signUp(t, first.URL, "ops@example.com", "Mallory")
	if attackerID == opsID {
		t.Fatal("the re-registered address got the deleted user's id")
	}
	third := e.start() // restart with the same setting: the bootstrap happened once already
	for _, in := range []*instance{first, second, third} {
		if s := adminStatus(t, in, attacker); s != 403 {
			t.Fatalf("re-registered address on the admin log: %d, want 403", s)
		}
	}
	if g := e.adminGrants(); len(g) != 1 || g[0].Subject != "user/"+opsID {
		t.Fatalf("grants: %+v, want only the bootstrap's, to the deleted ops account", g)
	}
	e.checkStreamContract()
}

// Administrators grant and revoke rights by user id. A revocation takes effect on the next
// request on every instance, though the revoked user's credential was cached on each.
func TestAdminGrantAndRevokeByID(t *testing.T) {
	e := postgresEnv(t)
	a := e.start()
	root, rootID := signUp(t, a.URL, "root@example.com", "Root")
	bob, bobID := signUp(t, a.URL, "bob@example.com", "Bob")
	e.BootstrapAdmin = rootID // by user id
	b := e.start()

	// Users cannot grant; administrators can, and the grant holds on both instances at once.
	if r := call(t, a.URL, "PUT", "/api/v0/admin/users/"+bobID+"/admin", bob, nil); r.Status != 403 || r.errCode(t) != "scope_not_granted" {
		t.Fatalf("a user granting themselves: %d %s", r.Status, r.Body)
	}
	mustStatus(t, call(t, b.URL, "PUT", "/api/v0/admin/users/"+bobID+"/admin", root, nil), 204)
	mustStatus(t, call(t, a.URL, "PUT", "/api/v0/admin/users/"+bobID+"/admin", root, nil), 204) // no change, no event
	if n := len(e.adminGrants()); n != 2 {
		t.Fatalf("%d grants, want 2 (bootstrap, bob)", n)
	}
	if m := call(t, a.URL, "GET", "/api/v0/admin/users/"+bobID, root, nil); m.Status != 200 || m.json(t)["admin"] != true || m.json(t)["uuid"] != bobID {
		t.Fatalf("bob as admins see him: %d %s", m.Status, m.Body)
	}
	// Until each instance answers bob from its credential cache (an instance takes cache leases
	// once registered with the others), so the revocation is seen to drop cached entries.
	for _, in := range []*instance{a, b} {
		waitFor(t, 10*time.Second, func() bool {
			before := in.Cache().Stats().Hits
			if s := adminStatus(t, in, bob); s != 200 {
				t.Fatalf("bob after the grant: %d, want 200", s)
			}
			return in.Cache().Stats().Hits > before
		})
	}

	// Root revokes on one instance; bob's very next request fails on both.
	mustStatus(t, call(t, a.URL, "DELETE", "/api/v0/admin/users/"+bobID+"/admin", root, nil), 204)
	for _, in := range []*instance{b, a} {
		if s := adminStatus(t, in, bob); s != 403 {
			t.Fatalf("bob right after the revocation: %d, want 403", s)
		}
	}
	if m := call(t, b.URL, "GET", "/api/v0/admin/users/"+bobID, root, nil); m.Status != 200 || m.json(t)["admin"] != false {
		t.Fatalf("bob after the revocation: %d %s", m.Status, m.Body)
	}
	mustStatus(t, call(t, b.URL, "DELETE", "/api/v0/admin/users/"+bobID+"/admin", root, nil), 204) // no change

	// The rules and the error codes.
	for _, c := range []struct {
		method, path, token string
		status              int
		code                string
	}{
		{"DELETE", "/api/v0/admin/users/" + rootID + "/admin", root, 409, "admin_self_revocation"},
		{"DELETE", "/api/v0/admin/users/" + rootID + "/admin", bob, 403, "scope_not_granted"},
		{"PUT", "/api/v0/admin/users/0194f3a2-0000-7000-8000-000000000000/admin", root, 404, "user_not_found"},
		{"GET", "/api/v0/admin/users/0194f3a2-0000-7000-8000-000000000000", root, 404, "user_not_found"},
		{"PUT", "/api/v0/admin/users/not-a-uuid/admin", root, 400, "invalid_id"},
		{"GET", "/api/v0/admin/users/" + rootID, bob, 403, "scope_not_granted"},
		{"GET", "/api/v0/admin/users/" + rootID, "", 401, "missing_api_token"},
	} {
		if r := call(t, a.URL, c.method, c.path, c.token, nil); r.Status != c.status || r.errCode(t) != c.code {
			t.Errorf("%s %s: %d %s, want %d %s", c.method, c.path, r.Status, r.Body, c.status, c.code)
		}
	}
	if s := adminStatus(t, b, root); s != 200 {
		t.Fatalf("root after refusing their self-revocation: %d, want 200", s)
	}
	e.checkStreamContract()
}

// Instances starting together with the same bootstrap setting record one grant: the grant is a
// command on the user's aggregate, appended with an expectation, and a second one changes
// nothing.
func TestAdminBootstrapOnceWithConcurrentStarts(t *testing.T) {
	e := postgresEnv(t)
	in := e.start()
	_, opsID := signUp(t, in.URL, "ops@example.com", "Ops")
	var wg sync.WaitGroup
	errs := make([]error, 3)
	for i := range errs {
		wg.Add(1)
		go func() {
			defer wg.Done()
			cfg := testConfig(t, e.NATSURL, e.DBURL)
			cfg.SecretKey, cfg.BootstrapAdmin, cfg.NATSCreds = e.Secret, "ops@example.com", e.creds()
			ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
			defer cancel()
			a, err := wiring.Start(ctx, cfg)
			if err == nil {
				t.Cleanup(a.Close)
			}
			errs[i] = err
		}()
	}
	wg.Wait()
	for _, err := range errs {
		if err != nil {
			t.Fatal(err)
		}
	}
	if g := e.adminGrants(); len(g) != 1 || g[0].Subject != "user/"+opsID {
		t.Fatalf("grants: %+v, want exactly one, to ops", g)
	}
}
