package main

import (
	"context"
	"fmt"
	"io"
	"net/http"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/google/uuid"

	"github.com/identityd/identityd/cmd/internal/wiring"
	"github.com/identityd/identityd/events"
	"github.com/identityd/identityd/events/eventstore"
	"github.com/identityd/identityd/projections/credcache"
	"github.com/identityd/identityd/projections/dbtest"
)

// TestUserJourney walks the whole API on every read-model backend: sign-up, profile, tokens,
// revocation, sessions and deletion, with every response checked against openapi.yaml.
func TestUserJourney(t *testing.T) {
	for _, b := range dbtest.Backends {
		t.Run(b.Name, func(t *testing.T) {
			e := newEnv(t, b)
			in := e.start()
			base := in.URL

			session, userID := signUp(t, base, "  Ada@Example.com ", "Ada Lovelace")
			r := call(t, base, "GET", "/api/v0/user", session, nil)
			mustStatus(t, r, 200)
			u := r.json(t)
			if u["email"] != "ada@example.com" || u["name"] != "Ada Lovelace" || u["uuid"] != userID ||
				!strings.HasPrefix(fmt.Sprint(u["personal_org_slug"]), "ada-lovelace-") {
				t.Fatalf("user = %v", u)
			}

			r = call(t, base, "PATCH", "/api/v0/user", session, map[string]string{"name": "Ada King"})
			mustStatus(t, r, 200)
			if r.json(t)["name"] != "Ada King" {
				t.Fatalf("rename answered %s", r.Body)
			}
			if got := call(t, base, "GET", "/api/v0/user", session, nil).json(t)["name"]; got != "Ada King" {
				t.Fatalf("read after rename: %v", got)
			}

			exp := time.Now().Add(48 * time.Hour).UTC().Truncate(time.Second)
			r = call(t, base, "POST", "/api/v0/user/api-tokens", session, map[string]any{"description": "laptop", "expires_at": exp})
			mustStatus(t, r, 201)
			created := r.json(t)
			apiToken := created["token"].(string)
			tokID := created["api_token"].(map[string]any)["id"].(string)
			if created["api_token"].(map[string]any)["expires_at"] != exp.Format(time.RFC3339) {
				t.Fatalf("expires_at = %v", created["api_token"])
			}

			// The new token works at once, and its use shows as last_used_at.
			mustStatus(t, call(t, base, "GET", "/api/v0/user", apiToken, nil), 200)
			r = call(t, base, "GET", "/api/v0/user/api-tokens", session, nil)
			mustStatus(t, r, 200)
			list := r.json(t)["api_tokens"].([]any)
			if len(list) != 1 || list[0].(map[string]any)["id"] != tokID || list[0].(map[string]any)["last_used_at"] == nil {
				t.Fatalf("list = %s", r.Body)
			}

			// Revoked: refused on the very next request.
			mustStatus(t, call(t, base, "DELETE", "/api/v0/user/api-tokens/"+tokID, session, nil), 204)
			r = call(t, base, "GET", "/api/v0/user", apiToken, nil)
			mustStatus(t, r, 401)
			if r.errCode(t) != "invalid_api_token" {
				t.Fatalf("revoked token: %s", r.Body)
			}
			if n := len(call(t, base, "GET", "/api/v0/user/api-tokens", session, nil).json(t)["api_tokens"].([]any)); n != 0 {
				t.Fatalf("%d tokens listed after revoke", n)
			}

			// Log out and in again.
			r = call(t, base, "POST", "/api/v0/sessions", "", map[string]string{"email": "ada@example.com", "password": "wrong password"})
			mustStatus(t, r, 401)
			if r.errCode(t) != "invalid_credentials" {
				t.Fatal(string(r.Body))
			}
			r = call(t, base, "POST", "/api/v0/sessions", "", map[string]string{"email": "ADA@example.com", "password": "correct horse battery"})
			mustStatus(t, r, 201)
			session2 := r.json(t)["token"].(string)
			mustStatus(t, call(t, base, "DELETE", "/api/v0/sessions/current", session, nil), 204)
			mustStatus(t, call(t, base, "GET", "/api/v0/user", session, nil), 401)
			mustStatus(t, call(t, base, "GET", "/api/v0/user", session2, nil), 200)

			// Delete: every token of the user is refused at once, the email is free again.
			r = call(t, base, "POST", "/api/v0/user/api-tokens", session2, map[string]any{})
			mustStatus(t, r, 201)
			apiToken2 := r.json(t)["token"].(string)
			mustStatus(t, call(t, base, "DELETE", "/api/v0/user", session2, nil), 204)
			mustStatus(t, call(t, base, "GET", "/api/v0/user", session2, nil), 401)
			mustStatus(t, call(t, base, "GET", "/api/v0/user", apiToken2, nil), 401)
			_, newID := signUp(t, base, "ada@example.com", "Ada Again")
			if newID == userID {
				t.Fatal("a new account reused the deleted user's id")
			}

			// The stream holds the history; no secret is in it.
			all, err := e.store().Read(context.Background(), events.SubjectRoot+".>", 1, 0)
			if err != nil {
				t.Fatal(err)
			}
			for _, ev := range all {
				raw := fmt.Sprintf("%+v", ev.Data)
				for _, secret := range []string{session, session2, apiToken, apiToken2, "correct horse battery"} {
					if strings.Contains(raw, secret) {
						t.Fatalf("secret found in event %s", ev.Type)
					}
				}
			}
			if all[0].Type != events.TypeEmailClaimed || all[1].Type != events.TypeUserRegistered || all[1].Metadata.RequestID == "" {
				t.Fatalf("first events: %+v %+v", all[0], all[1])
			}
			e.checkStreamContract()
		})
	}
}

