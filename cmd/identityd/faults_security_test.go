//go:build faults

package main

import (
	"bytes"
	"context"
	"crypto/rand"
	"encoding/base64"
	"encoding/hex"
	"errors"
	"fmt"
	"log/slog"
	"math/big"
	"net/url"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/nats-io/nats.go/jetstream"
	"github.com/uptrace/bun"

	"github.com/identityd/identityd/cmd/internal/wiring"
	"github.com/identityd/identityd/domain"
	"github.com/identityd/identityd/projections/dbtest"
)

// fxLogBuffer collects the JSON log lines of an instance; safe for concurrent writers.
type fxLogBuffer struct {
	mu  sync.Mutex
	buf bytes.Buffer
}

func (b *fxLogBuffer) Write(p []byte) (int, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.buf.Write(p)
}

func (b *fxLogBuffer) String() string {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.buf.String()
}

// fxRandom is n random alphanumeric characters: a value that can only appear where it was put.
func fxRandom(t *testing.T, n int) string {
	t.Helper()
	const alphabet = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789"
	out := make([]byte, n)
	for i := range out {
		k, err := rand.Int(rand.Reader, big.NewInt(int64(len(alphabet))))
		if err != nil {
			t.Fatal(err)
		}
		out[i] = alphabet[k.Int64()]
	}
	return string(out)
}

// secretForms are the ways a secret could be written down: as is, without its token prefix,
// and encoded (base64, hex, URL-escaped) as a byte field or a query would carry it.
func secretForms(s string) []string {
	forms := []string{s, base64.StdEncoding.EncodeToString([]byte(s)), base64.RawURLEncoding.EncodeToString([]byte(s)),
		hex.EncodeToString([]byte(s)), url.QueryEscape(s)}
	if strings.HasPrefix(s, "idt_") || strings.HasPrefix(s, "ids_") {
		forms = append(forms, s[4:34]) // the random part alone
	}
	return forms
}

