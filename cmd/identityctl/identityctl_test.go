package main

import (
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/google/uuid"
	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/identityd/identityd/domain"
	"github.com/identityd/identityd/events"
	"github.com/identityd/identityd/events/embedded"
	"github.com/identityd/identityd/projections"
)

func agg(id uuid.UUID) string { return events.UserAggregate(id).String() }

// ---------------------------------------------------------------------------------------------
// verify

func TestVerifyFindsTamperingAndRebuildRepairsIt(t *testing.T) {
	t.Parallel()
	w := newPostgresWorld(t)
	h := w.seed()
	last := w.sync()

	diffs, s := verifyOutput(t, w.ctl("verify").expect(t, 0))
	if len(diffs) != 0 || !*s.Verified || s.Events != last || s.Position != last || s.StreamLast != last || s.Users != 3 {
		t.Fatalf("clean verify: want verified, %d events, 3 users; got %+v %+v", last, s, diffs)
	}

	// Tamper with the read model behind the projector's back.
	ctx := context.Background()
	mustExec := func(q string, args ...any) {
		t.Helper()
		res, err := w.db.ExecContext(ctx, q, args...)
		if err != nil {
			t.Fatalf("%s: %v", q, err)
		}
		if n, _ := res.RowsAffected(); n != 1 {
			t.Fatalf("%s: %d rows", q, n)
		}
	}
	mustExec("UPDATE users_v1 SET name = 'Mallory' WHERE id = ?", h.bob)
	mustExec("DELETE FROM api_tokens_v1 WHERE id = ?", h.laptop)
	bogus := uuid.New()
	now := time.Now().UTC()
	mustExec("INSERT INTO sessions_v1 (id, user_id, digest, created_at, expires_at) VALUES (?, ?, ?, ?, ?)",
		bogus, h.carol, "bogus-digest", now, now.Add(time.Hour))

	r := w.ctl("verify").expect(t, 1)
	diffs, s = verifyOutput(t, r)
	if *s.Verified || s.Differences != 3 || s.Events != last {
		t.Fatalf("tampered verify summary: %s", r)
	}
	want := map[string]string{"user_field": agg(h.bob), "token_missing": agg(h.alice), "session_unknown": agg(h.carol)}
	got := map[string]string{}
	for _, d := range diffs {
		got[d.Kind] = d.Aggregate
	}
	if fmt.Sprint(got) != fmt.Sprint(want) {
		t.Fatalf("differences: want %v, got %s", want, r)
	}
	for _, d := range diffs {
		switch d.Kind {
		case "user_field":
			if !strings.Contains(d.Detail, "Mallory") || !strings.Contains(d.Detail, "Robert Builder") {
				t.Errorf("user_field detail should show both names: %q", d.Detail)
			}
		case "token_missing":
			if !strings.Contains(d.Detail, h.laptop.String()) {
				t.Errorf("token_missing detail should name the token: %q", d.Detail)
			}
		case "session_unknown":
			if !strings.Contains(d.Detail, bogus.String()) {
				t.Errorf("session_unknown detail should name the session: %q", d.Detail)
			}
		}
	}

	// A rebuild replays the stream into fresh tables and repairs all three.
	rb := decode[map[string]any](t, w.ctl("projections", "rebuild").expect(t, 0).lines[0])
	if rb["projection"] != "users_v1" || rb["events"] != float64(last) || rb["position"] != float64(last) {
		t.Fatalf("rebuild: want %d events up to %d, got %v", last, last, rb)
	}
	diffs, s = verifyOutput(t, w.ctl("verify").expect(t, 0))
	if len(diffs) != 0 || s.Events != last {
		t.Fatalf("verify after rebuild: %+v %+v", s, diffs)
	}
	u, err := projections.NewReadModel(w.db, projections.CurrentTables).User(ctx, h.bob)
	if err != nil || u.Name != "Robert Builder" {
		t.Fatalf("bob after rebuild: %+v %v", u, err)
	}
	// The running projector carries on in the rebuilt tables.
	seq := w.rename(h.bob, "Bob Again")
	w.waitFor(seq)
	diffs, s = verifyOutput(t, w.ctl("verify").expect(t, 0))
	if len(diffs) != 0 || s.Events != seq {
		t.Fatalf("verify after rename: %+v %+v", s, diffs)
	}
}