// TestConcurrentRenames: 50 renames of one user at once. Every acknowledged rename is in the
// stream, and the read model ends at the stream's last one.
func TestConcurrentRenames(t *testing.T) {
	e := postgresEnv(t)
	in := e.start()
	token, userID := signUp(t, in.URL, "grace@example.com", "Grace")
	var mu sync.Mutex
	acked := map[string]bool{}
	var wg sync.WaitGroup
	for i := 0; i < 50; i++ {
		wg.Add(1)
		go func(i int) {
			defer wg.Done()
			name := fmt.Sprintf("Grace %02d", i)
			r := call(t, in.URL, "PATCH", "/api/v0/user", token, map[string]string{"name": name})
			switch r.Status {
			case 200:
				mu.Lock()
				acked[name] = true
				mu.Unlock()
			case 409:
			default:
				t.Errorf("rename: %d %s", r.Status, r.Body)
			}
		}(i)
	}
	wg.Wait()
	hist, err := e.store().Load(context.Background(), events.UserAggregate(uuid.MustParse(userID)), 0)
	if err != nil {
		t.Fatal(err)
	}
	inStream := map[string]bool{}
	last := ""
	for _, ev := range hist {
		if r, ok := ev.Data.(events.UserRenamed); ok {
			inStream[r.Name] = true
			last = r.Name
		}
	}
	for name := range acked {
		if !inStream[name] {
			t.Errorf("acknowledged rename %q is not in the stream", name)
		}
	}
	if len(acked) < 40 {
		t.Errorf("only %d of 50 renames succeeded", len(acked))
	}
	got := call(t, in.URL, "GET", "/api/v0/user", token, nil).json(t)["name"]
	if got != last {
		t.Fatalf("read model has %v, stream's last rename is %q", got, last)
	}
}

// TestConcurrentSignUpsOneEmail: of many sign-ups with one address at once, exactly one wins.
func TestConcurrentSignUpsOneEmail(t *testing.T) {
	e := postgresEnv(t)
	a, b := e.start(), e.start()
	var wins, taken int
	var mu sync.Mutex
	var wg sync.WaitGroup
	for i := 0; i < 8; i++ {
		wg.Add(1)
		go func(i int) {
			defer wg.Done()
			base := []string{a.URL, b.URL}[i%2]
			r := call(t, base, "POST", "/api/v0/users", "", map[string]string{"email": "same@example.com", "name": fmt.Sprint("N", i), "password": "password123"})
			mu.Lock()
			defer mu.Unlock()
			switch {
			case r.Status == 201:
				wins++
			case r.Status == 409 && r.errCode(t) == "email_taken":
				taken++
			default:
				t.Errorf("sign-up: %d %s", r.Status, r.Body)
			}
		}(i)
	}
	wg.Wait()
	if wins != 1 || taken != 7 {
		t.Fatalf("%d sign-ups won and %d were refused; want 1 and 7", wins, taken)
	}
}

