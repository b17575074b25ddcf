// Package projectiontest holds fixtures for the read models' tests: events numbered as the feed
// delivers them, fixed ids and times, row builders and readers.
//
// It serves the tests of projections, projections/engine and projections/credcache, so it
// imports only the engine and the read models' rows, never the projections package itself
// (whose internal tests import it).
package projectiontest

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"fmt"
	"strings"
	"testing"
	"time"

	"github.com/google/uuid"
	"github.com/uptrace/bun"

	"github.com/identityd/identityd/events"
	"github.com/identityd/identityd/projections/engine"
	"github.com/identityd/identityd/projections/users"
)

// Times are whole microseconds (PostgreSQL keeps no more) and event times are given in a zone
// other than UTC, so the tests see that the reducers store instants, not wall clocks.
var (
	T0   = time.Date(2025, 3, 4, 5, 6, 7, 123456000, time.UTC)
	Zone = time.FixedZone("UTC+5:30", 5*3600+30*60)
)

// EvTime is the envelope time of the event at stream sequence seq.
func EvTime(seq uint64) time.Time { return T0.Add(time.Duration(seq) * time.Second) } //nolint:gosec // small test sequences

// Envelopes numbers events from stream sequence first on, as the subscriber delivers them.
func Envelopes(first uint64, evs ...events.Event) []events.Envelope {
	out := make([]events.Envelope, len(evs))
	for i, ev := range evs {
		seq := first + uint64(i)
		out[i] = events.Envelope{
			ID:       fmt.Sprintf("event-%d", seq),
			Type:     ev.EventType(),
			Subject:  ev.Aggregate().String(),
			Time:     EvTime(seq).In(Zone),
			Metadata: events.Metadata{Actor: "system"},
			Data:     ev,
			Sequence: seq,
			NATSSubj: events.Subject(ev),
		}
	}
	return out
}

// DigestOf is the hex SHA-256 of secret, as the domain stores credential digests.
func DigestOf(secret string) string {
	sum := sha256.Sum256([]byte(secret))
	return hex.EncodeToString(sum[:])
}

// Ptr is a pointer to a copy of v.
func Ptr[T any](v T) *T { return &v }

// Fixed ids: users, their tokens and sessions.
var (
	AliceID = uuid.MustParse("a11ce000-0000-4000-8000-000000000001")
	BobID   = uuid.MustParse("b0b00000-0000-4000-8000-000000000002")
	CarolID = uuid.MustParse("ca401000-0000-4000-8000-000000000003")

	TokA1 = uuid.MustParse("10000000-0000-4000-8000-0000000000a1")
	TokA2 = uuid.MustParse("10000000-0000-4000-8000-0000000000a2")
	TokA3 = uuid.MustParse("10000000-0000-4000-8000-0000000000a3")
	TokAR = uuid.MustParse("10000000-0000-4000-8000-0000000000af")
	TokB1 = uuid.MustParse("10000000-0000-4000-8000-0000000000b1")
	TokC1 = uuid.MustParse("10000000-0000-4000-8000-0000000000c1")

	SesA1 = uuid.MustParse("20000000-0000-4000-8000-0000000000a1")
	SesA2 = uuid.MustParse("20000000-0000-4000-8000-0000000000a2")
	SesB1 = uuid.MustParse("20000000-0000-4000-8000-0000000000b1")
	SesC1 = uuid.MustParse("20000000-0000-4000-8000-0000000000c1")
)

// RegisteredAt is when a user registered, as the payload says; deliberately not the envelope
// time, which the reducer uses for updated_at.
func RegisteredAt(id uuid.UUID) time.Time {
	return T0.Add(-time.Duration(id[0]) * time.Minute).In(Zone)
}

// Registered is the UserRegistered event of a user named name.
func Registered(id uuid.UUID, name string) events.UserRegistered {
	return events.UserRegistered{
		Versioned: events.V(), UserID: id, Email: strings.ToLower(name) + "@example.com",
		Name: name, PersonalOrgSlug: strings.ToLower(name), RegisteredAt: RegisteredAt(id),
	}
}

// UserRow is the row UserRegistered at stream sequence seq creates.
func UserRow(id uuid.UUID, name string, seq uint64) users.UserRow {
	return users.UserRow{
		ID: id, Email: strings.ToLower(name) + "@example.com", Name: name, PersonalOrgSlug: strings.ToLower(name),
		CreatedAt: RegisteredAt(id), UpdatedAt: EvTime(seq), Version: seq,
	}
}