func TestVerifyDetectsForgedEvent(t *testing.T) {
	t.Parallel()
	w := newPostgresWorld(t)
	h := w.seed()
	ctx := context.Background()

	// Copy bob's original rename, give it a new identity and a made-up chain hash, and append it
	// straight to the stream, as someone with write access to NATS could.
	js := w.store.JetStream()
	stream, err := js.Stream(ctx, events.StreamName)
	if err != nil {
		t.Fatal(err)
	}
	subject := "identity.user." + h.bob.String() + ".renamed"
	orig, err := stream.GetLastMsgForSubject(ctx, subject)
	if err != nil {
		t.Fatal(err)
	}
	forged := nats.NewMsg(subject)
	for k, v := range orig.Header {
		if strings.HasPrefix(k, "ce-") || k == "Content-Type" {
			forged.Header[k] = v
		}
	}
	forgedID := uuid.NewString()
	forged.Header.Set(events.HeaderID, forgedID)
	forged.Header.Set(jetstream.MsgIDHeader, forgedID)
	forged.Header.Set(events.HeaderChainHash, strings.Repeat("ab", 32))
	forged.Header.Set(events.HeaderTime, time.Now().UTC().Truncate(time.Microsecond).Format(time.RFC3339Nano))
	payload, err := json.Marshal(events.Renamed(h.bob, "Robert Builder", "Mallory"))
	if err != nil {
		t.Fatal(err)
	}
	forged.Data = []byte(strings.Replace(string(payload), `"schema_version":1`, `"schema_version":2`, 1))
	if orig.Header.Get(events.HeaderID) == forgedID || !strings.Contains(string(forged.Data), `"schema_version":2`) {
		t.Fatal("forgery set-up")
	}
	ack, err := js.PublishMsg(ctx, forged)
	if err != nil {
		t.Fatal(err)
	}
	w.waitFor(ack.Sequence)

	// The signature no longer matches what was signed: the projector refused the event (the
	// read model did not follow it), verify flags it, users show leaves it out.
	r := w.ctl("verify").expect(t, 1)
	diffs, s := verifyOutput(t, r)
	if len(diffs) != 1 || diffs[0].Kind != "signature_invalid" || diffs[0].Aggregate != agg(h.bob) ||
		diffs[0].Sequence != ack.Sequence || *s.Verified || s.Events != ack.Sequence-1 {
		t.Fatalf("want one signature_invalid for %s at %d, got %s", agg(h.bob), ack.Sequence, r)
	}
	if u, err := projections.NewReadModel(w.db, projections.CurrentTables).User(ctx, h.bob); err != nil || u.Name != "Robert Builder" {
		t.Fatalf("the read model followed the forged event: %+v %v", u, err)
	}
	shown := w.ctl("users", "show", h.bob.String()).expect(t, 0)
	show := decode[domain.UserSnapshot](t, shown.lines[0])
	if show.Name != "Robert Builder" || show.Version == ack.Sequence || !strings.Contains(shown.stderr, "refused") {
		t.Fatalf("users show after forgery: %+v (stderr %q)", show, shown.stderr)
	}
	// A rebuild leaves it out too, and cannot repair the stream: the finding stays.
	w.ctl("projections", "rebuild").expect(t, 0)
	diffs, _ = verifyOutput(t, w.ctl("verify").expect(t, 1))
	if len(diffs) != 1 || diffs[0].Kind != "signature_invalid" {
		t.Fatalf("verify after rebuild: %+v", diffs)
	}
	if u, err := projections.NewReadModel(w.db, projections.CurrentTables).User(ctx, h.bob); err != nil || u.Name != "Robert Builder" {
		t.Fatalf("the rebuild applied the forged event: %+v %v", u, err)
	}
}

// TestVerifyDetectsEventSignedWithoutTheKey: an attacker with publish rights who writes a
// well-formed event, chained to the victim's last event, but signed with a key of their own (a
// token_created with a secret they chose) cannot authenticate as the victim, and verify flags
// the event.
func TestVerifyDetectsEventSignedWithoutTheKey(t *testing.T) {
	t.Parallel()
	w := newPostgresWorld(t)
	h := w.seed()
	ctx := context.Background()
	history, err := w.store.Load(ctx, events.UserAggregate(h.bob), 0)
	if err != nil || len(history) == 0 {
		t.Fatal(err)
	}
	attacker, err := events.NewSigningKey(bytes.Repeat([]byte{0x41}, 32))
	if err != nil {
		t.Fatal(err)
	}
	secret := "idt_attacker-chosen-secret"
	sum := sha256.Sum256([]byte(secret))
	token := uuid.New()
	forged, _, err := events.Encode(attacker, uuid.NewString(), time.Now().UTC(), events.Metadata{Actor: "user:" + h.bob.String()},
		history[len(history)-1].ChainHash, events.TokenCreated{Versioned: events.V(), UserID: h.bob, TokenID: token,
			Description: "backdoor", Digest: hex.EncodeToString(sum[:]), CreatedAt: time.Now().UTC()})
	if err != nil {
		t.Fatal(err)
	}
	ack, err := w.store.JetStream().PublishMsg(ctx, forged)
	if err != nil {
		t.Fatal(err)
	}
	w.waitFor(ack.Sequence)
	if _, err := projections.NewReadModel(w.db, projections.CurrentTables).APITokenByDigest(ctx, hex.EncodeToString(sum[:])); err == nil {
		t.Fatal("the forged token is in the read model")
	}
	diffs, _ := verifyOutput(t, w.ctl("verify").expect(t, 1))
	if len(diffs) != 1 || diffs[0].Kind != "signature_invalid" || diffs[0].Sequence != ack.Sequence {
		t.Fatalf("verify: %+v", diffs)
	}
}