// TestTwoInstancesReadYourWrites: a write answered by one instance is seen by the next
// request on the other, including revocations.
func TestTwoInstancesReadYourWrites(t *testing.T) {
	e := postgresEnv(t)
	a, b := e.start(), e.start()
	token, _ := signUp(t, a.URL, "hopper@example.com", "Hopper")
	mustStatus(t, call(t, b.URL, "GET", "/api/v0/user", token, nil), 200)
	for i := 0; i < 15; i++ {
		w, r := a, b
		if i%2 == 1 {
			w, r = b, a
		}
		name := fmt.Sprint("Hopper ", i)
		mustStatus(t, call(t, w.URL, "PATCH", "/api/v0/user", token, map[string]string{"name": name}), 200)
		if got := call(t, r.URL, "GET", "/api/v0/user", token, nil).json(t)["name"]; got != name {
			t.Fatalf("round %d: other instance reads %v, want %q", i, got, name)
		}
		res := call(t, w.URL, "POST", "/api/v0/user/api-tokens", token, map[string]any{"description": name})
		mustStatus(t, res, 201)
		secret := res.json(t)["token"].(string)
		id := res.json(t)["api_token"].(map[string]any)["id"].(string)
		// Both instances have the new token in memory before it is revoked on one of them.
		mustStatus(t, call(t, r.URL, "GET", "/api/v0/user", secret, nil), 200)
		mustStatus(t, call(t, w.URL, "GET", "/api/v0/user", secret, nil), 200)
		mustStatus(t, call(t, r.URL, "DELETE", "/api/v0/user/api-tokens/"+id, token, nil), 204)
		mustStatus(t, call(t, w.URL, "GET", "/api/v0/user", secret, nil), 401)
		mustStatus(t, call(t, r.URL, "GET", "/api/v0/user", secret, nil), 401)
	}
}

// TestRenameKeepsCredentialsCached: a rename leaves the caller's cached credential in place
// on every instance (its next request does not go to the database to authenticate), yet the
// next GET anywhere shows the new name.
func TestRenameKeepsCredentialsCached(t *testing.T) {
	e := postgresEnv(t)
	a, b := e.start(), e.start()
	waitFor(t, 10*time.Second, func() bool { return a.Presence().MayLease() && b.Presence().MayLease() })
	token, _ := signUp(t, a.URL, "lovelace@example.com", "Ada")
	for i := 0; i < 6; i++ {
		for _, in := range []*instance{a, b} { // both hold the credential in memory
			mustStatus(t, call(t, in.URL, "GET", "/api/v0/user", token, nil), 200)
		}
		w := []*instance{a, b}[i%2]
		misses := a.Cache().Stats().Misses + b.Cache().Stats().Misses
		name := fmt.Sprint("Ada ", i)
		mustStatus(t, call(t, w.URL, "PATCH", "/api/v0/user", token, map[string]string{"name": name}), 200)
		for _, in := range []*instance{a, b} {
			if got := call(t, in.URL, "GET", "/api/v0/user", token, nil).json(t)["name"]; got != name {
				t.Fatalf("round %d: %s reads %v, want %q", i, in.URL, got, name)
			}
		}
		if m := a.Cache().Stats().Misses + b.Cache().Stats().Misses; m != misses {
			// (Lookups whose lease lapsed go to the database too; they are counted apart and
			// have nothing to do with the rename.)
			t.Fatalf("round %d: %d credential lookups missed the cache after a rename, want 0", i, m-misses)
		}
	}
}

// TestRevocationRacesReadsOnAnotherInstance: while clients keep using a token on instance B
// (answered from B's memory), it is revoked on instance A. Every request to B that started
// after A answered the revocation is refused; before, either answer is fine.
func TestRevocationRacesReadsOnAnotherInstance(t *testing.T) {
	t.Run("instances keeping up", func(t *testing.T) { revocationRace(t, 0) })
	// B's feed takes 25ms after each event it receives, and a rename just before the
	// revocation makes B receive the revocation after A answered it: B must stop answering
	// from memory anyway (its lease cannot be renewed while events it has not received are
	// in the stream, and A's answer waited out any lease taken before the revocation).
	t.Run("the other instance lagging", func(t *testing.T) { revocationRace(t, 25*time.Millisecond) })
}

