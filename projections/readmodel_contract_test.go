package projections

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"testing"
	"time"

	"github.com/google/uuid"
	"github.com/uptrace/bun"

	"github.com/identityd/identityd/events"
	"github.com/identityd/identityd/projections/projectiontest"
)

// The read-model contract: what the HTTP API may rely on from ReadModel and UsageTracker,
// whichever database is underneath. One suite, run against every backend.

func TestReadModelContract(t *testing.T) {
	for _, b := range testBackends {
		t.Run(b.name, func(t *testing.T) {
			t.Parallel()
			readModelContract(t, b)
		})
	}
}

// contractWorld is one database holding a known history. Subtests run in order against it;
// those that change it do so with users of their own, so what the others read stays put.
type contractWorld struct {
	db      *bun.DB
	url     string
	rm      *ReadModel
	history []events.Event // every event applied, from stream sequence 1 on
}

func (w *contractWorld) seq() uint64 { return uint64(len(w.history)) }

// apply appends events to the history and applies them as one batch.
func (w *contractWorld) apply(t *testing.T, evs ...events.Event) {
	t.Helper()
	batch := projectiontest.Envelopes(w.seq()+1, evs...)
	pos, err := applyBatch(context.Background(), w.db, CurrentTables, batch)
	if want := batch[len(batch)-1].Sequence; err != nil || pos != want {
		t.Fatalf("applyBatch = %d, %v; want %d, nil", pos, err, want)
	}
	w.history = append(w.history, evs...)
}

// userWithTokens registers a fresh user with n tokens created a minute apart (oldest first).
func (w *contractWorld) userWithTokens(t *testing.T, n int) (uuid.UUID, []uuid.UUID) {
	t.Helper()
	user := uuid.New()
	evs := []events.Event{events.UserRegistered{Versioned: events.V(), UserID: user,
		Email: user.String() + "@example.com", Name: "user " + user.String()[:8], PersonalOrgSlug: user.String(),
		RegisteredAt: projectiontest.T0}}
	var ids []uuid.UUID
	for i := 0; i < n; i++ {
		ev := projectiontest.TokenCreated(user, uuid.New(), projectiontest.T0.Add(time.Duration(i+1)*time.Minute), nil)
		evs = append(evs, ev)
		ids = append(ids, ev.TokenID)
	}
	w.apply(t, evs...)
	return user, ids
}