// ---------------------------------------------------------------------------------------------
// users show

func TestUsersShow(t *testing.T) {
	t.Parallel()
	w := newPostgresWorld(t)
	h := w.seed()

	r := w.ctl("users", "show", h.alice.String()).expect(t, 0)
	if len(r.lines) != 1 {
		t.Fatalf("want one line: %s", r)
	}
	if strings.Contains(r.stdout, "password_hash") || strings.Contains(r.stdout, "digest") || strings.Contains(r.stdout, "$argon2id$") {
		t.Fatalf("users show leaks a secret: %s", r.stdout)
	}
	alice := decode[domain.UserSnapshot](t, r.lines[0])
	if alice.ID != h.alice || !alice.Exists || alice.Deleted || alice.Name != "Alice Hargreaves" ||
		alice.Email != "alice@example.com" || !alice.HasPassword || alice.AsOf != nil || alice.CreatedAt == nil {
		t.Fatalf("alice: %s", r.lines[0])
	}
	tokens := map[uuid.UUID]domain.TokenSnapshot{}
	for _, tok := range alice.Tokens {
		tokens[tok.ID] = tok
	}
	if len(tokens) != 2 || tokens[h.laptop].Revoked || tokens[h.laptop].Description != "laptop" ||
		!tokens[h.ci].Revoked || tokens[h.ci].Description != "ci" {
		t.Fatalf("alice's tokens: %+v", alice.Tokens)
	}
	if len(alice.Sessions) != 2 || alice.Sessions[0].Ended || !alice.Sessions[1].Ended {
		t.Fatalf("alice's sessions (sign-up live, log-in ended): %+v", alice.Sessions)
	}
	hist, err := w.store.Load(context.Background(), events.UserAggregate(h.alice), 0)
	if err != nil {
		t.Fatal(err)
	}
	if alice.Version != hist[len(hist)-1].Sequence {
		t.Fatalf("version %d, last event of alice at %d", alice.Version, hist[len(hist)-1].Sequence)
	}

	// The deleted user still has a history: it exists, deleted, with nothing live.
	carol := decode[domain.UserSnapshot](t, w.ctl("users", "show", h.carol.String()).expect(t, 0).lines[0])
	if !carol.Exists || !carol.Deleted || len(carol.Tokens) != 0 || len(carol.Sessions) != 0 {
		t.Fatalf("carol: %+v", carol)
	}

	// --as-of between the two renames shows the earlier name, flag before or after the id.
	asOf := h.beforeSecondRename.Format(time.RFC3339Nano)
	for _, args := range [][]string{
		{"users", "show", h.alice.String(), "--as-of", asOf},
		{"users", "show", "--as-of", asOf, h.alice.String()},
	} {
		r := w.ctl(args...).expect(t, 0)
		past := decode[domain.UserSnapshot](t, r.lines[0])
		if past.Name != h.aliceNames[1] || past.AsOf == nil || !past.AsOf.Equal(h.beforeSecondRename) || len(past.Tokens) != 0 {
			t.Fatalf("%v: want name %q and no tokens yet, got %s", args, h.aliceNames[1], r)
		}
	}
	// Before she signed up she did not exist; carol before her deletion did.
	r = w.ctl("users", "show", h.alice.String(), "--as-of", h.beforeSignUp.Format(time.RFC3339Nano)).expect(t, 1)
	if s := decode[domain.UserSnapshot](t, r.lines[0]); s.Exists || !strings.Contains(r.stderr, "no such user") {
		t.Fatalf("alice before sign-up: %s", r)
	}
	carolThen := decode[domain.UserSnapshot](t, w.ctl("users", "show", h.carol.String(), "--as-of", h.beforeSecondRename.Format(time.RFC3339Nano)).expect(t, 0).lines[0])
	if carolThen.Deleted || carolThen.Name != "Carol Danvers" {
		t.Fatalf("carol before deletion: %+v", carolThen)
	}

	// Unknown and malformed ids.
	r = w.ctl("users", "show", uuid.NewString()).expect(t, 1)
	if s := decode[domain.UserSnapshot](t, r.lines[0]); s.Exists || s.Deleted || s.Version != 0 {
		t.Fatalf("unknown user: %s", r)
	}
	for _, args := range [][]string{
		{"users", "show", "not-a-uuid"},
		{"users", "show"},
		{"users", "show", h.alice.String(), h.bob.String()},
		{"users", "show", h.alice.String(), "--as-of", "yesterday"},
		{"users", "show", h.alice.String(), "--bogus"},
	} {
		if r := w.ctl(args...).expect(t, 2); r.stdout != "" || !strings.Contains(r.stderr, "Usage:") {
			t.Fatalf("%v: %s", args, r)
		}
	}
}