// TestCommitWaitCoversAStalledInstance: instance B holds a long lease and answers a token from
// memory; its feed then stalls for 150ms right before the token's revocation on A arrives. A's
// answer to the revocation must wait out B's lease: no request to B that starts after it may
// succeed. (Without the commit wait, B answers 200 from its lease for up to 150ms more.)
func TestCommitWaitCoversAStalledInstance(t *testing.T) {
	e := postgresEnv(t)
	long := func(c *wiring.Config) {
		c.CacheLease = 200 * time.Millisecond
		c.Presence = credcache.PresenceConfig{TTL: 3 * time.Second, Refresh: 300 * time.Millisecond, Grace: time.Second,
			Margin: 500 * time.Millisecond, ViewEvery: 100 * time.Millisecond, Timeout: 200 * time.Millisecond}
	}
	a, b := e.startWith(long), e.startWith(long)
	var stall atomic.Bool
	b.Projector().OnArrival(func(ar eventstore.Arrival) {
		if strings.HasSuffix(ar.Subject, ".token_created") && stall.CompareAndSwap(true, false) {
			time.Sleep(150 * time.Millisecond) // the next event reaches B's cache this much later
		}
	})
	waitFor(t, 10*time.Second, func() bool { return b.Presence().MayLease() && !a.Presence().Alone() })
	session, _ := signUp(t, a.URL, "lamport@example.com", "Leslie")
	other, _ := signUp(t, a.URL, "lynch@example.com", "Nancy")
	for round := 0; round < 3; round++ {
		res := call(t, a.URL, "POST", "/api/v0/user/api-tokens", session, map[string]any{"description": fmt.Sprint(round)})
		mustStatus(t, res, 201)
		secret := res.json(t)["token"].(string)
		id := res.json(t)["api_token"].(map[string]any)["id"].(string)
		for range 3 { // cached on B, under a lease
			mustStatus(t, call(t, b.URL, "GET", "/api/v0/user", secret, nil), 200)
		}
		stall.Store(true)
		// An event B stalls after (a token created needs no commit wait), then the revocation.
		mustStatus(t, call(t, a.URL, "POST", "/api/v0/user/api-tokens", other, map[string]any{"description": "x"}), 201)
		mustStatus(t, call(t, a.URL, "DELETE", "/api/v0/user/api-tokens/"+id, session, nil), 204)
		for i := 0; i < 20; i++ {
			if r := call(t, b.URL, "GET", "/api/v0/user", secret, nil); r.Status != 401 {
				t.Fatalf("round %d: B answered %d to the revoked token after A answered the revocation", round, r.Status)
			}
			time.Sleep(5 * time.Millisecond)
		}
		time.Sleep(200 * time.Millisecond) // B catches up before the next round
	}
}

// TestCommitWaitOnlyWithOtherInstances: an instance alone skips the commit wait of a rename;
// once a second instance is registered, it waits again.
func TestCommitWaitOnlyWithOtherInstances(t *testing.T) {
	e := postgresEnv(t)
	a := e.start()
	waitFor(t, 5*time.Second, func() bool { return a.Presence().MayLease() && a.Presence().Alone() })
	session, _ := signUp(t, a.URL, "hopper@example.com", "Grace")
	mustStatus(t, call(t, a.URL, "PATCH", "/api/v0/user", session, map[string]string{"name": "Grace H."}), 200)
	if s := a.Cache().Stats(); s.Fences != 1 || s.Skipped != 1 {
		t.Fatalf("alone: cache stats %+v, want the one commit wait skipped", s)
	}
	b := e.start()
	waitFor(t, 5*time.Second, func() bool { return !a.Presence().Alone() })
	mustStatus(t, call(t, a.URL, "PATCH", "/api/v0/user", session, map[string]string{"name": "Grace Hopper"}), 200)
	if s := a.Cache().Stats(); s.Fences != 2 || s.Skipped != 1 {
		t.Fatalf("with a second instance: cache stats %+v, want the commit wait kept", s)
	}
	mustStatus(t, call(t, b.URL, "GET", "/api/v0/user", session, nil), 200)
}

