//go:build faults

package main

import (
	"context"
	"encoding/json"
	"fmt"
	"net/http"
	"sort"
	"sync"
	"testing"
	"time"

	"github.com/google/uuid"

	"github.com/identityd/identityd/events"
)

// TestFaultConcurrentClients: 100 clients, 5 users, two instances sharing NATS and PostgreSQL.
// Each client renames its user, creates a token, uses it, revokes it and uses it again, on
// alternating instances. No 5xx; every acknowledged rename is in the stream; each user's read
// model ends at its stream's last rename; no token works after its revocation answered 204.
func TestFaultConcurrentClients(t *testing.T) {
	const (
		clients = 100
		users   = 5
		rounds  = 2 // per client: each round is renamesPerRound renames and one token's life
		renames = 3
	)
	e := postgresEnv(t)
	insts := []*instance{e.start(), e.start()}
	type user struct{ token, id string }
	us := make([]user, users)
	for i := range us {
		tok, id := signUp(t, insts[i%2].URL, fmt.Sprintf("crowd%d@example.com", i), fmt.Sprintf("Crowd %d", i))
		us[i] = user{tok, id}
	}

	type tokenLife struct {
		user       int
		secret, id string
		revokedOn  string // instance that answered the revocation 204, "" if never
		// lagging: an answer carried Identityd-Read-Model: lagging (the write stands but the
		// read model had not caught up within the consistency timeout), so the next request
		// is not promised to see it; the checks after the run still apply.
		createLagging, revokeLagging bool
		afterUse                     fxExchange
	}
	client := &http.Client{
		Timeout:   60 * time.Second,
		Transport: &http.Transport{MaxIdleConns: 2 * clients, MaxIdleConnsPerHost: clients},
	}
	t.Cleanup(client.CloseIdleConnections)
	var (
		mu       sync.Mutex
		all      []fxExchange
		acked    = map[string]int{} // acknowledged rename → user
		lives    []*tokenLife
		conflict = map[string]int{}
	)
	record := func(what string, x fxExchange) fxExchange {
		mu.Lock()
		defer mu.Unlock()
		all = append(all, x)
		if x.err == nil && x.res.Status == 409 {
			conflict[what]++
		}
		return x
	}
	bad := func(x fxExchange) bool { // no answer or a 5xx
		return x.err != nil || x.res.Status >= 500
	}
	var unexpected []string
	note := func(format string, args ...any) {
		mu.Lock()
		unexpected = append(unexpected, fmt.Sprintf(format, args...))
		mu.Unlock()
	}

	start := time.Now()
	var wg sync.WaitGroup
	for g := 0; g < clients; g++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			u := g % users
			tok := us[u].token
			here, there := insts[g%2].URL, insts[(g+1)%2].URL
			for r := 0; r < rounds; r++ {
				for k := 0; k < renames; k++ {
					name := fmt.Sprintf("Crowd %d g%03d r%d k%d", u, g, r, k)
					x := record("rename", fxDo(client, []string{here, there}[k%2], "PATCH", "/api/v0/user", tok, map[string]string{"name": name}))
					switch {
					case bad(x):
						note("rename %s: %v %d %s", name, x.err, x.res.Status, x.res.Body)
					case x.res.Status == 200:
						mu.Lock()
						acked[name] = u
						mu.Unlock()
					case x.res.Status != 409:
						note("rename %s: %d %s", name, x.res.Status, x.res.Body)
					}
				}
				// A token's life: create, use (other instance), revoke, use again.
				x := record("create token", fxDo(client, here, "POST", "/api/v0/user/api-tokens", tok, map[string]any{"description": fmt.Sprintf("g%03d r%d", g, r)}))
				if x.err != nil || x.res.Status != 201 {
					if x.err != nil || x.res.Status != 409 {
						note("create token g%d r%d: %v %d %s", g, r, x.err, x.res.Status, x.res.Body)
					}
					continue
				}
				var created struct {
					Token    string `json:"token"`
					APIToken struct {
						ID string `json:"id"`
					} `json:"api_token"`
				}
				if err := json.Unmarshal(x.res.Body, &created); err != nil {
					note("create token g%d r%d: %v", g, r, err)
					continue
				}
				life := &tokenLife{user: u, secret: created.Token, id: created.APIToken.ID,
					createLagging: x.res.Header.Get("Identityd-Read-Model") == "lagging"}
				mu.Lock()
				lives = append(lives, life)
				mu.Unlock()
				if x := record("use token", fxDo(client, there, "GET", "/api/v0/user", life.secret, nil)); (x.err != nil || x.res.Status != 200) && !life.createLagging {
					note("new token g%d r%d refused on the other instance: %v %d %s", g, r, x.err, x.res.Status, x.res.Body)
				}
				for attempt := 0; attempt < 10 && life.revokedOn == ""; attempt++ {
					x := record("revoke", fxDo(client, here, "DELETE", "/api/v0/user/api-tokens/"+life.id, tok, nil))
					switch {
					case x.err == nil && x.res.Status == 204:
						life.revokedOn = here
						life.revokeLagging = x.res.Header.Get("Identityd-Read-Model") == "lagging"
					case x.err == nil && x.res.Status == 409:
					default:
						note("revoke g%d r%d: %v %d %s", g, r, x.err, x.res.Status, x.res.Body)
						attempt = 10
					}
				}
				if life.revokedOn == "" {
					continue
				}
				// The very next request, on either instance, is refused.
				life.afterUse = record("use revoked", fxDo(client, []string{here, there}[r%2], "GET", "/api/v0/user", life.secret, nil))
			}
		}()
	}
	wg.Wait()
	elapsed := time.Since(start)

	for _, s := range unexpected {
		t.Error(s)
	}
	fxValidate(t, all)
	statuses := map[int]int{}
	var lat []time.Duration
	for _, x := range all {
		if x.err != nil {
			t.Errorf("%s %s: no answer: %v", x.req.Method, x.req.URL.Path, x.err)
			continue
		}
		statuses[x.res.Status]++
		lat = append(lat, x.latency)
		if x.res.Status >= 500 {
			t.Errorf("%s %s answered %d: %s", x.req.Method, x.req.URL.Path, x.res.Status, x.res.Body)
		}
		if x.res.Status == 409 && x.code() != "concurrent_modification" {
			t.Errorf("%s %s answered 409 %s", x.req.Method, x.req.URL.Path, x.code())
		}
	}
	sort.Slice(lat, func(i, j int) bool { return lat[i] < lat[j] })
	t.Logf("%d requests in %v: statuses %v, 409 by operation %v; latency p50 %v p99 %v max %v",
		len(all), elapsed.Round(time.Millisecond), statuses, conflict, lat[len(lat)/2], lat[len(lat)*99/100], lat[len(lat)-1])

	// No token works after its revocation answered 204: not on the next request, not now, on
	// neither instance.
	var revoked, lagging int
	for _, l := range lives {
		if l.createLagging || l.revokeLagging {
			lagging++
		}
		if l.revokedOn == "" {
			continue
		}
		revoked++
		if l.revokeLagging {
			t.Logf("token %s: the revocation answered 204 with Identityd-Read-Model: lagging; next use answered %d", l.id, l.afterUse.res.Status)
		} else if l.afterUse.err != nil || l.afterUse.res.Status != 401 || l.afterUse.code() != "invalid_api_token" {
			t.Errorf("token %s worked after its revocation answered 204: %v %d %s", l.id, l.afterUse.err, l.afterUse.res.Status, l.afterUse.res.Body)
		}
		for _, in := range insts {
			if r := call(t, in.URL, "GET", "/api/v0/user", l.secret, nil); r.Status != 401 || r.errCode(t) != "invalid_api_token" {
				t.Errorf("revoked token %s answered %d on %s afterwards", l.id, r.Status, in.URL)
			}
		}
	}
	t.Logf("%d renames acknowledged of %d, %d tokens created, %d revoked, %d token writes answered lagging",
		len(acked), clients*rounds*renames, len(lives), revoked, lagging)
	if len(acked) < clients*rounds*renames/4 || revoked < clients*rounds/4 {
		t.Errorf("too little got through: %d renames, %d revocations", len(acked), revoked)
	}

	// Every acknowledged rename is in the stream; each user's read model, on both instances,
	// ends at the stream's last rename.
	st := e.store()
	for i, u := range us {
		hist, err := st.Load(context.Background(), events.UserAggregate(uuid.MustParse(u.id)), 0)
		if err != nil {
			t.Fatal(err)
		}
		inStream := map[string]bool{}
		last := ""
		for _, ev := range hist {
			switch d := ev.Data.(type) {
			case events.UserRegistered:
				last = d.Name
			case events.UserRenamed:
				inStream[d.Name] = true
				last = d.Name
			}
		}
		for name, owner := range acked {
			if owner == i && !inStream[name] {
				t.Errorf("acknowledged rename %q is not in user %d's stream", name, i)
			}
		}
		for _, in := range insts {
			r := call(t, in.URL, "GET", "/api/v0/user", u.token, nil)
			mustStatus(t, r, 200)
			if got := r.json(t)["name"]; got != last {
				t.Errorf("user %d: read model on %s has %v, the stream's last rename is %q", i, in.URL, got, last)
			}
		}
	}
	// env.Verify runs at cleanup, after both instances stop.
}
