package main

import (
	"encoding/json"
	"net/url"
	"strings"
	"testing"
	"time"
)

type auditPage struct {
	Events []struct {
		ID        string          `json:"id"`
		Sequence  uint64          `json:"sequence"`
		Type      string          `json:"type"`
		UserID    *string         `json:"user_id"`
		Actor     string          `json:"actor"`
		RequestID string          `json:"request_id"`
		SourceIP  string          `json:"source_ip"`
		UserAgent string          `json:"user_agent"`
		Time      time.Time       `json:"time"`
		Data      json.RawMessage `json:"data"`
	} `json:"events"`
	NextCursor *string `json:"next_cursor"`
}

func page(t *testing.T, r response) auditPage {
	t.Helper()
	mustStatus(t, r, 200)
	var p auditPage
	if err := json.Unmarshal(r.Body, &p); err != nil {
		t.Fatal(err)
	}
	return p
}

// TestAuditHistory: each user reads their own history, newest first and paginated, with who,
// when, from where and what changed, and never a secret; administrators filter the whole log.
// The auditor is made the first administrator by the bootstrap, by e-mail, at the start of an
// instance after the account exists.
func TestAuditHistory(t *testing.T) {
	e := postgresEnv(t)
	e.BootstrapAdmin = "Auditor@example.com"
	in := e.start() // no such account yet: no administrator
	ua := []string{"User-Agent", "audit-test/1.0"}
	session, userID := signUp(t, in.URL, "ada@example.com", "Ada")
	other, otherID := signUp(t, in.URL, "bob@example.com", "Bob")
	auditor, auditorID := signUp(t, in.URL, "auditor@example.com", "Auditor")
	mustStatus(t, call(t, in.URL, "PATCH", "/api/v0/user", session, map[string]string{"name": "Ada King"}, append(ua, "X-Request-Id", "rename-1")...), 200)
	r := call(t, in.URL, "POST", "/api/v0/user/api-tokens", session, map[string]any{"description": "ci"}, ua...)
	mustStatus(t, r, 201)
	apiToken := r.json(t)["token"].(string)
	tokenID := r.json(t)["api_token"].(map[string]any)["id"].(string)
	mustStatus(t, call(t, in.URL, "PATCH", "/api/v0/user", apiToken, map[string]string{"name": "Countess"}, ua...), 200)
	mustStatus(t, call(t, in.URL, "PATCH", "/api/v0/user", other, map[string]string{"name": "Robert"}), 200)

	p := page(t, call(t, in.URL, "GET", "/api/v0/user/events", session, nil))
	types := []string{}
	for i, ev := range p.Events {
		types = append(types, ev.Type)
		if ev.UserID == nil || *ev.UserID != userID {
			t.Fatalf("someone else's event in my history: %+v", ev)
		}
		if i > 0 && ev.Sequence >= p.Events[i-1].Sequence {
			t.Fatal("history is not newest first")
		}
		for _, secret := range []string{session, apiToken, "correct horse battery", "$argon2id"} {
			if strings.Contains(string(ev.Data), secret) {
				t.Fatalf("secret in the audit history: %s", ev.Data)
			}
		}
	}
	want := "identityd.user.renamed identityd.user.token_created identityd.user.renamed identityd.user.session_started identityd.user.password_set identityd.user.registered identityd.email.claimed"
	if strings.Join(types, " ") != want {
		t.Fatalf("history types:\n got %s\nwant %s", strings.Join(types, " "), want)
	}
	last := p.Events[0]
	if last.Actor != "user:"+userID+"/token:"+tokenID || last.UserAgent != "audit-test/1.0" || last.SourceIP != "127.0.0.1" ||
		!strings.Contains(string(last.Data), `"changes":{"name":{"before":"Ada King","after":"Countess"}}`) {
		t.Fatalf("latest event: %+v %s", last, last.Data)
	}
	if p.Events[2].RequestID != "rename-1" || !strings.HasPrefix(p.Events[2].Actor, "user:"+userID+"/session:") {
		t.Fatalf("first rename: %+v", p.Events[2])
	}

	// Pages of 2 walk the same history without gaps or repeats.
	var walked []string
	cursor := ""
	for pages := 0; ; pages++ {
		q := "/api/v0/user/events?limit=2"
		if cursor != "" {
			q += "&cursor=" + url.QueryEscape(cursor)
		}
		pg := page(t, call(t, in.URL, "GET", q, session, nil))
		for _, ev := range pg.Events {
			walked = append(walked, ev.Type)
		}
		if pg.NextCursor == nil {
			break
		}
		cursor = *pg.NextCursor
		if pages > 10 {
			t.Fatal("pagination does not end")
		}
	}
	if strings.Join(walked, " ") != want {
		t.Fatalf("paginated history differs: %v", walked)
	}
	if r := call(t, in.URL, "GET", "/api/v0/user/events?cursor=abc", session, nil); r.Status != 400 || r.errCode(t) != "invalid_cursor" {
		t.Fatalf("bad cursor: %d %s", r.Status, r.Body)
	}
	if r := call(t, in.URL, "GET", "/api/v0/user/events?limit=1000", session, nil); r.Status != 400 || r.errCode(t) != "invalid_filter" {
		t.Fatalf("bad limit: %d %s", r.Status, r.Body)
	}

	// The admin log: refused to users, filterable for administrators.
	if r := call(t, in.URL, "GET", "/api/v0/admin/events", session, nil); r.Status != 403 || r.errCode(t) != "scope_not_granted" {
		t.Fatalf("non-admin: %d %s", r.Status, r.Body)
	}
	if r := call(t, in.URL, "GET", "/api/v0/admin/events", auditor, nil); r.Status != 403 || r.errCode(t) != "scope_not_granted" {
		t.Fatalf("auditor before the bootstrap: %d %s", r.Status, r.Body)
	}
	e.start() // a restart: the bootstrap grants the auditor's account (by id) administrator rights
	if p := page(t, call(t, in.URL, "GET", "/api/v0/admin/events?type=identityd.user.admin_granted", auditor, nil)); len(p.Events) != 1 ||
		p.Events[0].Actor != "system" || p.Events[0].UserID == nil || *p.Events[0].UserID != auditorID {
		t.Fatalf("the bootstrap's grant: %+v", p.Events)
	}
	admin := func(query string) auditPage {
		t.Helper()
		return page(t, call(t, in.URL, "GET", "/api/v0/admin/events?"+query, auditor, nil))
	}
	if n := len(admin("type=identityd.user.renamed").Events); n != 3 {
		t.Fatalf("%d renames in the log, want 3", n)
	}
	if p := admin("type=identityd.user.renamed&user_id=" + otherID); len(p.Events) != 1 || *p.Events[0].UserID != otherID {
		t.Fatalf("renames of Bob: %+v", p.Events)
	}
	if p := admin("actor=" + url.QueryEscape("user:"+userID+"/token:"+tokenID)); len(p.Events) != 1 || p.Events[0].Type != "identityd.user.renamed" {
		t.Fatalf("events by Ada's API token: %+v", p.Events)
	}
	if n := len(admin("actor=" + url.QueryEscape("user:"+userID)).Events); n != 3 {
		t.Fatalf("%d events by Ada's credentials, want 3", n)
	}
	future := time.Now().Add(time.Hour).UTC().Format(time.RFC3339)
	if n := len(admin("since=" + future).Events); n != 0 {
		t.Fatalf("%d events in the future", n)
	}
	// 3 sign-ups of 4 events, 3 renames, a token, and the bootstrap's admin_granted.
	if n := len(admin("until=" + future + "&limit=200").Events); n != 3*4+3+1+1 {
		t.Fatalf("%d events before now, want %d", n, 3*4+3+1+1)
	}
	if r := call(t, in.URL, "GET", "/api/v0/admin/events?since=yesterday", auditor, nil); r.Status != 400 || r.errCode(t) != "invalid_filter" {
		t.Fatalf("bad since: %d %s", r.Status, r.Body)
	}
	e.checkStreamContract()
}