// ---------------------------------------------------------------------------------------------
// events export

func TestEventsExport(t *testing.T) {
	t.Parallel()
	w := newPostgresWorld(t)
	h := w.seed()
	last := w.last()
	ctx := context.Background()

	all := w.exportAll()
	if uint64(len(all)) != last {
		t.Fatalf("export: %d events, stream has %d", len(all), last)
	}
	stored, err := w.store.Read(ctx, events.SubjectRoot+".>", 1, 0)
	if err != nil {
		t.Fatal(err)
	}
	sawHash, sawDigest := 0, 0
	for i, ce := range all {
		e := stored[i]
		if ce.Sequence != uint64(i+1) || ce.SpecVersion != "1.0" || ce.Source != events.Source || ce.ID != e.ID ||
			ce.Type != e.Type || ce.Subject != e.Subject || !ce.Time.Equal(e.Time) || ce.ChainHash != e.ChainHash ||
			ce.DataContentType != "application/json" || ce.DataSchema != events.DataSchemaURI(e.Type, events.CurrentVersion(e.Type)) ||
			ce.Actor != "system" || ce.RequestID == "" {
			t.Fatalf("line %d: %+v\nstored: %+v", i+1, ce, e)
		}
		if !strings.HasPrefix(ce.Subject, "user/") && !strings.HasPrefix(ce.Subject, "email/") {
			t.Fatalf("line %d: subject %q", i+1, ce.Subject)
		}
		var data map[string]any
		if err := json.Unmarshal(ce.Data, &data); err != nil {
			t.Fatalf("line %d: data: %v", i+1, err)
		}
		if data["schema_version"] != float64(events.CurrentVersion(ce.Type)) {
			t.Fatalf("line %d: data not at the current schema version: %s", i+1, ce.Data)
		}
		if v, ok := data["password_hash"]; ok {
			sawHash++
			if v != "[redacted]" {
				t.Fatalf("line %d leaks the password hash: %s", i+1, ce.Data)
			}
		}
		if v, ok := data["digest"]; ok {
			sawDigest++
			if v != "[redacted]" {
				t.Fatalf("line %d leaks a digest: %s", i+1, ce.Data)
			}
		}
	}
	if sawHash != 3 || sawDigest < 5 {
		t.Fatalf("want 3 password_set and ≥ 5 digests (redacted), saw %d and %d", sawHash, sawDigest)
	}
	raw := w.ctl("events", "export").stdout
	if strings.Contains(raw, "$argon2id$") {
		t.Fatal("export contains an argon2id hash")
	}

	// --user: exactly that user's events, in order.
	aliceHist, err := w.store.Load(ctx, events.UserAggregate(h.alice), 0)
	if err != nil {
		t.Fatal(err)
	}
	got := decodeAll[events.CloudEvent](t, w.ctl("events", "export", "--user", h.alice.String()).expect(t, 0).lines)
	if len(got) != len(aliceHist) {
		t.Fatalf("--user: %d events, alice has %d", len(got), len(aliceHist))
	}
	for i, ce := range got {
		if ce.Subject != agg(h.alice) || ce.Sequence != aliceHist[i].Sequence {
			t.Fatalf("--user line %d: %+v", i, ce)
		}
	}

	// --type: only renames, with their payload.
	ren := decodeAll[events.CloudEvent](t, w.ctl("events", "export", "--type", "identityd.user.renamed").expect(t, 0).lines)
	if len(ren) != h.renames {
		t.Fatalf("--type renamed: %d lines, want %d", len(ren), h.renames)
	}
	var names []string
	for _, ce := range ren {
		if ce.Type != events.TypeUserRenamed {
			t.Fatalf("--type renamed printed %s", ce.Type)
		}
		names = append(names, decode[events.UserRenamed](t, ce.Data).Name)
	}
	if want := []string{"Alice Pleasance", "Alice Hargreaves", "Robert Builder"}; !slices.Equal(names, want) {
		t.Fatalf("renames: %v, want %v", names, want)
	}
	both := decodeAll[events.CloudEvent](t, w.ctl("events", "export", "--user", h.bob.String(), "--type", "identityd.user.renamed").expect(t, 0).lines)
	if len(both) != 1 || both[0].Subject != agg(h.bob) || both[0].Type != events.TypeUserRenamed {
		t.Fatalf("--user bob --type renamed: %+v", both)
	}
	claims := decodeAll[events.CloudEvent](t, w.ctl("events", "export", "--type", "identityd.email.claimed").expect(t, 0).lines)
	if len(claims) != 3 {
		t.Fatalf("--type email.claimed: %d lines", len(claims))
	}

	// --since / --until windows, against the full export filtered by time.
	window := func(since, until time.Time) []uint64 {
		var seqs []uint64
		for _, ce := range all {
			if (since.IsZero() || !ce.Time.Before(since)) && (until.IsZero() || ce.Time.Before(until)) {
				seqs = append(seqs, ce.Sequence)
			}
		}
		return seqs
	}
	seqsOf := func(args ...string) []uint64 {
		t.Helper()
		var seqs []uint64
		for _, ce := range decodeAll[events.CloudEvent](t, w.ctl(append([]string{"events", "export"}, args...)...).expect(t, 0).lines) {
			seqs = append(seqs, ce.Sequence)
		}
		return seqs
	}
	mid := h.beforeSecondRename
	fmtT := func(t time.Time) string { return t.Format(time.RFC3339Nano) }
	for _, c := range []struct {
		name         string
		since, until time.Time
	}{
		{"since mid", mid, time.Time{}},
		{"until mid", time.Time{}, mid},
		{"mid to after deletion", mid, h.afterDeletion},
		{"exact event time", all[5].Time, all[10].Time},
		{"before everything", h.beforeSignUp, time.Time{}},
		{"after everything", h.afterDeletion, time.Time{}},
		{"empty window", mid, mid},
	} {
		var args []string
		if !c.since.IsZero() {
			args = append(args, "--since", fmtT(c.since))
		}
		if !c.until.IsZero() {
			args = append(args, "--until", fmtT(c.until))
		}
		want, got := window(c.since, c.until), seqsOf(args...)
		if !slices.Equal(want, got) {
			t.Errorf("%s (%v): want sequences %v, got %v", c.name, args, want, got)
		}
	}
	if n := len(window(mid, time.Time{})); n == 0 || n == len(all) {
		t.Fatalf("the mid window should split the stream, has %d of %d", n, len(all))
	}
	// A window combined with a filter.
	sinceRen := decodeAll[events.CloudEvent](t, w.ctl("events", "export", "--type", "identityd.user.renamed", "--since", fmtT(mid)).expect(t, 0).lines)
	if len(sinceRen) != 2 || decode[events.UserRenamed](t, sinceRen[0].Data).Name != "Alice Hargreaves" {
		t.Fatalf("renames since mid: %+v", sinceRen)
	}

	for _, args := range [][]string{
		{"events", "export", "--since", "yesterday"},
		{"events", "export", "--until", "2026-13-01T00:00:00Z"},
		{"events", "export", "--user", "alice"},
		{"events", "export", "--type", "identityd.user.exploded"},
		{"events", "export", "--user", h.alice.String(), "--type", "identityd.email.claimed"},
		{"events", "export", "extra"},
	} {
		if r := w.ctl(args...).expect(t, 2); r.stdout != "" {
			t.Fatalf("%v printed: %s", args, r)
		}
	}
}