// Versioned is u after later events of its aggregate that leave the profile alone (tokens,
// sessions) moved its version to seq.
func Versioned(u users.UserRow, seq uint64) users.UserRow {
	u.Version = seq
	return u
}

// TokenCreated is the TokenCreated event of token id of user.
func TokenCreated(user, id uuid.UUID, created time.Time, expires *time.Time) events.TokenCreated {
	return events.TokenCreated{
		Versioned: events.V(), UserID: user, TokenID: id, Description: "token " + id.String()[34:],
		Digest: DigestOf("token-secret-" + id.String()), CreatedAt: created.In(Zone), ExpiresAt: expires,
	}
}

// TokenRow is the row ev creates.
func TokenRow(ev events.TokenCreated) users.TokenRow {
	return users.TokenRow{ID: ev.TokenID, UserID: ev.UserID, Description: ev.Description, Digest: ev.Digest,
		CreatedAt: ev.CreatedAt, ExpiresAt: ev.ExpiresAt}
}

// SessionStarted is the SessionStarted event of session id of user, valid for a day.
func SessionStarted(user, id uuid.UUID, started time.Time) events.SessionStarted {
	return events.SessionStarted{
		Versioned: events.V(), UserID: user, SessionID: id, Digest: DigestOf("session-secret-" + id.String()),
		StartedAt: started.In(Zone), ExpiresAt: started.Add(24 * time.Hour).In(Zone),
	}
}

// SessionRow is the row ev creates.
func SessionRow(ev events.SessionStarted) users.SessionRow {
	return users.SessionRow{ID: ev.SessionID, UserID: ev.UserID, Digest: ev.Digest, CreatedAt: ev.StartedAt, ExpiresAt: ev.ExpiresAt}
}

// --- Reading rows back ----------------------------------------------------------------------

// ReadUsers reads generation g's users in id order.
func ReadUsers(t testing.TB, db *bun.DB, g engine.Tables) []users.UserRow {
	t.Helper()
	var rows []users.UserRow
	if err := db.NewSelect().Model(&rows).ModelTableExpr(g.Name("users") + " AS u").OrderExpr("u.id").Scan(context.Background()); err != nil {
		t.Fatalf("read %s: %v", g.Name("users"), err)
	}
	return rows
}

// ReadTokens reads generation g's API tokens in id order.
func ReadTokens(t testing.TB, db *bun.DB, g engine.Tables) []users.TokenRow {
	t.Helper()
	var rows []users.TokenRow
	if err := db.NewSelect().Model(&rows).ModelTableExpr(g.Name("api_tokens") + " AS t").OrderExpr("t.id").Scan(context.Background()); err != nil {
		t.Fatalf("read %s: %v", g.Name("api_tokens"), err)
	}
	return rows
}

// ReadSessions reads generation g's sessions in id order.
func ReadSessions(t testing.TB, db *bun.DB, g engine.Tables) []users.SessionRow {
	t.Helper()
	var rows []users.SessionRow
	if err := db.NewSelect().Model(&rows).ModelTableExpr(g.Name("sessions") + " AS s").OrderExpr("s.id").Scan(context.Background()); err != nil {
		t.Fatalf("read %s: %v", g.Name("sessions"), err)
	}
	return rows
}

// CheckpointOf reads the generation's checkpoint straight from the table.
func CheckpointOf(t testing.TB, db *bun.DB, g engine.Tables) uint64 {
	t.Helper()
	var pos uint64
	err := db.NewSelect().Table("projection_checkpoints").Column("position").Where("name = ?", g.Checkpoint()).Scan(context.Background(), &pos)
	if err != nil {
		t.Fatalf("read checkpoint %s: %v", g.Checkpoint(), err)
	}
	return pos
}

// FmtTime prints an instant for failure messages (the Fmt* helpers print rows; the Same*
// helpers compare them by instant, not by wall clock and zone).
func FmtTime(tm time.Time) string { return tm.UTC().Format(time.RFC3339Nano) }

// FmtTimePtr prints an optional instant.
func FmtTimePtr(tm *time.Time) string {
	if tm == nil {
		return "<nil>"
	}
	return FmtTime(*tm)
}

