package projections_test

import (
	"context"
	"fmt"
	"sort"
	"testing"
	"time"

	"github.com/uptrace/bun"

	"github.com/identityd/identityd/domain"
	"github.com/identityd/identityd/events"
	"github.com/identityd/identityd/events/eventstore"
	"github.com/identityd/identityd/projections"
	"github.com/identityd/identityd/projections/dbtest"
)

// serviceHistory writes a realistic history through the domain: sign-ups (email claim,
// registration, password, session), renames, tokens created and revoked, log-ins and log-outs,
// and deleted accounts.
func serviceHistory(t *testing.T, st *eventstore.Store, users int) {
	t.Helper()
	ctx := context.Background()
	svc, err := domain.NewService(st, domain.ServiceConfig{
		Password: domain.PasswordParams{MemoryKiB: 64, Time: 1, Threads: 1}, IdempotencySecret: make([]byte, 32),
	})
	if err != nil {
		t.Fatal(err)
	}
	meta := events.Metadata{Actor: "system", RequestID: "test"}
	for i := 0; i < users; i++ {
		email := fmt.Sprintf("user%d@example.com", i)
		up, err := svc.SignUp(ctx, meta, domain.SignUp{Email: email, Name: fmt.Sprint("User ", i), Password: "password123"})
		if err != nil {
			t.Fatal(err)
		}
		id := up.User.ID
		if _, _, err := svc.Rename(ctx, meta, id, fmt.Sprint("Renamed ", i)); err != nil {
			t.Fatal(err)
		}
		tok, err := svc.CreateToken(ctx, meta, id, domain.CreateToken{Description: "ci"})
		if err != nil {
			t.Fatal(err)
		}
		if _, err := svc.CreateToken(ctx, meta, id, domain.CreateToken{Description: "laptop", ExpiresAt: ptr(time.Now().Add(time.Hour))}); err != nil {
			t.Fatal(err)
		}
		if i%2 == 0 {
			if _, err := svc.RevokeToken(ctx, meta, id, tok.Token.ID); err != nil {
				t.Fatal(err)
			}
		}
		if _, err := svc.LogIn(ctx, meta, domain.LogIn{Email: email, Password: "password123"}); err != nil {
			t.Fatal(err)
		}
		if _, err := svc.EndSession(ctx, meta, id, up.Session.ID); err != nil {
			t.Fatal(err)
		}
		if i%3 == 0 {
			if _, err := svc.DeleteUser(ctx, meta, id); err != nil {
				t.Fatal(err)
			}
		}
	}
}

func ptr[T any](v T) *T { return &v }

// rows renders a snapshot's rows comparably.
func rows(s projections.Snapshot) []string {
	var out []string
	for _, u := range s.Users {
		out = append(out, fmt.Sprintf("user %s %s %s %s %s %s v%d", u.ID, u.Email, u.Name, u.PersonalOrgSlug,
			u.CreatedAt.UTC().Format(time.RFC3339Nano), u.UpdatedAt.UTC().Format(time.RFC3339Nano), u.Version))
	}
	for _, t := range s.Tokens {
		exp := "never"
		if t.ExpiresAt != nil {
			exp = t.ExpiresAt.UTC().Format(time.RFC3339Nano)
		}
		out = append(out, fmt.Sprintf("token %s %s %s %s %s %s", t.ID, t.UserID, t.Description, t.Digest, t.CreatedAt.UTC().Format(time.RFC3339Nano), exp))
	}
	for _, ss := range s.Sessions {
		out = append(out, fmt.Sprintf("session %s %s %s %s %s", ss.ID, ss.UserID, ss.Digest, ss.CreatedAt.UTC().Format(time.RFC3339Nano), ss.ExpiresAt.UTC().Format(time.RFC3339Nano)))
	}
	out = append(out, fmt.Sprintf("audit %d up to %d, checkpoint %d", s.AuditCount, s.AuditMax, s.Position))
	sort.Strings(out)
	return out
}

// TestBulkRebuildEqualsIncremental: the rebuild's in-memory fold and bulk insert produce
// exactly the tables the projector builds event by event, on every backend.
func TestBulkRebuildEqualsIncremental(t *testing.T) {
	st := startStream(t)
	serviceHistory(t, st, 12)
	last, err := st.LastSequence(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	for _, b := range dbtest.Backends {
		t.Run(b.Name, func(t *testing.T) {
			ctx := context.Background()
			incremental := dbtest.Open(t, b.URL(t))
			p, done := newProjector(t, incremental, st.JetStream(), 7)
			wctx, cancel := context.WithTimeout(ctx, 30*time.Second)
			defer cancel()
			if err := p.WaitFor(wctx, last); err != nil {
				t.Fatal(err)
			}
			stopProjector(t, p, done)

			rebuilt := dbtest.Open(t, b.URL(t))
			res, err := projections.Rebuild(ctx, projections.RebuildConfig{DB: rebuilt, Read: st.ReadAll, Last: st.LastSequence, Batch: 50})
			if err != nil || res.Position != last || res.Events != last {
				t.Fatalf("rebuild: %+v, %v (stream ends at %d)", res, err, last)
			}
			want, got := snapshot(t, incremental), snapshot(t, rebuilt)
			if fmt.Sprint(want) != fmt.Sprint(got) {
				t.Fatalf("rebuilt tables differ from the projected ones:\nprojected %v\nrebuilt   %v", want, got)
			}
			verifyAll(t, rebuilt, st)
			if len(want) < 20 {
				t.Fatalf("the history is too small to prove anything: %v", want)
			}
		})
	}
}

func snapshot(t *testing.T, db *bun.DB) []string {
	t.Helper()
	s, err := projections.TakeSnapshot(context.Background(), db, projections.CurrentTables)
	if err != nil {
		t.Fatal(err)
	}
	return rows(s)
}
