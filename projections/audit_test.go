package projections

import (
	"context"
	"strings"
	"testing"

	"github.com/google/uuid"

	"github.com/identityd/identityd/events"
	"github.com/identityd/identityd/projections/projectiontest"
)

// TestAuditLogContract: every event lands in the audit log once, secrets redacted, and the
// filters behave alike on every backend (including LIKE metacharacters in actor prefixes).
func TestAuditLogContract(t *testing.T) {
	ctx := context.Background()
	alice, bob := uuid.New(), uuid.New()
	for _, b := range testBackends {
		t.Run(b.name, func(t *testing.T) {
			db, _ := newSchemaDB(t, b, CurrentTables)
			batch := projectiontest.Envelopes(1,
				projectiontest.Registered(alice, "Alice"),
				events.PasswordSet{Versioned: events.V(), UserID: alice, PasswordHash: "$argon2id$v=19$m=64,t=1,p=1$c2FsdA$aGFzaA"},
				projectiontest.TokenCreated(alice, uuid.New(), projectiontest.T0, nil),
				projectiontest.Registered(bob, "Bob"),
				events.Renamed(alice, "Alice", "Alice L"),
				events.EmailClaimed{Versioned: events.V(), EmailHash: strings.Repeat("a", 64), UserID: bob},
			)
			batch[4].Metadata = events.Metadata{Actor: "user:a_b%/token:1", RequestID: "r5", SourceIP: "192.0.2.1", UserAgent: "ua"}
			batch[2].Metadata.Actor = "user:aXb%/token:2" // must not match the prefix "user:a_b%"
			if _, err := applyBatch(ctx, db, CurrentTables, batch); err != nil {
				t.Fatal(err)
			}
			if _, err := applyBatch(ctx, db, CurrentTables, batch); err != nil { // redelivered: no duplicates
				t.Fatal(err)
			}
			rm := NewReadModel(db, CurrentTables)
			all, err := rm.AuditEvents(ctx, AuditFilter{Limit: 100})
			if err != nil || len(all) != 6 || all[0].Sequence != 6 || all[5].Sequence != 1 {
				t.Fatalf("audit log: %d rows (err %v)", len(all), err)
			}
			for _, r := range all {
				if strings.Contains(r.Data, "argon2id") || strings.Contains(r.Data, projectiontest.DigestOf("")[:8]) {
					t.Fatalf("secret in audit row %d: %s", r.Sequence, r.Data)
				}
			}
			redacted := map[string]string{
				string(events.TypePasswordSet):  `"password_hash":"[redacted]"`,
				string(events.TypeTokenCreated): `"digest":"[redacted]"`,
			}
			for _, r := range all {
				if want, ok := redacted[r.Type]; ok && !strings.Contains(r.Data, want) {
					t.Fatalf("%s not redacted: %s", r.Type, r.Data)
				}
			}
			check := func(name string, f AuditFilter, want ...uint64) {
				t.Helper()
				f.Limit = 100
				rows, err := rm.AuditEvents(ctx, f)
				if err != nil {
					t.Fatal(err)
				}
				var got []uint64
				for _, r := range rows {
					got = append(got, r.Sequence)
				}
				if len(got) != len(want) {
					t.Fatalf("%s: got %v, want %v", name, got, want)
				}
				for i := range got {
					if got[i] != want[i] {
						t.Fatalf("%s: got %v, want %v", name, got, want)
					}
				}
			}
			check("alice", AuditFilter{UserID: &alice}, 5, 3, 2, 1)
			check("bob, including his email claim", AuditFilter{UserID: &bob}, 6, 4)
			check("type", AuditFilter{Type: string(events.TypeUserRegistered)}, 4, 1)
			check("actor prefix with metacharacters", AuditFilter{ActorPrefix: "user:a_b%"}, 5)
			check("since", AuditFilter{Since: projectiontest.EvTime(5)}, 6, 5)
			check("until", AuditFilter{Until: projectiontest.EvTime(2)}, 1)
			check("cursor", AuditFilter{Before: 3}, 2, 1)
			row := all[1]
			if row.Actor != "user:a_b%/token:1" || row.RequestID != "r5" || row.SourceIP != "192.0.2.1" || row.UserAgent != "ua" ||
				row.UserID == nil || *row.UserID != alice {
				t.Fatalf("metadata: %+v", row)
			}
		})
	}
}