func revocationRace(t *testing.T, lag time.Duration) {
	e := postgresEnv(t)
	a, b := e.start(), e.start()
	if lag > 0 {
		b.Projector().OnArrival(func(eventstore.Arrival) { time.Sleep(lag) })
	}
	// B answers from memory only once registered, and A then waits for it on every revocation.
	waitFor(t, 5*time.Second, func() bool { return b.Presence().MayLease() && !a.Presence().Alone() })
	session, _ := signUp(t, a.URL, "liskov@example.com", "Barbara")
	for round := 0; round < 10; round++ {
		res := call(t, a.URL, "POST", "/api/v0/user/api-tokens", session, map[string]any{"description": fmt.Sprint(round)})
		mustStatus(t, res, 201)
		secret := res.json(t)["token"].(string)
		id := res.json(t)["api_token"].(map[string]any)["id"].(string)
		mustStatus(t, call(t, b.URL, "GET", "/api/v0/user", secret, nil), 200)

		type answer struct {
			start  time.Time
			status int
		}
		var mu sync.Mutex
		var answers []answer
		stop := make(chan struct{})
		var wg sync.WaitGroup
		for range 4 {
			wg.Go(func() {
				for {
					select {
					case <-stop:
						return
					default:
					}
					start := time.Now()
					r := call(t, b.URL, "GET", "/api/v0/user", secret, nil)
					mu.Lock()
					answers = append(answers, answer{start, r.Status})
					mu.Unlock()
				}
			})
		}
		time.Sleep(30 * time.Millisecond)
		if lag > 0 {
			mustStatus(t, call(t, a.URL, "PATCH", "/api/v0/user", session, map[string]string{"name": fmt.Sprint("Barbara ", round)}), 200)
		}
		mustStatus(t, call(t, a.URL, "DELETE", "/api/v0/user/api-tokens/"+id, session, nil), 204)
		revoked := time.Now()
		time.Sleep(30 * time.Millisecond)
		close(stop)
		wg.Wait()
		after := 0
		for _, x := range answers {
			if x.start.After(revoked) {
				after++
				if x.status != 401 {
					t.Fatalf("round %d: a request started %s after the revocation answered %d", round, x.start.Sub(revoked), x.status)
				}
			} else if x.status != 200 && x.status != 401 {
				t.Fatalf("round %d: a request answered %d", round, x.status)
			}
		}
		if after == 0 || len(answers) == after {
			t.Fatalf("round %d: %d requests, %d after the revocation; want some on each side", round, len(answers), after)
		}
	}
}

// TestRevokedTokenRefusedAtOnce: no window in which a revoked or expired token still works.
func TestRevokedTokenRefusedAtOnce(t *testing.T) {
	e := postgresEnv(t)
	in := e.start()
	session, _ := signUp(t, in.URL, "lamarr@example.com", "Hedy")
	for i := 0; i < 25; i++ {
		r := call(t, in.URL, "POST", "/api/v0/user/api-tokens", session, map[string]any{"description": fmt.Sprint(i)})
		mustStatus(t, r, 201)
		secret := r.json(t)["token"].(string)
		id := r.json(t)["api_token"].(map[string]any)["id"].(string)
		mustStatus(t, call(t, in.URL, "GET", "/api/v0/user", secret, nil), 200)
		mustStatus(t, call(t, in.URL, "DELETE", "/api/v0/user/api-tokens/"+id, session, nil), 204)
		if r := call(t, in.URL, "GET", "/api/v0/user", secret, nil); r.Status != 401 || r.errCode(t) != "invalid_api_token" {
			t.Fatalf("round %d: revoked token answered %d %s", i, r.Status, r.Body)
		}
	}
	// Another user's token id answers exactly like an unknown one.
	other, _ := signUp(t, in.URL, "other@example.com", "Other")
	r := call(t, in.URL, "POST", "/api/v0/user/api-tokens", other, map[string]any{})
	otherID := r.json(t)["api_token"].(map[string]any)["id"].(string)
	a := call(t, in.URL, "DELETE", "/api/v0/user/api-tokens/"+otherID, session, nil)
	u := call(t, in.URL, "DELETE", "/api/v0/user/api-tokens/"+uuid.NewString(), session, nil)
	if a.Status != 404 || u.Status != 404 || a.errCode(t) != u.errCode(t) {
		t.Fatalf("other's token: %d %s; unknown: %d %s", a.Status, a.Body, u.Status, u.Body)
	}
	mustStatus(t, call(t, in.URL, "GET", "/api/v0/user", r.json(t)["token"].(string), nil), 200)
}

// TestIdempotencyKey: a retried create with the same key returns the first answer.
func TestIdempotencyKey(t *testing.T) {
	e := postgresEnv(t)
	in := e.start()
	body := map[string]string{"email": "turing@example.com", "name": "Alan", "password": "enigma machine"}
	first := call(t, in.URL, "POST", "/api/v0/users", "", body, "Idempotency-Key", "signup-1")
	again := call(t, in.URL, "POST", "/api/v0/users", "", body, "Idempotency-Key", "signup-1")
	mustStatus(t, first, 201)
	mustStatus(t, again, 201)
	if string(first.Body) != string(again.Body) {
		t.Fatalf("replayed sign-up differs:\n%s\n%s", first.Body, again.Body)
	}
	body["name"] = "Someone Else"
	if r := call(t, in.URL, "POST", "/api/v0/users", "", body, "Idempotency-Key", "signup-1"); r.Status != 409 || r.errCode(t) != "idempotency_key_reused" {
		t.Fatalf("reused key: %d %s", r.Status, r.Body)
	}
	session := first.json(t)["token"].(string)
	t1 := call(t, in.URL, "POST", "/api/v0/user/api-tokens", session, map[string]any{"description": "ci"}, "Idempotency-Key", "tok-1")
	t2 := call(t, in.URL, "POST", "/api/v0/user/api-tokens", session, map[string]any{"description": "ci"}, "Idempotency-Key", "tok-1")
	mustStatus(t, t1, 201)
	if string(t1.Body) != string(t2.Body) {
		t.Fatalf("replayed token create differs:\n%s\n%s", t1.Body, t2.Body)
	}
	if n := len(call(t, in.URL, "GET", "/api/v0/user/api-tokens", session, nil).json(t)["api_tokens"].([]any)); n != 1 {
		t.Fatalf("%d tokens after a replayed create", n)
	}
	mustStatus(t, call(t, in.URL, "GET", "/api/v0/user", t1.json(t)["token"].(string), nil), 200)
}