// TestFaultSecretsNeverStored: passwords (right or wrong), session tokens and API tokens appear
// nowhere the service writes: not in any column of any read-model table, not in any header or
// payload of any stream message, not in the debug-level JSON logs. And a revoked token, an
// expired token and every token of a deleted user are refused on the very next request.
func TestFaultSecretsNeverStored(t *testing.T) {
	e := postgresEnv(t)
	logs := &fxLogBuffer{}
	logger := slog.New(slog.NewJSONHandler(logs, &slog.HandlerOptions{Level: slog.LevelDebug}))
	in := fxStart(e, logger, func(*wiring.Config) {}) // the logger above logs at debug level
	base := in.URL
	secrets := map[string]string{} // value → what it is
	keep := func(what, v string) string {
		if v == "" {
			t.Fatalf("%s is empty", what)
		}
		secrets[v] = what
		return v
	}
	tokenOf := func(r response) string { t.Helper(); return r.json(t)["token"].(string) }
	refused := func(what, token string) {
		t.Helper()
		r := call(t, base, "GET", "/api/v0/user", token, nil)
		if r.Status != 401 || r.errCode(t) != "invalid_api_token" {
			t.Fatalf("%s answered %d %s, want 401 invalid_api_token", what, r.Status, r.Body)
		}
	}

	pw := keep("password", "Pw-"+fxRandom(t, 24))
	email := "secret-" + strings.ToLower(fxRandom(t, 8)) + "@example.com"
	r := call(t, base, "POST", "/api/v0/users", "", map[string]string{"email": email, "name": "Secretive", "password": pw})
	mustStatus(t, r, 201)
	s1 := keep("sign-up session token", tokenOf(r))

	// Failing password-bearing requests: the wrong password may be a typo of the real one.
	wrong := keep("wrong password", "Wrong-"+fxRandom(t, 24))
	r = call(t, base, "POST", "/api/v0/sessions", "", map[string]string{"email": email, "password": wrong})
	if r.Status != 401 || r.errCode(t) != "invalid_credentials" {
		t.Fatalf("wrong password: %d %s", r.Status, r.Body)
	}
	unknownPW := keep("password for an unknown email", "Unknown-"+fxRandom(t, 24))
	r = call(t, base, "POST", "/api/v0/sessions", "", map[string]string{"email": "nobody-" + email, "password": unknownPW})
	if r.Status != 401 || r.errCode(t) != "invalid_credentials" {
		t.Fatalf("unknown email: %d %s", r.Status, r.Body)
	}
	dupPW := keep("password of a refused duplicate sign-up", "Dup-"+fxRandom(t, 24))
	r = call(t, base, "POST", "/api/v0/users", "", map[string]string{"email": email, "name": "Again", "password": dupPW})
	if r.Status != 409 || r.errCode(t) != "email_taken" {
		t.Fatalf("duplicate sign-up: %d %s", r.Status, r.Body)
	}
	shortPW := keep("too short password", fxRandom(t, 7))
	r = call(t, base, "POST", "/api/v0/users", "", map[string]string{"email": "short-" + email, "name": "Short", "password": shortPW})
	if r.Status != 400 || r.errCode(t) != "invalid_password" {
		t.Fatalf("short password: %d %s", r.Status, r.Body)
	}
	badJSONPW := keep("password in a malformed body", "Malformed-"+fxRandom(t, 24))
	r = call(t, base, "POST", "/api/v0/sessions", "", `{"email":"`+email+`","password":"`+badJSONPW+`",}`)
	if r.Status != 400 || r.errCode(t) != "invalid_json" {
		t.Fatalf("malformed log-in: %d %s", r.Status, r.Body)
	}
	badToken := keep("malformed bearer token", "idt_"+fxRandom(t, 36))
	refused("a token with a bad checksum", badToken)

	// Log in (twice, the second idempotent), rename, API tokens.
	r = call(t, base, "POST", "/api/v0/sessions", "", map[string]string{"email": email, "password": pw}, "Idempotency-Key", "login-"+fxRandom(t, 8))
	mustStatus(t, r, 201)
	s2 := keep("log-in session token", tokenOf(r))
	r = call(t, base, "POST", "/api/v0/sessions", "", map[string]string{"email": strings.ToUpper(email), "password": pw})
	mustStatus(t, r, 201)
	s3 := keep("second log-in session token", tokenOf(r))
	mustStatus(t, call(t, base, "PATCH", "/api/v0/user", s2, map[string]string{"name": "Secretive Renamed"}), 200)

	r = call(t, base, "POST", "/api/v0/user/api-tokens", s2, map[string]any{"description": "to revoke"}, "Idempotency-Key", "tok-"+fxRandom(t, 8))
	mustStatus(t, r, 201)
	t1 := keep("API token (revoked)", tokenOf(r))
	t1ID := r.json(t)["api_token"].(map[string]any)["id"].(string)
	mustStatus(t, call(t, base, "GET", "/api/v0/user", t1, nil), 200)
	mustStatus(t, call(t, base, "GET", "/api/v0/user/api-tokens", t1, nil), 200)
	mustStatus(t, call(t, base, "DELETE", "/api/v0/user/api-tokens/"+t1ID, s2, nil), 204)
	refused("a revoked API token", t1)

	expires := time.Now().Add(3 * time.Second).UTC().Truncate(time.Second)
	r = call(t, base, "POST", "/api/v0/user/api-tokens", s2, map[string]any{"description": "short-lived", "expires_at": expires})
	mustStatus(t, r, 201)
	t2 := keep("API token (expired)", tokenOf(r))
	mustStatus(t, call(t, base, "GET", "/api/v0/user", t2, nil), 200)

	r = call(t, base, "POST", "/api/v0/user/api-tokens", s3, map[string]any{})
	mustStatus(t, r, 201)
	t3 := keep("API token of the deleted user", tokenOf(r))
	mustStatus(t, call(t, base, "GET", "/api/v0/user", t3, nil), 200)

	// A second user stays: the positive control that the greps below see what is stored.
	otherPW := keep("other user's password", "Other-"+fxRandom(t, 24))
	otherEmail := "keeper-" + strings.ToLower(fxRandom(t, 8)) + "@example.com"
	r = call(t, base, "POST", "/api/v0/users", "", map[string]string{"email": otherEmail, "name": "Keeper", "password": otherPW})
	mustStatus(t, r, 201)
	otherSession := keep("other user's session token", tokenOf(r))
	otherID := r.json(t)["user"].(map[string]any)["uuid"].(string)
	r = call(t, base, "POST", "/api/v0/user/api-tokens", otherSession, map[string]any{"description": "kept"})
	mustStatus(t, r, 201)
	otherToken := keep("other user's API token", tokenOf(r))
	mustStatus(t, call(t, base, "GET", "/api/v0/user", otherToken, nil), 200)

	// Expired: refused on the first request after expires_at.
	time.Sleep(time.Until(expires) + 100*time.Millisecond)
	refused("an expired API token", t2)

	// Log out: the session is refused at once; the others still work.
	mustStatus(t, call(t, base, "DELETE", "/api/v0/sessions/current", s1, nil), 204)
	refused("a logged-out session", s1)
	mustStatus(t, call(t, base, "GET", "/api/v0/user", s2, nil), 200)

	// Delete: every token of the user, session or API, is refused on the next request.
	mustStatus(t, call(t, base, "DELETE", "/api/v0/user", s2, nil), 204)
	refused("the deleting session", s2)
	refused("another session of the deleted user", s3)
	refused("an API token of the deleted user", t3)
	refused("a revoked token of the deleted user", t1)
	refused("an expired token of the deleted user", t2)
	r = call(t, base, "POST", "/api/v0/sessions", "", map[string]string{"email": email, "password": pw})
	if r.Status != 401 || r.errCode(t) != "invalid_credentials" {
		t.Fatalf("log-in of the deleted user: %d %s", r.Status, r.Body)
	}
	mustStatus(t, call(t, base, "GET", "/api/v0/user", otherToken, nil), 200)
	time.Sleep(1500 * time.Millisecond) // let the usage tracker write last_used_at

	// Everything the service wrote down.
	ctx := context.Background()
	places := map[string]string{} // place → content
	var tables []string

	// (a) every row of every table of the test database, each row cast to text.
	db := dbtest.Open(t, e.DBURL)
	rows, err := db.QueryContext(ctx, `SELECT table_schema, table_name, count(*) FILTER (WHERE data_type IN ('text','character varying','character','json','jsonb','bytea','USER-DEFINED','ARRAY'))
		FROM information_schema.columns WHERE table_catalog = current_database() AND table_schema NOT IN ('pg_catalog','information_schema')
		GROUP BY 1, 2 ORDER BY 1, 2`)
	if err != nil {
		t.Fatal(err)
	}
	type table struct {
		schema, name string
		textCols     int
	}
	var all []table
	for rows.Next() {
		var tb table
		if err := rows.Scan(&tb.schema, &tb.name, &tb.textCols); err != nil {
			t.Fatal(err)
		}
		all = append(all, tb)
	}
	if err := rows.Err(); err != nil {
		t.Fatal(err)
	}
	_ = rows.Close()
	var dbRows int
	for _, tb := range all {
		tables = append(tables, tb.name)
		var sb strings.Builder
		rs, err := db.QueryContext(ctx, "SELECT r::text FROM ?.? AS r", bun.Ident(tb.schema), bun.Ident(tb.name))
		if err != nil {
			t.Fatal(err)
		}
		for rs.Next() {
			var s string
			if err := rs.Scan(&s); err != nil {
				t.Fatal(err)
			}
			sb.WriteString(s)
			sb.WriteByte('\n')
			dbRows++
		}
		if err := rs.Err(); err != nil {
			t.Fatal(err)
		}
		_ = rs.Close()
		places["table "+tb.schema+"."+tb.name] = sb.String()
	}
	for _, want := range []string{"users_v1", "api_tokens_v1", "sessions_v1", "audit_events_v1"} {
		if !strings.Contains(" "+strings.Join(tables, " ")+" ", " "+want+" ") {
			t.Errorf("table %s not found among %v", want, tables)
		}
	}

	// (b) every message of every stream on the server (the event stream, poison queue, any KV):
	// listing them takes identityd's key, the reader's sees the event stream only.
	st := e.identitydStore()
	var msgs int
	names := st.JetStream().StreamNames(ctx)
	for name := range names.Name() {
		stream, err := st.JetStream().Stream(ctx, name)
		if err != nil {
			t.Fatal(err)
		}
		info := stream.CachedInfo()
		var sb strings.Builder
		for seq := info.State.FirstSeq; seq >= 1 && seq <= info.State.LastSeq; seq++ {
			m, err := stream.GetMsg(ctx, seq)
			if errors.Is(err, jetstream.ErrMsgNotFound) {
				continue
			}
			if err != nil {
				t.Fatalf("stream %s seq %d: %v", name, seq, err)
			}
			msgs++
			fmt.Fprintf(&sb, "%s\n", m.Subject)
			for k, vs := range m.Header {
				fmt.Fprintf(&sb, "%s: %s\n", k, strings.Join(vs, ", "))
			}
			sb.Write(m.Data)
			sb.WriteByte('\n')
		}
		places["stream "+name] = sb.String()
	}
	if err := names.Err(); err != nil {
		t.Fatal(err)
	}

	// (c) the logs, at debug level.
	places["logs"] = logs.String()

	for place, content := range places {
		for secret, what := range secrets {
			for _, form := range secretForms(secret) {
				if strings.Contains(content, form) {
					t.Errorf("%s contains the %s (as %q)", place, what, form)
				}
			}
		}
	}

	// Positive controls: the greps above do see what is stored, only not the secrets.
	dbText := ""
	for place, content := range places {
		if strings.HasPrefix(place, "table ") {
			dbText += content
		}
	}
	if !strings.Contains(dbText, otherEmail) || !strings.Contains(dbText, domain.Digest(otherToken)) || !strings.Contains(dbText, domain.Digest(otherSession)) {
		t.Errorf("the database rows lack the kept user's email or token digests: the grep saw nothing")
	}
	if stream := places["stream IDENTITY"]; !strings.Contains(stream, otherID) || !strings.Contains(stream, "ce-type") ||
		!strings.Contains(stream, "$argon2id$") {
		t.Errorf("the IDENTITY stream dump lacks the kept user's id, CloudEvents headers or an argon2id hash")
	}
	if !strings.Contains(places["logs"], `"level":"DEBUG"`) || !strings.Contains(places["logs"], "/api/v0/sessions") {
		t.Errorf("the debug logs lack the access log lines: %d bytes", len(places["logs"]))
	}
	t.Logf("checked %d secrets (up to 7 forms each) against %d rows in tables %v, %d messages in the streams, %d bytes of debug logs",
		len(secrets), dbRows, tables, msgs, len(places["logs"]))
}