// ---------------------------------------------------------------------------------------------
// events tail

func TestEventsTail(t *testing.T) {
	t.Parallel()
	w := newPostgresWorld(t)
	ctx := context.Background()
	alice := w.signUp("alice@example.com", "Alice")
	bob := w.signUp("bob@example.com", "Bob")
	before := w.last()

	tctx, cancel := context.WithTimeout(ctx, 20*time.Second)
	defer cancel()
	done := make(chan result, 1)
	go func() {
		done <- runRaw(tctx, w.env, "events", "tail", "--count", "3", "--type", "identityd.user.renamed")
	}()
	// The tail subscribes asynchronously, so rename until it has seen three renames; it must
	// print three consecutive renames, in order, and nothing else.
	var r result
	var want []string
	received := false
	for i := 0; i < 100 && !received; i++ {
		name := fmt.Sprintf("Alice %d", i+1)
		w.rename(alice, name)
		want = append(want, name)
		w.createToken(bob, fmt.Sprintf("noise %d", i)) // not a rename: filtered out
		select {
		case r = <-done:
			received = true
		case <-time.After(50 * time.Millisecond):
		}
	}
	if !received {
		select {
		case r = <-done:
		case <-time.After(15 * time.Second):
			t.Fatal("events tail did not stop after 3 renames")
		}
	}
	r = r.parse(t).expect(t, 0)
	got := decodeAll[events.CloudEvent](t, r.lines)
	if len(got) != 3 {
		t.Fatalf("want exactly 3 lines: %s", r)
	}
	firstName := decode[events.UserRenamed](t, got[0].Data).Name
	start := -1
	for i, n := range want {
		if n == firstName {
			start = i
		}
	}
	if start < 0 || start+3 > len(want) {
		t.Fatalf("first tailed rename %q is not one of ours followed by two more: %v", firstName, want)
	}
	for i, ce := range got {
		if ce.Type != events.TypeUserRenamed || ce.SpecVersion != "1.0" || ce.Subject != agg(alice) || ce.Sequence <= before ||
			decode[events.UserRenamed](t, ce.Data).Name != want[start+i] || (i > 0 && ce.Sequence <= got[i-1].Sequence) {
			t.Fatalf("line %d: %+v (want rename to %q after %d)", i, ce, want[start+i], before)
		}
	}

	// --from-start replays the stream from its first event.
	r = runCtl(tctx, t, w.env, "events", "tail", "--from-start", "--count", "2").expect(t, 0)
	first := decodeAll[events.CloudEvent](t, r.lines)
	all := w.exportAll()
	if len(first) != 2 || first[0].Sequence != 1 || first[1].Sequence != 2 || first[0].ID != all[0].ID || first[1].ID != all[1].ID {
		t.Fatalf("--from-start --count 2: %s", r)
	}
	// ... filtered by user.
	r = runCtl(tctx, t, w.env, "events", "tail", "--from-start", "--user", bob.String(), "--count", "1").expect(t, 0)
	if ce := decode[events.CloudEvent](t, r.lines[0]); len(r.lines) != 1 || ce.Subject != agg(bob) || ce.Type != events.TypeUserRegistered {
		t.Fatalf("--from-start --user bob: %s", r)
	}

	// Without --count it follows until interrupted, which is a normal end.
	ictx, icancel := context.WithCancel(ctx)
	go func() { done <- runRaw(ictx, w.env, "events", "tail", "--user", alice.String()) }()
	time.Sleep(300 * time.Millisecond)
	w.rename(alice, "Alice Final")
	time.Sleep(500 * time.Millisecond) // let it print the rename
	icancel()
	select {
	case r = <-done:
	case <-time.After(10 * time.Second):
		t.Fatal("events tail did not stop when interrupted")
	}
	r = r.parse(t).expect(t, 0)
	// Whether the rename made it before the interrupt depends on the machine's speed; what is
	// printed must be that rename, and the interrupt must end the command normally.
	if len(r.lines) > 1 || (len(r.lines) == 1 && decode[events.UserRenamed](t, decode[events.CloudEvent](t, r.lines[0]).Data).Name != "Alice Final") {
		t.Fatalf("interrupted tail: %s", r)
	}

	for _, args := range [][]string{
		{"events", "tail", "--count", "many"},
		{"events", "tail", "--type", "nope"},
		{"events", "tail", "extra"},
	} {
		w.ctl(args...).expect(t, 2)
	}
}