// TestBadInput: hostile and malformed requests get the right 4xx in the envelope, never a 500.
func TestBadInput(t *testing.T) {
	e := postgresEnv(t)
	in := e.start()
	session, _ := signUp(t, in.URL, "knuth@example.com", "Donald")
	long := strings.Repeat("x", 101)
	cases := []struct {
		name, method, path, token string
		body                      any
		headers                   []string
		status                    int
		code                      string
	}{
		{"malformed json", "POST", "/api/v0/users", "", `{"email":`, nil, 400, "invalid_json"},
		{"not an object", "POST", "/api/v0/users", "", `[1,2]`, nil, 400, "invalid_request"},
		{"trailing data", "PATCH", "/api/v0/user", session, `{"name":"a"} {}`, nil, 400, "invalid_json"},
		{"unknown field", "PATCH", "/api/v0/user", session, `{"name":"a","admin":true}`, nil, 400, "invalid_request"},
		{"wrong type", "PATCH", "/api/v0/user", session, `{"name":42}`, nil, 400, "invalid_request"},
		{"null name", "PATCH", "/api/v0/user", session, `{"name":null}`, nil, 400, "invalid_request"},
		{"empty name", "PATCH", "/api/v0/user", session, `{"name":"   "}`, nil, 400, "invalid_name"},
		{"overlong name", "PATCH", "/api/v0/user", session, `{"name":"` + long + `"}`, nil, 400, "invalid_name"},
		{"control chars", "PATCH", "/api/v0/user", session, `{"name":"a\u0000b"}`, nil, 400, "invalid_name"},
		{"invalid utf-8", "PATCH", "/api/v0/user", session, []byte("{\"name\":\"\xff\xfe\"}"), nil, 400, "invalid_json"},
		{"empty body", "PATCH", "/api/v0/user", session, "", nil, 400, "invalid_json"},
		{"oversized body", "PATCH", "/api/v0/user", session, `{"name":"` + strings.Repeat("a", 70<<10) + `"}`, nil, 413, "request_too_large"},
		{"deep json", "PATCH", "/api/v0/user", session, strings.Repeat("[", 20000) + strings.Repeat("]", 20000), nil, 400, "invalid_json"},
		{"wrong content type", "PATCH", "/api/v0/user", session, `{"name":"a"}`, []string{"Content-Type", "text/plain"}, 415, "unsupported_media_type"},
		{"bad email", "POST", "/api/v0/users", "", `{"email":"nope","name":"a","password":"password123"}`, nil, 400, "invalid_email"},
		{"short password", "POST", "/api/v0/users", "", `{"email":"a@b.co","name":"a","password":"short"}`, nil, 400, "invalid_password"},
		{"missing field", "POST", "/api/v0/users", "", `{"email":"a@b.co","name":"a"}`, nil, 400, "invalid_request"},
		{"taken email", "POST", "/api/v0/users", "", `{"email":"KNUTH@example.com","name":"a","password":"password123"}`, nil, 409, "email_taken"},
		{"sql injection as email", "POST", "/api/v0/sessions", "", `{"email":"' OR 1=1 --","password":"x"}`, nil, 401, "invalid_credentials"},
		{"past expiry", "POST", "/api/v0/user/api-tokens", session, `{"expires_at":"2001-01-01T00:00:00Z"}`, nil, 400, "invalid_expires_at"},
		{"bad expiry", "POST", "/api/v0/user/api-tokens", session, `{"expires_at":"tomorrow"}`, nil, 400, "invalid_expires_at"},
		{"long description", "POST", "/api/v0/user/api-tokens", session, `{"description":"` + strings.Repeat("d", 201) + `"}`, nil, 400, "invalid_description"},
		{"bad idempotency key", "POST", "/api/v0/user/api-tokens", session, `{}`, []string{"Idempotency-Key", "has space"}, 400, "invalid_idempotency_key"},
		{"bad uuid", "DELETE", "/api/v0/user/api-tokens/not-a-uuid", session, nil, nil, 400, "invalid_id"},
		{"unknown token id", "DELETE", "/api/v0/user/api-tokens/" + uuid.NewString(), session, nil, nil, 404, "token_not_found"},
		{"no token", "GET", "/api/v0/user", "", nil, nil, 401, "missing_api_token"},
		{"malformed token", "GET", "/api/v0/user", "idt_notavalidtoken", nil, nil, 401, "invalid_api_token"},
		{"checksum mismatch", "GET", "/api/v0/user", flipLast(session), nil, nil, 401, "invalid_api_token"},
		{"basic auth", "GET", "/api/v0/user", "", nil, []string{"Authorization", "Basic YTpi"}, 401, "invalid_api_token"},
		{"unknown path", "GET", "/api/v0/nope", session, nil, nil, 404, "not_found"},
		{"wrong method", "PUT", "/api/v0/user", session, `{}`, nil, 405, "method_not_allowed"},
		{"api token for logout", "DELETE", "/api/v0/sessions/current", "", nil, nil, 401, "missing_api_token"},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			r := call(t, in.URL, c.method, c.path, c.token, c.body, c.headers...)
			if r.Status != c.status || r.errCode(t) != c.code {
				t.Fatalf("got %d %s, want %d %s", r.Status, r.Body, c.status, c.code)
			}
		})
	}
	// Nothing was half-written: the user is unchanged.
	if got := call(t, in.URL, "GET", "/api/v0/user", session, nil).json(t)["name"]; got != "Donald" {
		t.Fatalf("name after bad input: %v", got)
	}
	// A hostile X-Request-Id is replaced, not echoed.
	r := call(t, in.URL, "GET", "/api/v0/user", "", nil, "X-Request-Id", "evil <script> value")
	if strings.ContainsAny(r.Header.Get("X-Request-Id"), "<> ") {
		t.Fatalf("request id echoed: %q", r.Header.Get("X-Request-Id"))
	}
	if r := call(t, in.URL, "GET", "/api/v0/user", "", nil, "X-Request-Id", "trace-123"); r.Header.Get("X-Request-Id") != "trace-123" {
		t.Fatalf("a well-formed request id was not kept: %q", r.Header.Get("X-Request-Id"))
	}
}