// The known history.
var (
	cTokA1 = projectiontest.TokenCreated(projectiontest.AliceID, projectiontest.TokA1, projectiontest.T0.Add(1*time.Minute), nil)
	cTokA2 = projectiontest.TokenCreated(projectiontest.AliceID, projectiontest.TokA2, projectiontest.T0.Add(2*time.Minute), projectiontest.Ptr(projectiontest.T0.Add(time.Hour).In(projectiontest.Zone)))
	cTokA3 = projectiontest.TokenCreated(projectiontest.AliceID, projectiontest.TokA3, projectiontest.T0.Add(3*time.Minute), projectiontest.Ptr(projectiontest.T0.Add(3*time.Minute+30*time.Second)))
	cTokAR = projectiontest.TokenCreated(projectiontest.AliceID, projectiontest.TokAR, projectiontest.T0.Add(4*time.Minute), nil) // the newest, but revoked
	cTokB1 = projectiontest.TokenCreated(projectiontest.BobID, projectiontest.TokB1, projectiontest.T0.Add(5*time.Minute), nil)   // newer than all of alice's
	cSesA1 = projectiontest.SessionStarted(projectiontest.AliceID, projectiontest.SesA1, projectiontest.T0.Add(6*time.Minute))
	cSesA2 = projectiontest.SessionStarted(projectiontest.AliceID, projectiontest.SesA2, projectiontest.T0.Add(7*time.Minute)) // ended
	cTokC1 = projectiontest.TokenCreated(projectiontest.CarolID, projectiontest.TokC1, projectiontest.T0.Add(8*time.Minute), nil)
	cSesC1 = projectiontest.SessionStarted(projectiontest.CarolID, projectiontest.SesC1, projectiontest.T0.Add(9*time.Minute)) // carol is deleted
	// A token of a user the read model does not hold: a credential is never returned half.
	cTokGhost = projectiontest.TokenCreated(uuid.MustParse("90000000-0000-4000-8000-000000000009"),
		uuid.MustParse("10000000-0000-4000-8000-000000000099"), projectiontest.T0.Add(10*time.Minute), nil)
	cEvents = []events.Event{
		projectiontest.Registered(projectiontest.AliceID, "Alice"),       // 1
		projectiontest.Registered(projectiontest.BobID, "Bob"),           // 2
		projectiontest.Registered(projectiontest.CarolID, "Carol"),       // 3
		events.Renamed(projectiontest.AliceID, "Alice", "Alice Liddell"), // 4
		cTokA1, cTokA2, cTokA3, cTokAR, // 5..8
		events.TokenRevoked{Versioned: events.V(), UserID: projectiontest.AliceID, TokenID: projectiontest.TokAR}, // 9
		cTokB1,         // 10
		cSesA1, cSesA2, // 11, 12
		events.SessionEnded{Versioned: events.V(), UserID: projectiontest.AliceID, SessionID: projectiontest.SesA2}, // 13
		cTokC1, cSesC1, // 14, 15
		events.UserDeleted{Versioned: events.V(), UserID: projectiontest.CarolID},                                               // 16
		events.EmailClaimed{Versioned: events.V(), EmailHash: events.EmailAggregate("dave@example.com").ID, UserID: uuid.New()}, // 17
		cTokGhost, // 18
	}
)

// cAlice and cBob are the users after the known history.
func cAlice() UserRow {
	u := projectiontest.UserRow(projectiontest.AliceID, "Alice", 1)
	u.Name, u.UpdatedAt, u.Version = "Alice Liddell", projectiontest.EvTime(4), 13
	return u
}

func cBob() UserRow {
	return projectiontest.Versioned(projectiontest.UserRow(projectiontest.BobID, "Bob", 2), 10)
}

func fmtCredential(c Credential) string {
	return fmt.Sprintf("{token=%s expires=%s user=%s}", c.TokenID, projectiontest.FmtTimePtr(c.ExpiresAt), projectiontest.FmtUser(c.User))
}

func checkCredential(t *testing.T, what string, got, want Credential) {
	t.Helper()
	if got.TokenID != want.TokenID || !projectiontest.SameTimePtr(got.ExpiresAt, want.ExpiresAt) || !projectiontest.SameUser(got.User, want.User) {
		t.Errorf("%s:\n got  %s\n want %s", what, fmtCredential(got), fmtCredential(want))
	}
}

func fmtTokens(ts []Token) string {
	s := "["
	for i, tk := range ts {
		if i > 0 {
			s += ",\n       "
		}
		s += projectiontest.FmtToken(tk.TokenRow) + " last_used=" + projectiontest.FmtTimePtr(tk.LastUsedAt)
	}
	return s + "]"
}

// checkTokens compares a Tokens listing with want, in order.
func checkTokens(t *testing.T, got, want []Token) {
	t.Helper()
	ok := len(got) == len(want)
	for i := 0; ok && i < len(got); i++ {
		ok = projectiontest.SameToken(got[i].TokenRow, want[i].TokenRow) && projectiontest.SameTimePtr(got[i].LastUsedAt, want[i].LastUsedAt)
	}
	if !ok {
		t.Errorf("Tokens:\n got  %s\n want %s", fmtTokens(got), fmtTokens(want))
	}
}