// ---------------------------------------------------------------------------------------------
// projections status and rebuild

type status struct {
	Projection string    `json:"projection"`
	Position   uint64    `json:"position"`
	StreamLast uint64    `json:"stream_last"`
	Lag        *uint64   `json:"lag"`
	UpdatedAt  time.Time `json:"updated_at"`
	Rebuilding bool      `json:"rebuilding"`
}

func TestProjectionsStatus(t *testing.T) {
	t.Parallel()
	w := newPostgresWorld(t)
	w.seed()
	last := w.sync()

	r := w.ctl("projections", "status").expect(t, 0)
	st := decodeAll[status](t, r.lines)
	if len(st) != 1 || st[0].Projection != "users_v1" || st[0].Lag == nil || *st[0].Lag != 0 ||
		st[0].Position != last || st[0].StreamLast != last || st[0].Rebuilding || st[0].UpdatedAt.IsZero() {
		t.Fatalf("status: %s", r)
	}
	w.ctl("projections", "status", "extra").expect(t, 2)
}

// TestRebuildWhileServing rebuilds a history longer than one rebuild batch (so part of it is
// replayed outside the switch-over lock) while the projector keeps projecting and a writer
// keeps renaming users.
func TestRebuildWhileServing(t *testing.T) {
	t.Parallel()
	w := newPostgresWorld(t)
	h := w.seed()
	ctx := context.Background()

	// Bulk history: > 1000 events, written by several writers at once.
	const writers, perWriter = 8, 140
	var wg sync.WaitGroup
	for i := range writers {
		id := w.signUp(fmt.Sprintf("bulk%d@example.com", i), fmt.Sprintf("Bulk %d", i))
		wg.Go(func() {
			for j := range perWriter {
				if _, _, err := w.svc.Rename(ctx, w.meta(), id, fmt.Sprintf("Bulk %d.%d", i, j)); err != nil {
					t.Errorf("bulk rename: %v", err)
					return
				}
			}
		})
	}
	wg.Wait()
	before := w.sync()
	if before <= 1000 {
		t.Fatalf("history too short to exercise the catch-up phase: %d", before)
	}

	// A writer renames bob over and over until told to stop.
	var (
		stop     = make(chan struct{})
		renamed  atomic.Int64
		lastName atomic.Value
		lastSeq  atomic.Uint64
		wdone    = make(chan struct{})
	)
	go func() {
		defer close(wdone)
		for i := 0; ; i++ {
			select {
			case <-stop:
				return
			default:
			}
			name := fmt.Sprintf("Bob %d", i)
			_, res, err := w.svc.Rename(ctx, w.meta(), h.bob, name)
			if err != nil {
				t.Errorf("rename during rebuild: %v", err)
				return
			}
			lastName.Store(name)
			lastSeq.Store(res.Seq)
			renamed.Add(1)
			time.Sleep(time.Millisecond)
		}
	}()
	waitRenames := func(n int64) {
		t.Helper()
		for deadline := time.Now().Add(10 * time.Second); renamed.Load() < n; time.Sleep(time.Millisecond) {
			if time.Now().After(deadline) {
				t.Fatalf("writer stuck at %d renames", renamed.Load())
			}
		}
	}
	waitRenames(5)
	startCount := renamed.Load()
	r := w.ctl("projections", "rebuild", "users")
	during := renamed.Load() - startCount
	waitRenames(renamed.Load() + 5) // and it goes on afterwards
	close(stop)
	<-wdone
	r.expect(t, 0)
	if t.Failed() {
		t.FailNow()
	}
	t.Logf("rebuild: %s (%d renames during it)", strings.TrimSpace(r.stdout), during)

	rb := decode[struct {
		Projection string  `json:"projection"`
		Events     uint64  `json:"events"`
		Position   uint64  `json:"position"`
		DurationMS *int64  `json:"duration_ms"`
		Rate       *uint64 `json:"events_per_second"`
	}](t, r.lines[0])
	final := w.last()
	if len(r.lines) != 1 || rb.Projection != "users_v1" || rb.Events != rb.Position || rb.Position < before || rb.Position > final ||
		rb.DurationMS == nil || rb.Rate == nil {
		t.Fatalf("rebuild: want events == position in [%d, %d], got %s", before, final, r)
	}

	// The live projector carries on in the new tables: it gets to the writer's last rename.
	w.waitFor(lastSeq.Load())
	rm := projections.NewReadModel(w.db, projections.CurrentTables)
	u, err := rm.User(ctx, h.bob)
	if err != nil || u.Name != lastName.Load().(string) || u.Version != lastSeq.Load() {
		t.Fatalf("bob after rebuild: %+v %v, want %q at %d", u, err, lastName.Load(), lastSeq.Load())
	}
	seq := w.rename(h.alice, "Alice After Rebuild")
	w.waitFor(seq)
	if u, err := rm.User(ctx, h.alice); err != nil || u.Name != "Alice After Rebuild" {
		t.Fatalf("alice after rebuild: %+v %v", u, err)
	}
	if toks, err := rm.Tokens(ctx, h.alice); err != nil || len(toks) != 1 || toks[0].ID != h.laptop {
		t.Fatalf("alice's tokens after rebuild: %+v %v", toks, err)
	}

	diffs, s := verifyOutput(t, w.ctl("verify").expect(t, 0))
	if len(diffs) != 0 || s.Events != seq || s.Users != 3+writers {
		t.Fatalf("verify after rebuild: %+v %+v", s, diffs)
	}
	st := decodeAll[status](t, w.ctl("projections", "status").expect(t, 0).lines)
	if len(st) != 1 || st[0].Projection != "users_v1" || *st[0].Lag != 0 {
		t.Fatalf("status after rebuild (no leftover _next checkpoint): %+v", st)
	}
}