// TestServiceDocs: the OpenAPI document and the error docs are served.
func TestServiceDocs(t *testing.T) {
	e := newEnv(t, dbtest.Backends[1])
	in := e.start()
	r := call(t, in.URL, "GET", "/api/v0/openapi.yaml", "", nil)
	mustStatus(t, r, 200)
	if !strings.Contains(string(r.Body), "openapi: 3.0") {
		t.Fatal("openapi.yaml not served")
	}
	r = call(t, in.URL, "GET", "/docs/errors", "", nil)
	mustStatus(t, r, 200)
	for code := range map[string]bool{"invalid_api_token": true, "missing_api_token": true, "email_taken": true} {
		if !strings.Contains(string(r.Body), `id="`+code+`"`) {
			t.Errorf("error docs lack %s", code)
		}
	}
	mustStatus(t, call(t, in.URL, "GET", "/healthz", "", nil), http.StatusOK)
	mustStatus(t, call(t, in.URL, "GET", "/readyz", "", nil), http.StatusOK)
}

// flipLast changes a token's last character, so its checksum no longer matches.
func flipLast(token string) string {
	last := byte('0')
	if token[len(token)-1] == last {
		last = '1'
	}
	return token[:len(token)-1] + string(last)
}

// TestIdempotentLogInAfterExpiry: with a short session TTL, a log-in replayed with its
// Idempotency-Key before expiry returns the first answer; once that session has expired the
// replay answers 409 idempotency_key_reused instead of 201 with a dead token; a new key logs in.
func TestIdempotentLogInAfterExpiry(t *testing.T) {
	e := newEnv(t, dbtest.Backends[1])
	in := e.startWith(func(c *wiring.Config) { c.SessionTTL = 1500 * time.Millisecond })
	signUp(t, in.URL, "hopper@example.com", "Grace")
	body := map[string]string{"email": "hopper@example.com", "password": "correct horse battery"}
	first := call(t, in.URL, "POST", "/api/v0/sessions", "", body, "Idempotency-Key", "login-1")
	mustStatus(t, first, http.StatusCreated)
	again := call(t, in.URL, "POST", "/api/v0/sessions", "", body, "Idempotency-Key", "login-1")
	mustStatus(t, again, http.StatusCreated)
	if string(first.Body) != string(again.Body) {
		t.Fatalf("replay within the TTL differs:\n%s\n%s", first.Body, again.Body)
	}
	token := first.json(t)["token"].(string)
	expires, err := time.Parse(time.RFC3339Nano, first.json(t)["session"].(map[string]any)["expires_at"].(string))
	if err != nil {
		t.Fatal(err)
	}
	time.Sleep(time.Until(expires) + 50*time.Millisecond)
	mustStatus(t, call(t, in.URL, "GET", "/api/v0/user", token, nil), http.StatusUnauthorized)

	r := call(t, in.URL, "POST", "/api/v0/sessions", "", body, "Idempotency-Key", "login-1")
	if r.Status != http.StatusConflict || r.errCode(t) != "idempotency_key_reused" {
		t.Fatalf("replay after expiry: %d %s, want 409 idempotency_key_reused", r.Status, r.Body)
	}
	if strings.Contains(string(r.Body), token) {
		t.Fatal("the refusal carries the dead token")
	}
	fresh := call(t, in.URL, "POST", "/api/v0/sessions", "", body, "Idempotency-Key", "login-2")
	mustStatus(t, fresh, http.StatusCreated)
	mustStatus(t, call(t, in.URL, "GET", "/api/v0/user", fresh.json(t)["token"].(string), nil), http.StatusOK)
}