// lastUsed is the LastUsedAt that Tokens lists for token id of user.
func lastUsed(t *testing.T, rm *ReadModel, user, id uuid.UUID) *time.Time {
	t.Helper()
	ts, err := rm.Tokens(context.Background(), user)
	if err != nil {
		t.Fatalf("Tokens: %v", err)
	}
	for _, tk := range ts {
		if tk.ID == id {
			return tk.LastUsedAt
		}
	}
	t.Fatalf("token %s is not listed for user %s", id, user)
	return nil
}

func checkLastUsed(t *testing.T, rm *ReadModel, user, id uuid.UUID, want *time.Time) {
	t.Helper()
	if got := lastUsed(t, rm, user, id); !projectiontest.SameTimePtr(got, want) {
		t.Errorf("token %s LastUsedAt = %s, want %s", id, projectiontest.FmtTimePtr(got), projectiontest.FmtTimePtr(want))
	}
}

func quietLogger() *slog.Logger { return slog.New(slog.NewTextHandler(io.Discard, nil)) }

func readModelContract(t *testing.T, b testBackend) {
	db, dbURL := newSchemaDB(t, b, CurrentTables)
	w := &contractWorld{db: db, url: dbURL, rm: NewReadModel(db, CurrentTables)}
	w.apply(t, cEvents...)
	rm := w.rm
	ctx := context.Background()

	t.Run("APITokenByDigest resolves a token with its user", func(t *testing.T) {
		for _, tc := range []struct {
			ev   events.TokenCreated
			user UserRow
		}{{cTokA1, cAlice()}, {cTokA2, cAlice()}, {cTokA3, cAlice()}, {cTokB1, cBob()}} {
			c, err := rm.APITokenByDigest(ctx, tc.ev.Digest)
			if err != nil {
				t.Fatalf("APITokenByDigest(%s): %v", tc.ev.TokenID, err)
			}
			checkCredential(t, "token "+tc.ev.TokenID.String(), c, Credential{TokenID: tc.ev.TokenID, ExpiresAt: tc.ev.ExpiresAt, User: tc.user})
		}
	})

	t.Run("SessionByDigest resolves a session with its user", func(t *testing.T) {
		c, err := rm.SessionByDigest(ctx, cSesA1.Digest)
		if err != nil {
			t.Fatalf("SessionByDigest: %v", err)
		}
		checkCredential(t, "session", c, Credential{TokenID: projectiontest.SesA1, ExpiresAt: &cSesA1.ExpiresAt, User: cAlice()})
	})

	t.Run("lookups that match nothing are ErrNotFound", func(t *testing.T) {
		type lookup func(context.Context, string) (Credential, error)
		for _, tc := range []struct {
			name   string
			lookup lookup
			digest string
		}{
			{"unknown token digest", rm.APITokenByDigest, projectiontest.DigestOf("nobody's secret")},
			{"unknown session digest", rm.SessionByDigest, projectiontest.DigestOf("nobody's secret")},
			{"empty digest", rm.APITokenByDigest, ""},
			{"revoked token", rm.APITokenByDigest, cTokAR.Digest},
			{"ended session", rm.SessionByDigest, cSesA2.Digest},
			{"deleted user's token", rm.APITokenByDigest, cTokC1.Digest},
			{"deleted user's session", rm.SessionByDigest, cSesC1.Digest},
			{"session digest as an API token", rm.APITokenByDigest, cSesA1.Digest},
			{"API token digest as a session", rm.SessionByDigest, cTokA1.Digest},
			{"token of a user not in the read model", rm.APITokenByDigest, cTokGhost.Digest},
			{"digest in another case", rm.APITokenByDigest, fmt.Sprintf("%X", cTokA1.Digest)},
		} {
			c, err := tc.lookup(ctx, tc.digest)
			if !errors.Is(err, ErrNotFound) {
				t.Errorf("%s: got %s, %v; want ErrNotFound", tc.name, fmtCredential(c), err)
			}
		}
	})

	t.Run("Credential.Expired", func(t *testing.T) {
		// Lookups do not filter expired credentials; the caller asks Expired.
		c, err := rm.APITokenByDigest(ctx, cTokA3.Digest)
		if err != nil {
			t.Fatalf("APITokenByDigest(expiring token): %v", err)
		}
		exp := *cTokA3.ExpiresAt
		for _, tc := range []struct {
			now  time.Time
			want bool
		}{
			{cTokA3.CreatedAt, false},
			{exp.Add(-time.Microsecond), false},
			{exp, true},
			{exp.In(projectiontest.Zone), true},
			{exp.Add(time.Hour), true},
		} {
			if got := c.Expired(tc.now); got != tc.want {
				t.Errorf("token expiring %s: Expired(%s) = %v, want %v", projectiontest.FmtTime(exp), projectiontest.FmtTime(tc.now), got, tc.want)
			}
		}
		c, err = rm.APITokenByDigest(ctx, cTokA1.Digest)
		if err != nil || c.ExpiresAt != nil {
			t.Fatalf("APITokenByDigest(token without expiry) = %s, %v", fmtCredential(c), err)
		}
		if c.Expired(time.Date(3000, 1, 1, 0, 0, 0, 0, time.UTC)) {
			t.Errorf("a token without expiry expired")
		}
		s, err := rm.SessionByDigest(ctx, cSesA1.Digest)
		if err != nil {
			t.Fatalf("SessionByDigest: %v", err)
		}
		if s.Expired(cSesA1.StartedAt.Add(time.Hour)) || !s.Expired(cSesA1.ExpiresAt) {
			t.Errorf("session expiring %s: Expired wrong around its expiry", projectiontest.FmtTime(cSesA1.ExpiresAt))
		}
	})

	t.Run("User", func(t *testing.T) {
		for _, want := range []UserRow{cAlice(), cBob()} {
			got, err := rm.User(ctx, want.ID)
			if err != nil {
				t.Fatalf("User(%s): %v", want.ID, err)
			}
			projectiontest.CheckRows(t, "User", []UserRow{got}, []UserRow{want}, projectiontest.SameUser, projectiontest.FmtUser)
		}
		for name, id := range map[string]uuid.UUID{"unknown": uuid.New(), "deleted": projectiontest.CarolID} {
			if u, err := rm.User(ctx, id); !errors.Is(err, ErrNotFound) {
				t.Errorf("User(%s user) = %s, %v; want ErrNotFound", name, projectiontest.FmtUser(u), err)
			}
		}
	})

	t.Run("Tokens lists the user's live tokens newest first", func(t *testing.T) {
		listed := func(evs ...events.TokenCreated) []Token {
			out := make([]Token, 0, len(evs))
			for _, ev := range evs {
				out = append(out, Token{TokenRow: projectiontest.TokenRow(ev)})
			}
			return out
		}
		for _, tc := range []struct {
			name string
			user uuid.UUID
			want []Token
		}{
			{"alice", projectiontest.AliceID, listed(cTokA3, cTokA2, cTokA1)}, // not the revoked one, not bob's
			{"bob", projectiontest.BobID, listed(cTokB1)},
			{"deleted carol", projectiontest.CarolID, nil},
			{"unknown", uuid.New(), nil},
		} {
			got, err := rm.Tokens(ctx, tc.user)
			if err != nil {
				t.Fatalf("Tokens(%s): %v", tc.name, err)
			}
			checkTokens(t, got, tc.want)
		}
	})

	t.Run("RecordUsage sets LastUsedAt and keeps the later time", func(t *testing.T) {
		user, ids := w.userWithTokens(t, 3)
		k1, k2, k3 := ids[0], ids[1], ids[2]
		u1, u2 := projectiontest.T0.Add(10*time.Minute), projectiontest.T0.Add(20*time.Minute)

		if err := rm.RecordUsage(ctx, nil); err != nil {
			t.Fatalf("RecordUsage(nothing): %v", err)
		}
		for _, id := range ids {
			checkLastUsed(t, rm, user, id, nil)
		}
		if err := rm.RecordUsage(ctx, map[uuid.UUID]time.Time{k1: u1, k2: u2.In(projectiontest.Zone)}); err != nil {
			t.Fatalf("RecordUsage: %v", err)
		}
		checkLastUsed(t, rm, user, k1, &u1)
		checkLastUsed(t, rm, user, k2, &u2)
		checkLastUsed(t, rm, user, k3, nil)

		// Older uses (an hour, a microsecond; and an older instant whose wall clock in its
		// zone reads later) do not move a last use back; a newer one moves it on.
		u2later := u2.Add(time.Hour)
		for _, used := range []map[uuid.UUID]time.Time{
			{k1: u1.Add(-time.Hour), k2: u2later},
			{k1: u1.Add(-time.Microsecond)},
			{k1: u1.Add(-time.Minute).In(projectiontest.Zone)},
		} {
			if err := rm.RecordUsage(ctx, used); err != nil {
				t.Fatalf("RecordUsage: %v", err)
			}
		}
		checkLastUsed(t, rm, user, k1, &u1)
		checkLastUsed(t, rm, user, k2, &u2later)
		checkLastUsed(t, rm, user, k3, nil)
		// Other users' tokens are untouched.
		checkLastUsed(t, rm, projectiontest.AliceID, projectiontest.TokA1, nil)
	})

	t.Run("Position follows applyBatch", func(t *testing.T) {
		if pos, err := rm.Position(ctx); err != nil || pos != w.seq() {
			t.Fatalf("Position = %d, %v; want %d", pos, err, w.seq())
		}
		// A second generation of tables has its own checkpoint: 0 before its schema exists
		// (no checkpoint row), 0 after, then wherever its batches take it.
		gen := Tables{Suffix: "contract2"}
		rm2 := NewReadModel(db, gen)
		if pos, err := rm2.Position(ctx); err != nil || pos != 0 {
			t.Fatalf("Position of an uncreated generation = %d, %v; want 0, nil", pos, err)
		}
		if err := CreateSchema(ctx, db, gen); err != nil {
			t.Fatal(err)
		}
		history := projectiontest.Envelopes(1, w.history...)
		steps := [][]events.Envelope{nil, history[:3], history[:5], history[3:10], history[10:], history[:2]}
		var want uint64
		for i, batch := range steps {
			if i > 0 {
				if pos, err := applyBatch(ctx, db, gen, batch); err != nil {
					t.Fatalf("step %d: applyBatch: %v (at %d)", i, err, pos)
				}
				want = max(want, batch[len(batch)-1].Sequence)
			}
			if pos, err := rm2.Position(ctx); err != nil || pos != want {
				t.Fatalf("step %d: Position = %d, %v; want %d", i, pos, err, want)
			}
		}
		if pos, err := rm.Position(ctx); err != nil || pos != w.seq() {
			t.Errorf("the live generation's Position moved to %d, %v; want %d", pos, err, w.seq())
		}
	})

	t.Run("UsageTracker Touch, Pending and Flush", func(t *testing.T) {
		user, ids := w.userWithTokens(t, 2)
		k, other := ids[0], ids[1]
		tr := NewUsageTracker(ctx, rm, time.Hour, quietLogger()) // flushes only when told
		defer tr.Close()
		at := projectiontest.T0.Add(30 * time.Minute)

		if _, ok := tr.Pending(k); ok {
			t.Fatalf("Pending before any Touch")
		}
		tr.Touch(k, at)
		tr.Touch(k, at.Add(-time.Minute)) // older: ignored
		if got, ok := tr.Pending(k); !ok || !got.Equal(at) {
			t.Fatalf("Pending = %s, %v; want %s (the later use)", projectiontest.FmtTime(got), ok, projectiontest.FmtTime(at))
		}
		at = at.Add(time.Minute)
		tr.Touch(k, at)
		if got, ok := tr.Pending(k); !ok || !got.Equal(at) {
			t.Fatalf("Pending = %s, %v; want %s (the newer use)", projectiontest.FmtTime(got), ok, projectiontest.FmtTime(at))
		}
		checkLastUsed(t, rm, user, k, nil) // not written before a flush

		tr.Flush(ctx)
		if got, ok := tr.Pending(k); ok {
			t.Errorf("Pending after Flush = %s", projectiontest.FmtTime(got))
		}
		checkLastUsed(t, rm, user, k, &at)
		checkLastUsed(t, rm, user, other, nil)

		tr.Flush(ctx) // nothing pending: no change
		tr.Touch(k, at.Add(-time.Hour))
		tr.Flush(ctx)
		checkLastUsed(t, rm, user, k, &at) // an older use flushed later does not move it back
	})

	t.Run("UsageTracker Close flushes", func(t *testing.T) {
		user, ids := w.userWithTokens(t, 1)
		tr := NewUsageTracker(ctx, rm, time.Hour, quietLogger())
		at := projectiontest.T0.Add(40 * time.Minute)
		tr.Touch(ids[0], at)
		tr.Close()
		checkLastUsed(t, rm, user, ids[0], &at)
	})

	t.Run("UsageTracker flushes every interval", func(t *testing.T) {
		user, ids := w.userWithTokens(t, 1)
		tr := NewUsageTracker(ctx, rm, 10*time.Millisecond, quietLogger())
		defer tr.Close()
		at := projectiontest.T0.Add(50 * time.Minute)
		tr.Touch(ids[0], at)
		deadline := time.Now().Add(10 * time.Second)
		for lastUsed(t, rm, user, ids[0]) == nil {
			if time.Now().After(deadline) {
				t.Fatalf("the use was not written within 10s by a tracker flushing every 10ms")
			}
			time.Sleep(5 * time.Millisecond)
		}
		checkLastUsed(t, rm, user, ids[0], &at)
	})

	t.Run("UsageTracker keeps uses a failed write did not record", func(t *testing.T) {
		broken, err := OpenDB(ctx, DBConfig{URL: w.url})
		if err != nil {
			t.Fatal(err)
		}
		_ = broken.Close() // every write through it fails
		tr := NewUsageTracker(ctx, NewReadModel(broken, CurrentTables), time.Hour, quietLogger())
		defer tr.Close()
		id, at := uuid.New(), projectiontest.T0.Add(time.Hour)
		tr.Touch(id, at)
		tr.Flush(ctx)
		if got, ok := tr.Pending(id); !ok || !got.Equal(at) {
			t.Errorf("after a failed Flush, Pending = %s, %v; want %s, true", projectiontest.FmtTime(got), ok, projectiontest.FmtTime(at))
		}
	})
}

// TestCredentialExpired: a credential without an expiry never expires; one with an expiry is
// expired from that instant on.
func TestCredentialExpired(t *testing.T) {
	exp := projectiontest.T0
	for _, tc := range []struct {
		name string
		c    Credential
		now  time.Time
		want bool
	}{
		{"no expiry", Credential{}, projectiontest.T0.Add(100 * 365 * 24 * time.Hour), false},
		{"before", Credential{ExpiresAt: &exp}, exp.Add(-time.Nanosecond), false},
		{"at", Credential{ExpiresAt: &exp}, exp, true},
		{"at, other zone", Credential{ExpiresAt: &exp}, exp.In(projectiontest.Zone), true},
		{"after", Credential{ExpiresAt: &exp}, exp.Add(time.Second), true},
	} {
		if got := tc.c.Expired(tc.now); got != tc.want {
			t.Errorf("%s: Expired = %v, want %v", tc.name, got, tc.want)
		}
	}
}