// ---------------------------------------------------------------------------------------------
// embedded defaults: SQLite in the data dir, NATS at IDENTITYD_NATS_LISTEN

func TestEmbeddedDefaultsSQLite(t *testing.T) {
	t.Parallel()
	dir := t.TempDir()
	// identityctl finds the reader's key, and the event public keys identityd published, in dir.
	w := startWorld(t, projections.SQLiteURL(dir+"/identityd.db"), embedded.KeyDir(dir), dir)
	w.env = map[string]string{
		"IDENTITYD_DATA_DIR":    dir,
		"IDENTITYD_NATS_LISTEN": strings.TrimPrefix(w.natsURL, "nats://"),
	}
	h := w.seed()
	last := w.sync()

	diffs, s := verifyOutput(t, w.ctl("verify").expect(t, 0))
	if len(diffs) != 0 || s.Events != last || s.Users != 3 {
		t.Fatalf("verify: %+v %+v", s, diffs)
	}
	st := decodeAll[status](t, w.ctl("projections", "status").expect(t, 0).lines)
	if len(st) != 1 || st[0].Projection != "users_v1" || *st[0].Lag != 0 || st[0].Position != last {
		t.Fatalf("status: %+v", st)
	}
	if n := len(w.exportAll()); uint64(n) != last {
		t.Fatalf("export: %d of %d", n, last)
	}
	alice := decode[domain.UserSnapshot](t, w.ctl("users", "show", h.alice.String()).expect(t, 0).lines[0])
	if alice.Name != "Alice Hargreaves" {
		t.Fatalf("alice: %+v", alice)
	}

	// Tamper, verify finds it, rebuild (projector running) repairs it.
	if _, err := w.db.ExecContext(context.Background(), "UPDATE users_v1 SET name = 'Mallory' WHERE id = ?", h.alice); err != nil {
		t.Fatal(err)
	}
	diffs, _ = verifyOutput(t, w.ctl("verify").expect(t, 1))
	if len(diffs) != 1 || diffs[0].Kind != "user_field" || diffs[0].Aggregate != agg(h.alice) {
		t.Fatalf("tampered: %+v", diffs)
	}
	rb := decode[map[string]any](t, w.ctl("projections", "rebuild").expect(t, 0).lines[0])
	if rb["events"] != float64(last) {
		t.Fatalf("rebuild: %v", rb)
	}
	seq := w.rename(h.alice, "Alice Again")
	w.waitFor(seq)
	if u, err := projections.NewReadModel(w.db, projections.CurrentTables).User(context.Background(), h.alice); err != nil || u.Name != "Alice Again" {
		t.Fatalf("alice after rebuild: %+v %v", u, err)
	}
	w.ctl("verify").expect(t, 0)
}