// TestBodiesNeedJSONContentType: what a cross-site page can send without a CORS preflight — a
// fetch with a Blob body (no Content-Type), text/plain, a form — is refused with 415 in the
// envelope, before anything is written; a create with truly no body still works.
func TestBodiesNeedJSONContentType(t *testing.T) {
	e := newEnv(t, dbtest.Backends[1])
	in := e.start()
	session, _ := signUp(t, in.URL, "lamport@example.com", "Leslie")
	send := func(method, path, token, body, ct string) response {
		t.Helper()
		req, err := newRequest(in.URL, method, path, token, nil)
		if err != nil {
			t.Fatal(err)
		}
		if body != "" {
			req.Body, req.ContentLength = io.NopCloser(strings.NewReader(body)), int64(len(body))
		}
		if ct != "" {
			req.Header.Set("Content-Type", ct)
		}
		res, err := http.DefaultClient.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		defer res.Body.Close()
		raw, _ := io.ReadAll(res.Body)
		out := response{Status: res.StatusCode, Header: res.Header, Body: raw}
		validate(t, req, out)
		return out
	}
	signup := `{"email":"mallory@example.com","name":"Mallory","password":"correct horse battery"}`
	for _, ct := range []string{"", "text/plain", "text/plain;charset=UTF-8", "application/x-www-form-urlencoded"} {
		for _, c := range []struct{ method, path, token, body string }{
			{"POST", "/api/v0/users", "", signup},
			{"POST", "/api/v0/sessions", "", `{"email":"lamport@example.com","password":"correct horse battery"}`},
			{"PATCH", "/api/v0/user", session, `{"name":"Mallory"}`},
			{"POST", "/api/v0/user/api-tokens", session, `{"description":"csrf"}`},
		} {
			if r := send(c.method, c.path, c.token, c.body, ct); r.Status != http.StatusUnsupportedMediaType || r.errCode(t) != "unsupported_media_type" {
				t.Errorf("%s %s with Content-Type %q: %d %s, want 415 unsupported_media_type", c.method, c.path, ct, r.Status, r.Body)
			}
		}
	}
	if r := call(t, in.URL, "GET", "/api/v0/user", session, nil); r.json(t)["name"] != "Leslie" {
		t.Fatalf("a refused body changed the user: %s", r.Body)
	}
	if n := len(call(t, in.URL, "GET", "/api/v0/user/api-tokens", session, nil).json(t)["api_tokens"].([]any)); n != 0 {
		t.Fatalf("%d tokens after refused creates", n)
	}
	mustStatus(t, send("POST", "/api/v0/user/api-tokens", session, "", ""), http.StatusCreated)
	mustStatus(t, send("POST", "/api/v0/sessions", "", `{"email":"lamport@example.com","password":"correct horse battery"}`, "application/json; charset=utf-8"), http.StatusCreated)
}