// SameTime compares two instants.
func SameTime(a, b time.Time) bool { return a.UTC().Equal(b.UTC()) }

// SameTimePtr compares two optional instants.
func SameTimePtr(a, b *time.Time) bool {
	if a == nil || b == nil {
		return a == nil && b == nil
	}
	return SameTime(*a, *b)
}

// FmtUser prints a users row.
func FmtUser(u users.UserRow) string {
	return fmt.Sprintf("{id=%s email=%q name=%q slug=%q created=%s updated=%s version=%d admin=%v}",
		u.ID, u.Email, u.Name, u.PersonalOrgSlug, FmtTime(u.CreatedAt), FmtTime(u.UpdatedAt), u.Version, u.Admin)
}

// SameUser compares two users rows.
func SameUser(a, b users.UserRow) bool {
	return a.ID == b.ID && a.Email == b.Email && a.Name == b.Name && a.PersonalOrgSlug == b.PersonalOrgSlug &&
		SameTime(a.CreatedAt, b.CreatedAt) && SameTime(a.UpdatedAt, b.UpdatedAt) && a.Version == b.Version &&
		a.Admin == b.Admin
}

// FmtToken prints an API-token row.
func FmtToken(r users.TokenRow) string {
	return fmt.Sprintf("{id=%s user=%s desc=%q digest=%s created=%s expires=%s}",
		r.ID, r.UserID, r.Description, r.Digest, FmtTime(r.CreatedAt), FmtTimePtr(r.ExpiresAt))
}

// SameToken compares two API-token rows.
func SameToken(a, b users.TokenRow) bool {
	return a.ID == b.ID && a.UserID == b.UserID && a.Description == b.Description && a.Digest == b.Digest &&
		SameTime(a.CreatedAt, b.CreatedAt) && SameTimePtr(a.ExpiresAt, b.ExpiresAt)
}

// FmtSession prints a session row.
func FmtSession(r users.SessionRow) string {
	return fmt.Sprintf("{id=%s user=%s digest=%s created=%s expires=%s}",
		r.ID, r.UserID, r.Digest, FmtTime(r.CreatedAt), FmtTime(r.ExpiresAt))
}

// SameSession compares two session rows.
func SameSession(a, b users.SessionRow) bool {
	return a.ID == b.ID && a.UserID == b.UserID && a.Digest == b.Digest &&
		SameTime(a.CreatedAt, b.CreatedAt) && SameTime(a.ExpiresAt, b.ExpiresAt)
}

// CheckRows compares got with want (both in id order), reporting every difference.
func CheckRows[R any](t testing.TB, what string, got, want []R, same func(a, b R) bool, format func(R) string) {
	t.Helper()
	ok := len(got) == len(want)
	for i := 0; ok && i < len(got); i++ {
		ok = same(got[i], want[i])
	}
	if ok {
		return
	}
	var g, w []string
	for _, r := range got {
		g = append(g, format(r))
	}
	for _, r := range want {
		w = append(w, format(r))
	}
	t.Errorf("%s rows:\n got  %s\n want %s", what, strings.Join(g, "\n      "), strings.Join(w, "\n      "))
}

// RowStrings reads every row of a table as column → text, whatever the column types.
func RowStrings(t testing.TB, db *bun.DB, table string) []map[string]string {
	t.Helper()
	var rows []map[string]any
	if err := db.NewSelect().TableExpr(table).Scan(context.Background(), &rows); err != nil {
		t.Fatalf("read %s: %v", table, err)
	}
	out := make([]map[string]string, len(rows))
	for i, r := range rows {
		out[i] = map[string]string{}
		for k, v := range r {
			if b, ok := v.([]byte); ok {
				out[i][k] = string(b)
			} else {
				out[i][k] = fmt.Sprint(v)
			}
		}
	}
	return out
}

// AssertNothingContains fails if any column of any read-model table holds secret.
func AssertNothingContains(t testing.TB, db *bun.DB, g engine.Tables, secret string) {
	t.Helper()
	for _, table := range []string{g.Name("users"), g.Name("api_tokens"), g.Name("sessions"), "projection_checkpoints", "token_usage"} {
		for _, row := range RowStrings(t, db, table) {
			for col, v := range row {
				if strings.Contains(v, secret) || strings.Contains(col, secret) {
					t.Errorf("%s.%s holds the secret: %q", table, col, v)
				}
			}
		}
	}
}