// ---------------------------------------------------------------------------------------------
// usage and errors

func TestUsage(t *testing.T) {
	t.Parallel()
	env := map[string]string{} // must not matter: none of these gets as far as connecting
	for _, args := range [][]string{
		{},
		{"frobnicate"},
		{"events"},
		{"events", "replay"},
		{"users"},
		{"projections"},
		{"projections", "rebuild", "nope"},
		{"projections", "rebuild", "users", "users"},
		{"verify", "now"},
		{"--no-such-flag", "verify"},
	} {
		r := runCtl(context.Background(), t, env, args...)
		if r.code != 2 || r.stdout != "" || !strings.Contains(r.stderr, "Usage:") {
			t.Errorf("%q: want exit 2 with usage on stderr, got %s", args, r)
		}
	}
	if r := runCtl(context.Background(), t, env, "--help"); r.code != 0 || !strings.Contains(r.stderr, "Usage:") {
		t.Errorf("--help: %s", r)
	}
}

func TestUnreachableNATS(t *testing.T) {
	t.Parallel()
	env := map[string]string{"IDENTITYD_NATS_URL": "nats://127.0.0.1:1", "IDENTITYD_DATA_DIR": t.TempDir()}
	for _, args := range [][]string{
		{"events", "export"},
		{"events", "tail"},
		{"users", "show", uuid.NewString()},
		{"projections", "rebuild"},
	} {
		r := runCtl(context.Background(), t, env, args...)
		if r.code != 3 || r.stdout != "" || !strings.Contains(r.stderr, "connect to NATS at nats://127.0.0.1:1") {
			t.Errorf("%q: want exit 3 naming the NATS URL, got %s", args, r)
		}
	}
	// The flag wins over the environment.
	r := runCtl(context.Background(), t, map[string]string{"IDENTITYD_NATS_URL": "nats://127.0.0.1:2"}, "--nats-url", "nats://127.0.0.1:1", "events", "export")
	if r.code != 3 || !strings.Contains(r.stderr, "127.0.0.1:1") {
		t.Errorf("--nats-url: %s", r)
	}
}
