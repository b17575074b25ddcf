package domain

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"sync"
	"testing"
	"time"

	"github.com/google/uuid"

	"github.com/identityd/identityd/events"
)

var testMeta = events.Metadata{Actor: "system", RequestID: "req-1"}

func testConfig() ServiceConfig {
	return ServiceConfig{Password: fastPW, IdempotencySecret: bytes.Repeat([]byte{7}, 32)}
}

func newTestService(t *testing.T, store EventStore, mod ...func(*ServiceConfig)) *Service {
	t.Helper()
	cfg := testConfig()
	for _, f := range mod {
		f(&cfg)
	}
	s, err := NewService(store, cfg)
	if err != nil {
		t.Fatalf("NewService: %v", err)
	}
	return s
}

func signUp(t *testing.T, s *Service, in SignUp) SignedUp {
	t.Helper()
	out, err := s.SignUp(context.Background(), testMeta, in)
	if err != nil {
		t.Fatalf("SignUp(%s): %v", in.Email, err)
	}
	return out
}

var ada = SignUp{Email: "Ada@Example.com", Name: "Ada Lovelace", Password: "correct horse"}

func TestMemStore(t *testing.T) {
	t.Parallel()
	u1, u2 := events.UserAggregate(testUserID), events.UserAggregate(testToken1)
	ev := func(id uuid.UUID) events.Change {
		return events.Change{ID: uuid.New(), Event: events.UserDeleted{Versioned: events.V(), UserID: id}}
	}
	st := newMemStore()
	ctx := context.Background()
	seq, err := st.Append(ctx, testMeta, []events.Expectation{{Aggregate: u1}, {Aggregate: u2}}, []events.Change{ev(testUserID), ev(testToken1), ev(testUserID)})
	if err != nil || seq != 3 {
		t.Fatalf("first append = %d, %v; want 3", seq, err)
	}
	tests := []struct {
		name    string
		expect  []events.Expectation
		changes []events.Change
		wantErr error
		wantSeq uint64
	}{
		{"stale version", []events.Expectation{{Aggregate: u1, Version: 1}}, []events.Change{ev(testUserID)}, events.ErrVersionConflict, 0},
		{"one of two stale: all or none", []events.Expectation{{Aggregate: u1, Version: 3}, {Aggregate: u2, Version: 0}}, []events.Change{ev(testUserID), ev(testToken1)}, events.ErrVersionConflict, 0},
		{"new aggregate must be 0", []events.Expectation{{Aggregate: events.UserAggregate(testToken2), Version: 3}}, []events.Change{ev(testToken2)}, events.ErrVersionConflict, 0},
		{"current versions", []events.Expectation{{Aggregate: u1, Version: 3}, {Aggregate: u2, Version: 2}}, []events.Change{ev(testToken1), ev(testUserID)}, nil, 5},
	}
	for _, tc := range tests { // sequential: each row sees the store the previous left
		seq, err := st.Append(ctx, testMeta, tc.expect, tc.changes)
		if !errors.Is(err, tc.wantErr) || seq != tc.wantSeq {
			t.Errorf("%s: Append = %d, %v; want %d, %v", tc.name, seq, err, tc.wantSeq, tc.wantErr)
		}
	}
	h, _ := st.Load(ctx, u1, 0)
	if len(h) != 3 || h[0].Sequence != 1 || h[1].Sequence != 3 || h[2].Sequence != 5 || st.version(u2) != 4 {
		t.Errorf("u1 history %+v, u2 version %d", h, st.version(u2))
	}
	loads := []struct {
		after uint64
		want  []uint64
	}{{0, []uint64{1, 3, 5}}, {1, []uint64{3, 5}}, {2, []uint64{3, 5}}, {3, []uint64{5}}, {5, nil}, {99, nil}}
	for _, l := range loads {
		h, err := st.Load(ctx, u1, l.after)
		var got []uint64
		for _, e := range h {
			got = append(got, e.Sequence)
		}
		if err != nil || fmt.Sprint(got) != fmt.Sprint(l.want) {
			t.Errorf("Load(after %d) = %v, %v; want %v", l.after, got, err, l.want)
		}
	}
	if n := len(st.snapshot()); n != 5 {
		t.Errorf("store holds %d events after failed appends, want 5", n)
	}
}

func TestNewServiceValidatesConfig(t *testing.T) {
	t.Parallel()
	tests := []struct {
		name string
		mod  func(*ServiceConfig)
		ok   bool
	}{
		{"test config", func(*ServiceConfig) {}, true},
		{"no secret", func(c *ServiceConfig) { c.IdempotencySecret = nil }, false},
		{"31-byte secret", func(c *ServiceConfig) { c.IdempotencySecret = make([]byte, 31) }, false},
		{"too little memory", func(c *ServiceConfig) { c.Password.MemoryKiB = 7 }, false},
		{"zero passes", func(c *ServiceConfig) { c.Password.Time = 0 }, false},
		{"zero threads", func(c *ServiceConfig) { c.Password.Threads = 0 }, false},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			cfg := testConfig()
			tc.mod(&cfg)
			s, err := NewService(newMemStore(), cfg)
			if tc.ok != (err == nil) || tc.ok != (s != nil) {
				t.Errorf("NewService = %v, %v; want ok=%v", s, err, tc.ok)
			}
		})
	}
}

func TestSignUpAndLogIn(t *testing.T) {
	t.Parallel()
	st := newMemStore()
	s := newTestService(t, st)
	ctx := context.Background()
	up := signUp(t, s, ada)

	if up.User.Email != "ada@example.com" || up.User.Name != "Ada Lovelace" || up.User.ID == uuid.Nil ||
		!orgSlug.MatchString(up.User.PersonalOrgSlug) {
		t.Errorf("SignUp user = %+v", up.User)
	}
	kind, digest, err := ParseToken(up.Token)
	if err != nil || kind != SessionToken {
		t.Fatalf("session token %q: kind %v, %v", up.Token, kind, err)
	}
	all := st.snapshot()
	wantTypes := []events.Type{events.TypeEmailClaimed, events.TypeUserRegistered, events.TypePasswordSet, events.TypeSessionStarted}
	if len(all) != len(wantTypes) {
		t.Fatalf("SignUp stored %d events, want %v", len(all), wantTypes)
	}
	for i, e := range all {
		if e.Type != wantTypes[i] || e.Sequence != uint64(i+1) || e.Metadata != testMeta {
			t.Errorf("event %d: %s seq %d meta %+v; want %s seq %d", i, e.Type, e.Sequence, e.Metadata, wantTypes[i], i+1)
		}
	}
	if up.Seq != 4 {
		t.Errorf("SignUp Seq = %d, want 4 (the last stored event)", up.Seq)
	}
	if ss, _ := all[3].Data.(events.SessionStarted); ss.Digest != digest || ss.SessionID != up.Session.ID {
		t.Errorf("stored session %+v does not match the returned token/session %s", ss, up.Session.ID)
	}
	if ps, _ := all[2].Data.(events.PasswordSet); ps.PasswordHash == "" || bytes.Contains([]byte(ps.PasswordHash), []byte(ada.Password)) {
		t.Errorf("stored password hash %q", ps.PasswordHash)
	}
	if got := up.Session.ExpiresAt.Sub(up.Session.CreatedAt); got != 30*24*time.Hour {
		t.Errorf("session lifetime %v, want the 30-day default", got)
	}

	tests := []struct {
		name    string
		in      LogIn
		wantErr error
	}{
		{"right password", LogIn{Email: "ada@example.com", Password: "correct horse"}, nil},
		{"email in other case and spaces", LogIn{Email: "  ADA@example.COM ", Password: "correct horse"}, nil},
		{"wrong password", LogIn{Email: "ada@example.com", Password: "correct horsE"}, ErrInvalidCredentials},
		{"empty password", LogIn{Email: "ada@example.com"}, ErrInvalidCredentials},
		{"unknown email", LogIn{Email: "bob@example.com", Password: "correct horse"}, ErrInvalidCredentials},
		{"malformed email", LogIn{Email: "ada", Password: "correct horse"}, ErrInvalidCredentials},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			before := len(st.snapshot())
			out, err := s.LogIn(ctx, testMeta, tc.in)
			if !errors.Is(err, tc.wantErr) {
				t.Fatalf("LogIn error = %v, want %v", err, tc.wantErr)
			}
			if tc.wantErr != nil {
				if out.Token != "" || out.UserID != uuid.Nil {
					t.Errorf("failed LogIn returned %+v", out)
				}
				return
			}
			if out.UserID != up.User.ID || out.Token == up.Token || out.Session.ID == up.Session.ID {
				t.Errorf("LogIn = %+v; want user %s and a new session", out, up.User.ID)
			}
			if k, d, err := ParseToken(out.Token); err != nil || k != SessionToken || s.mustSessionDigest(t, out.UserID, out.Session.ID) != d {
				t.Errorf("LogIn token %q does not match its stored session", out.Token)
			}
			if out.Seq <= 4 || len(st.snapshot()) <= before {
				t.Errorf("LogIn Seq %d: want a newly stored SessionStarted", out.Seq)
			}
		})
	}
}

// mustSessionDigest reads a session's digest from a fresh replay of the user's stream.
func (s *Service) mustSessionDigest(t *testing.T, userID, sessionID uuid.UUID) string {
	t.Helper()
	h, err := s.store.Load(context.Background(), events.UserAggregate(userID), 0)
	if err != nil {
		t.Fatal(err)
	}
	sess, ok := loadUser(userID, h).sessions[sessionID]
	if !ok {
		t.Fatalf("session %s not stored", sessionID)
	}
	return sess.digest
}

func TestSignUpRejects(t *testing.T) {
	t.Parallel()
	tests := []struct {
		name     string
		in       SignUp
		wantErr  error
		wantCode string
	}{
		{"same email", SignUp{Email: "ada@example.com", Name: "Other Ada", Password: "password2"}, ErrEmailTaken, ""},
		{"same email other case", SignUp{Email: " ADA@EXAMPLE.COM", Name: "Other Ada", Password: "password2"}, ErrEmailTaken, ""},
		{"same email with a key", SignUp{Email: "ada@example.com", Name: "Other Ada", Password: "password2", IdempotencyKey: "k"}, ErrEmailTaken, ""},
		{"bad email", SignUp{Email: "Ada <ada@x.io>", Name: "Ada", Password: "password2"}, nil, "invalid_email"},
		{"bad name", SignUp{Email: "new@example.com", Name: "\x00", Password: "password2"}, nil, "invalid_name"},
		{"short password", SignUp{Email: "new@example.com", Name: "New", Password: "1234567"}, nil, "invalid_password"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			st := newMemStore()
			s := newTestService(t, st)
			signUp(t, s, ada)
			before := len(st.snapshot())
			out, err := s.SignUp(context.Background(), testMeta, tc.in)
			if tc.wantCode != "" {
				var ve *ValidationError
				if !errors.As(err, &ve) || ve.Code != tc.wantCode {
					t.Fatalf("SignUp error = %v, want ValidationError %s", err, tc.wantCode)
				}
			} else if !errors.Is(err, tc.wantErr) {
				t.Fatalf("SignUp error = %v, want %v", err, tc.wantErr)
			}
			if out.Token != "" || out.User.ID != uuid.Nil {
				t.Errorf("failed SignUp returned %+v", out)
			}
			if n := len(st.snapshot()); n != before {
				t.Errorf("failed SignUp stored %d events", n-before)
			}
			if _, err := s.LogIn(context.Background(), testMeta, LogIn{Email: ada.Email, Password: ada.Password}); err != nil {
				t.Errorf("first user cannot log in any more: %v", err)
			}
		})
	}
}

func TestSignUpIdempotency(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	keyed := ada
	keyed.IdempotencyKey = "key-1"
	tests := []struct {
		name    string
		retry   SignUp
		wantErr error
	}{
		{"same request", keyed, nil},
		{"same request, name differs only in spaces", func() SignUp { r := keyed; r.Name = " Ada Lovelace "; return r }(), nil},
		{"same request, email in other case", func() SignUp { r := keyed; r.Email = "ADA@example.com"; return r }(), nil},
		{"different name", func() SignUp { r := keyed; r.Name = "Ada King"; return r }(), ErrIdempotencyKeyReused},
		{"different password", func() SignUp { r := keyed; r.Password = "wrong horse"; return r }(), ErrIdempotencyKeyReused},
		{"different key", func() SignUp { r := keyed; r.IdempotencyKey = "key-2"; return r }(), ErrEmailTaken},
		{"no key", func() SignUp { r := keyed; r.IdempotencyKey = ""; return r }(), ErrEmailTaken},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			st := newMemStore()
			s := newTestService(t, st)
			first := signUp(t, s, keyed)
			before := len(st.snapshot())
			// A second instance sharing the secret (and not the cache) must answer the same.
			for i, svc := range []*Service{s, newTestService(t, st)} {
				again, err := svc.SignUp(ctx, testMeta, tc.retry)
				if !errors.Is(err, tc.wantErr) {
					t.Fatalf("instance %d: retry error = %v, want %v", i, err, tc.wantErr)
				}
				if tc.wantErr == nil && (again.User != first.User || again.Session != first.Session ||
					again.Token != first.Token || again.Seq != first.Seq) {
					t.Errorf("instance %d: retry = %+v, want the first answer %+v", i, again, first)
				}
			}
			if n := st.count(events.TypeUserRegistered); n != 1 {
				t.Errorf("store holds %d UserRegistered, want 1", n)
			}
			if n := len(st.snapshot()); n != before {
				t.Errorf("retry stored %d events", n-before)
			}
		})
	}
}

func TestSignUpKeyIsScopedToEmail(t *testing.T) {
	t.Parallel()
	s := newTestService(t, newMemStore())
	a := signUp(t, s, SignUp{Email: "a@example.com", Name: "A", Password: "password1", IdempotencyKey: "k"})
	b := signUp(t, s, SignUp{Email: "b@example.com", Name: "B", Password: "password1", IdempotencyKey: "k"})
	if a.User.ID == b.User.ID || a.Token == b.Token || a.Session.ID == b.Session.ID {
		t.Errorf("one key for two emails gave shared ids or tokens: %+v / %+v", a, b)
	}
	if a.User.ID.Version() != 8 {
		t.Errorf("keyed sign-up user id %s: version %d, want a derived (v8) id", a.User.ID, a.User.ID.Version())
	}
}

func TestLogInIdempotency(t *testing.T) {
	t.Parallel()
	st := newMemStore()
	s := newTestService(t, st)
	up := signUp(t, s, ada)
	ctx := context.Background()
	in := LogIn{Email: ada.Email, Password: ada.Password, IdempotencyKey: "login-1"}
	a, err := s.LogIn(ctx, testMeta, in)
	if err != nil {
		t.Fatal(err)
	}
	b, err := s.LogIn(ctx, testMeta, in)
	if err != nil {
		t.Fatal(err)
	}
	if a.Token != b.Token || a.Session != b.Session || a.UserID != up.User.ID || b.Seq != a.Seq {
		t.Errorf("keyed log-in replay: %+v then %+v", a, b)
	}
	if n := st.count(events.TypeSessionStarted); n != 2 {
		t.Errorf("%d sessions stored, want 2 (sign-up and one log-in)", n)
	}
	in.Password = "wrong password"
	if _, err := s.LogIn(ctx, testMeta, in); !errors.Is(err, ErrInvalidCredentials) {
		t.Errorf("keyed replay with a wrong password: %v, want ErrInvalidCredentials", err)
	}
}

func TestCreateTokenIdempotency(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	exp := time.Now().Add(48 * time.Hour).UTC().Truncate(time.Second)
	expOtherZone := exp.In(time.FixedZone("X", 5*3600))
	later := exp.Add(time.Hour)
	first := CreateToken{Description: "ci", ExpiresAt: &exp, IdempotencyKey: "tok-1"}
	tests := []struct {
		name     string
		retry    CreateToken
		wantErr  error
		wantSame bool // same token id and secret as the first
	}{
		{"same request", first, nil, true},
		{"same expiry in another zone", CreateToken{Description: "ci", ExpiresAt: &expOtherZone, IdempotencyKey: "tok-1"}, nil, true},
		{"different description", CreateToken{Description: "cd", ExpiresAt: &exp, IdempotencyKey: "tok-1"}, ErrIdempotencyKeyReused, false},
		{"different expiry", CreateToken{Description: "ci", ExpiresAt: &later, IdempotencyKey: "tok-1"}, ErrIdempotencyKeyReused, false},
		{"no expiry", CreateToken{Description: "ci", IdempotencyKey: "tok-1"}, ErrIdempotencyKeyReused, false},
		{"different key", CreateToken{Description: "ci", ExpiresAt: &exp, IdempotencyKey: "tok-2"}, nil, false},
		{"no key", CreateToken{Description: "ci", ExpiresAt: &exp}, nil, false},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			st := newMemStore()
			s := newTestService(t, st)
			up := signUp(t, s, ada)
			a, err := s.CreateToken(ctx, testMeta, up.User.ID, first)
			if err != nil {
				t.Fatalf("CreateToken: %v", err)
			}
			kind, digest, err := ParseToken(a.Secret)
			if err != nil || kind != APIToken {
				t.Fatalf("secret %q: kind %v, %v", a.Secret, kind, err)
			}
			if a.Token.Description != "ci" || a.Token.ExpiresAt == nil || !a.Token.ExpiresAt.Equal(exp) || a.Seq != st.version(events.UserAggregate(up.User.ID)) {
				t.Errorf("CreateToken = %+v", a)
			}
			created := st.snapshot()[len(st.snapshot())-1].Data.(events.TokenCreated)
			if created.Digest != digest || created.TokenID != a.Token.ID {
				t.Errorf("stored %+v does not match secret/id", created)
			}
			before := len(st.snapshot())

			b, err := s.CreateToken(ctx, testMeta, up.User.ID, tc.retry)
			if !errors.Is(err, tc.wantErr) {
				t.Fatalf("retry error = %v, want %v", err, tc.wantErr)
			}
			if tc.wantErr != nil {
				if len(st.snapshot()) != before {
					t.Error("a refused retry stored events")
				}
				return
			}
			same := b.Secret == a.Secret && b.Token.ID == a.Token.ID
			if same != tc.wantSame {
				t.Errorf("retry secret/id same as first = %v, want %v (%+v vs %+v)", same, tc.wantSame, b, a)
			}
			if tc.wantSame {
				if b.Token.ID != a.Token.ID || !b.Token.CreatedAt.Equal(a.Token.CreatedAt) || b.Seq != a.Seq || len(st.snapshot()) != before {
					t.Errorf("replay = %+v, want %+v and nothing stored", b, a)
				}
			} else if b.Secret == a.Secret || b.Token.ID == a.Token.ID || len(st.snapshot()) != before+1 {
				t.Errorf("a new token shares secret or id with the first, or was not stored")
			}
			if n := st.count(events.TypeTokenCreated); (n == 1) != tc.wantSame {
				t.Errorf("%d TokenCreated stored", n)
			}
		})
	}
}

func TestServiceUserCommands(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	type env struct {
		s  *Service
		st *memStore
		id uuid.UUID
	}
	tests := []struct {
		name       string
		run        func(e env) (Result, error)
		wantErr    error
		wantCode   string
		wantStored []events.Type // appended by the command
	}{
		{
			name: "rename to the same name",
			run: func(e env) (Result, error) {
				_, r, err := e.s.Rename(ctx, testMeta, e.id, " Ada Lovelace ")
				return r, err
			},
		},
		{
			name: "rename",
			run: func(e env) (Result, error) {
				v, r, err := e.s.Rename(ctx, testMeta, e.id, "Ada King")
				if err == nil && v.Name != "Ada King" {
					err = fmt.Errorf("view name %q", v.Name)
				}
				return r, err
			},
			wantStored: []events.Type{events.TypeUserRenamed},
		},
		{
			name: "rename to an invalid name",
			run: func(e env) (Result, error) {
				_, r, err := e.s.Rename(ctx, testMeta, e.id, "")
				return r, err
			},
			wantCode: "invalid_name",
		},
		{
			name: "rename an unknown user",
			run: func(e env) (Result, error) {
				_, r, err := e.s.Rename(ctx, testMeta, uuid.New(), "X")
				return r, err
			},
			wantErr: ErrUserNotFound,
		},
		{
			name:    "revoke an unknown token",
			run:     func(e env) (Result, error) { return e.s.RevokeToken(ctx, testMeta, e.id, uuid.New()) },
			wantErr: ErrTokenNotFound,
		},
		{
			name: "revoke a token twice",
			run: func(e env) (Result, error) {
				tok, err := e.s.CreateToken(ctx, testMeta, e.id, CreateToken{Description: "x"})
				if err != nil {
					return Result{}, err
				}
				r1, err := e.s.RevokeToken(ctx, testMeta, e.id, tok.Token.ID)
				if err != nil {
					return Result{}, err
				}
				r2, err := e.s.RevokeToken(ctx, testMeta, e.id, tok.Token.ID)
				if err == nil && r2 != r1 {
					err = fmt.Errorf("second revoke Seq %d, first %d", r2.Seq, r1.Seq)
				}
				return r2, err
			},
			wantStored: []events.Type{events.TypeTokenCreated, events.TypeTokenRevoked},
		},
		{
			name:    "end an unknown session",
			run:     func(e env) (Result, error) { return e.s.EndSession(ctx, testMeta, e.id, uuid.New()) },
			wantErr: ErrSessionNotFound,
		},
		{
			name: "end a session twice",
			run: func(e env) (Result, error) {
				h, _ := e.st.Load(ctx, events.UserAggregate(e.id), 0)
				sid := h[len(h)-1].Data.(events.SessionStarted).SessionID
				if _, err := e.s.EndSession(ctx, testMeta, e.id, sid); err != nil {
					return Result{}, err
				}
				return e.s.EndSession(ctx, testMeta, e.id, sid)
			},
			wantStored: []events.Type{events.TypeSessionEnded},
		},
		{
			name: "change password",
			run: func(e env) (Result, error) {
				return e.s.ChangePassword(ctx, testMeta, e.id, ada.Password, "new password")
			},
			wantStored: []events.Type{events.TypePasswordSet},
		},
		{
			name: "change password with a wrong current one",
			run: func(e env) (Result, error) {
				return e.s.ChangePassword(ctx, testMeta, e.id, "not it at all", "new password")
			},
			wantErr: ErrInvalidCredentials,
		},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			st := newMemStore()
			s := newTestService(t, st)
			up := signUp(t, s, ada)
			before := len(st.snapshot())
			res, err := tc.run(env{s: s, st: st, id: up.User.ID})
			switch {
			case tc.wantCode != "":
				var ve *ValidationError
				if !errors.As(err, &ve) || ve.Code != tc.wantCode {
					t.Fatalf("error = %v, want ValidationError %s", err, tc.wantCode)
				}
			case !errors.Is(err, tc.wantErr):
				t.Fatalf("error = %v, want %v", err, tc.wantErr)
			}
			var stored []events.Type
			for _, e := range st.snapshot()[before:] {
				stored = append(stored, e.Type)
			}
			if fmt.Sprint(stored) != fmt.Sprint(tc.wantStored) {
				t.Errorf("stored %v, want %v", stored, tc.wantStored)
			}
			if err == nil && res.Seq != st.version(events.UserAggregate(up.User.ID)) {
				t.Errorf("Result.Seq = %d, want the user's current version %d", res.Seq, st.version(events.UserAggregate(up.User.ID)))
			}
		})
	}
}

func TestChangePasswordThenLogIn(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	s := newTestService(t, newMemStore())
	up := signUp(t, s, ada)
	if _, err := s.ChangePassword(ctx, testMeta, up.User.ID, ada.Password, "short"); !errors.As(err, new(*ValidationError)) {
		t.Errorf("ChangePassword to a short password: %v, want a ValidationError", err)
	}
	if _, err := s.ChangePassword(ctx, testMeta, up.User.ID, ada.Password, "new password"); err != nil {
		t.Fatalf("ChangePassword: %v", err)
	}
	tests := []struct {
		pw      string
		wantErr error
	}{
		{ada.Password, ErrInvalidCredentials},
		{"new password", nil},
	}
	for _, tc := range tests {
		if _, err := s.LogIn(ctx, testMeta, LogIn{Email: ada.Email, Password: tc.pw}); !errors.Is(err, tc.wantErr) {
			t.Errorf("LogIn with %q after the change: %v, want %v", tc.pw, err, tc.wantErr)
		}
	}
}

func TestDeleteUser(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	st := newMemStore()
	s := newTestService(t, st)
	up := signUp(t, s, ada)
	tok, err := s.CreateToken(ctx, testMeta, up.User.ID, CreateToken{Description: "ci"})
	if err != nil {
		t.Fatal(err)
	}
	before := len(st.snapshot())
	res, err := s.DeleteUser(ctx, testMeta, up.User.ID)
	if err != nil {
		t.Fatalf("DeleteUser: %v", err)
	}
	added := st.snapshot()[before:]
	if len(added) != 2 || added[0].Type != events.TypeUserDeleted || added[1].Type != events.TypeEmailReleased || res.Seq != added[1].Sequence {
		t.Fatalf("DeleteUser stored %+v with Seq %d, want UserDeleted + EmailReleased", added, res.Seq)
	}

	tests := []struct {
		name    string
		run     func() error
		wantErr error
	}{
		{"rename", func() error { _, _, err := s.Rename(ctx, testMeta, up.User.ID, "Ghost"); return err }, ErrUserNotFound},
		{"delete again", func() error { _, err := s.DeleteUser(ctx, testMeta, up.User.ID); return err }, ErrUserNotFound},
		{"revoke token", func() error { _, err := s.RevokeToken(ctx, testMeta, up.User.ID, tok.Token.ID); return err }, ErrUserNotFound},
		{"create token", func() error { _, err := s.CreateToken(ctx, testMeta, up.User.ID, CreateToken{}); return err }, ErrUserNotFound},
		{"end session", func() error { _, err := s.EndSession(ctx, testMeta, up.User.ID, up.Session.ID); return err }, ErrUserNotFound},
		{"log in", func() error {
			_, err := s.LogIn(ctx, testMeta, LogIn{Email: ada.Email, Password: ada.Password})
			return err
		}, ErrInvalidCredentials},
	}
	for _, tc := range tests {
		if err := tc.run(); !errors.Is(err, tc.wantErr) {
			t.Errorf("%s after delete: %v, want %v", tc.name, err, tc.wantErr)
		}
	}
	if n := len(st.snapshot()); n != before+2 {
		t.Errorf("commands on a deleted user stored %d events", n-before-2)
	}

	again := signUp(t, s, SignUp{Email: "ada@example.com", Name: "Ada Again", Password: "another password"})
	if again.User.ID == up.User.ID {
		t.Fatal("re-sign-up reused the deleted user's id")
	}
	li, err := s.LogIn(ctx, testMeta, LogIn{Email: ada.Email, Password: "another password"})
	if err != nil || li.UserID != again.User.ID {
		t.Errorf("LogIn after re-sign-up = %+v, %v; want user %s", li, err, again.User.ID)
	}
	if _, _, err := s.Rename(ctx, testMeta, up.User.ID, "Ghost"); !errors.Is(err, ErrUserNotFound) {
		t.Errorf("old user came back: %v", err)
	}
}

func TestSignUpWithKeyAfterDelete(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	s := newTestService(t, newMemStore())
	in := ada
	in.IdempotencyKey = "k"
	up := signUp(t, s, in)
	if _, err := s.DeleteUser(ctx, testMeta, up.User.ID); err != nil {
		t.Fatal(err)
	}
	if _, err := s.SignUp(ctx, testMeta, in); !errors.Is(err, ErrIdempotencyKeyReused) {
		t.Errorf("keyed sign-up after delete: %v, want ErrIdempotencyKeyReused", err)
	}
}

func TestRetryAfterVersionConflict(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	bob := uuid.MustParse("0194f3a2-0000-7000-8000-0000000000b0")
	tests := []struct {
		name  string
		rival func(id uuid.UUID) events.Event // appended by another writer just before our append
		run   func(s *Service, id uuid.UUID) error
		check func(t *testing.T, st *memStore, id uuid.UUID, err error)
	}{
		{
			name: "rename after a rival rename",
			rival: func(id uuid.UUID) events.Event {
				return events.Renamed(id, "Ada Lovelace", "Rival")
			},
			run: func(s *Service, id uuid.UUID) error {
				v, _, err := s.Rename(ctx, testMeta, id, "Ada King")
				if err == nil && v.Name != "Ada King" {
					return fmt.Errorf("view %+v", v)
				}
				return err
			},
			check: func(t *testing.T, st *memStore, id uuid.UUID, err error) {
				if err != nil {
					t.Fatalf("Rename: %v", err)
				}
				h, _ := st.Load(ctx, events.UserAggregate(id), 0)
				last := h[len(h)-1].Data.(events.UserRenamed)
				if last.Changes["name"].Before != "Rival" || last.Name != "Ada King" {
					t.Errorf("last event %+v: the retry must decide on the rival's state", last)
				}
			},
		},
		{
			name: "rename to the rival's name",
			rival: func(id uuid.UUID) events.Event {
				return events.Renamed(id, "Ada Lovelace", "Ada King")
			},
			run: func(s *Service, id uuid.UUID) error {
				_, _, err := s.Rename(ctx, testMeta, id, "Ada King")
				return err
			},
			check: func(t *testing.T, st *memStore, id uuid.UUID, err error) {
				if err != nil {
					t.Fatalf("Rename: %v", err)
				}
				if n := st.count(events.TypeUserRenamed); n != 1 {
					t.Errorf("%d UserRenamed stored, want only the rival's", n)
				}
			},
		},
		{
			name: "delete after a rival rename",
			rival: func(id uuid.UUID) events.Event {
				return events.Renamed(id, "Ada Lovelace", "Rival")
			},
			run: func(s *Service, id uuid.UUID) error { _, err := s.DeleteUser(ctx, testMeta, id); return err },
			check: func(t *testing.T, st *memStore, id uuid.UUID, err error) {
				if err != nil {
					t.Fatalf("DeleteUser: %v", err)
				}
				if st.count(events.TypeUserDeleted) != 1 || st.count(events.TypeEmailReleased) != 1 {
					t.Error("DeleteUser did not store UserDeleted + EmailReleased after the retry")
				}
			},
		},
		{
			name: "sign-up after a rival claimed the email",
			rival: func(uuid.UUID) events.Event {
				return events.EmailClaimed{Versioned: events.V(), EmailHash: events.EmailAggregate("grace@example.com").ID, UserID: bob}
			},
			run: func(s *Service, _ uuid.UUID) error {
				_, err := s.SignUp(ctx, testMeta, SignUp{Email: "grace@example.com", Name: "Grace", Password: "password1"})
				return err
			},
			check: func(t *testing.T, st *memStore, _ uuid.UUID, err error) {
				if !errors.Is(err, ErrEmailTaken) {
					t.Fatalf("SignUp after a rival claim: %v, want ErrEmailTaken", err)
				}
				if n := st.count(events.TypeUserRegistered); n != 1 {
					t.Errorf("%d users registered, want only the setup's", n)
				}
			},
		},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			st := newMemStore()
			s := newTestService(t, st)
			up := signUp(t, s, ada) // caches the user at its current version
			callsBefore := st.appendCalls()
			st.mu.Lock()
			st.interfere = func(st *memStore) { st.rival(tc.rival(up.User.ID)) }
			st.mu.Unlock()
			err := tc.run(s, up.User.ID)
			tc.check(t, st, up.User.ID, err)
			st.mu.Lock()
			pending := st.interfere != nil
			st.mu.Unlock()
			if pending || st.appendCalls() < callsBefore+1 {
				t.Fatal("the injected conflict never happened")
			}
		})
	}
}

func TestRevokeRetriesOnConflict(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	st := newMemStore()
	s := newTestService(t, st)
	up := signUp(t, s, ada)
	tok, err := s.CreateToken(ctx, testMeta, up.User.ID, CreateToken{Description: "ci"})
	if err != nil {
		t.Fatal(err)
	}
	st.mu.Lock()
	st.interfere = func(st *memStore) {
		st.rival(events.TokenRevoked{Versioned: events.V(), UserID: up.User.ID, TokenID: tok.Token.ID})
	}
	st.mu.Unlock()
	res, err := s.RevokeToken(ctx, testMeta, up.User.ID, tok.Token.ID)
	if err != nil {
		t.Fatalf("RevokeToken: %v", err)
	}
	if n := st.count(events.TypeTokenRevoked); n != 1 {
		t.Errorf("%d TokenRevoked stored, want only the rival's", n)
	}
	if v := st.version(events.UserAggregate(up.User.ID)); res.Seq != v {
		t.Errorf("Result.Seq = %d, want the rival's event at %d", res.Seq, v)
	}
}

func TestAlwaysConflictingStore(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	const attempts = 3
	tests := []struct {
		name string
		run  func(s *Service, id uuid.UUID) error
	}{
		{"sign-up", func(s *Service, _ uuid.UUID) error {
			_, err := s.SignUp(ctx, testMeta, SignUp{Email: "grace@example.com", Name: "Grace", Password: "password1"})
			return err
		}},
		{"rename", func(s *Service, id uuid.UUID) error { _, _, err := s.Rename(ctx, testMeta, id, "Other"); return err }},
		{"create token", func(s *Service, id uuid.UUID) error {
			_, err := s.CreateToken(ctx, testMeta, id, CreateToken{Description: "x"})
			return err
		}},
		{"log in", func(s *Service, _ uuid.UUID) error {
			_, err := s.LogIn(ctx, testMeta, LogIn{Email: ada.Email, Password: ada.Password})
			return err
		}},
		{"delete", func(s *Service, id uuid.UUID) error { _, err := s.DeleteUser(ctx, testMeta, id); return err }},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			st := newMemStore()
			up := signUp(t, newTestService(t, st), ada)
			s := newTestService(t, conflictStore{st}, func(c *ServiceConfig) { c.MaxAttempts = attempts })
			before := st.appendCalls()
			err := tc.run(s, up.User.ID)
			if !errors.Is(err, ErrConcurrentModification) {
				t.Fatalf("error = %v, want ErrConcurrentModification", err)
			}
			if n := st.appendCalls() - before; n != attempts {
				t.Errorf("%d append attempts, want MaxAttempts = %d", n, attempts)
			}
		})
	}
}

func TestConcurrentSignUpsOneEmail(t *testing.T) {
	t.Parallel()
	st := newMemStore()
	const n = 8
	var wg sync.WaitGroup
	errs := make([]error, n)
	ids := make([]uuid.UUID, n)
	for i := range n {
		s := newTestService(t, st) // separate instances: only the store's expectations protect the email
		wg.Add(1)
		go func() {
			defer wg.Done()
			out, err := s.SignUp(context.Background(), testMeta,
				SignUp{Email: "race@example.com", Name: fmt.Sprintf("Racer %d", i), Password: "password1"})
			errs[i], ids[i] = err, out.User.ID
		}()
	}
	wg.Wait()
	winners := 0
	for i, err := range errs {
		switch {
		case err == nil:
			winners++
		case !errors.Is(err, ErrEmailTaken):
			t.Errorf("sign-up %d: %v, want nil or ErrEmailTaken", i, err)
		}
	}
	if winners != 1 || st.count(events.TypeUserRegistered) != 1 || st.count(events.TypeEmailClaimed) != 1 {
		t.Errorf("%d winners, %d users, %d claims; want exactly one of each", winners,
			st.count(events.TypeUserRegistered), st.count(events.TypeEmailClaimed))
	}
}

func TestConcurrentCommandsOneUser(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	st := newMemStore()
	up := signUp(t, newTestService(t, st), ada)
	const n = 10
	var wg sync.WaitGroup
	errs := make(chan error, 2*n)
	for i := range 2 { // two instances racing through the store, each serializing its own commands
		s := newTestService(t, st)
		for j := range n {
			wg.Add(1)
			go func() {
				defer wg.Done()
				_, err := s.CreateToken(ctx, testMeta, up.User.ID, CreateToken{Description: fmt.Sprintf("t%d-%d", i, j)})
				errs <- err
			}()
		}
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		if err != nil {
			t.Errorf("CreateToken: %v", err)
		}
	}
	h, _ := st.Load(ctx, events.UserAggregate(up.User.ID), 0)
	u := loadUser(up.User.ID, h)
	if len(u.tokens) != 2*n {
		t.Errorf("%d tokens stored, want %d", len(u.tokens), 2*n)
	}
}

func TestCachedUserCatchesUpWithOtherInstances(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	tests := []struct {
		name      string
		other     func(s *Service, id uuid.UUID) error // on a second instance
		run       func(s *Service, id uuid.UUID) error // on the first, which has the user cached
		wantErr   error
		wantTypes []events.Type // appended by run
	}{
		{
			name:  "rename to the name another instance set",
			other: func(s *Service, id uuid.UUID) error { _, _, err := s.Rename(ctx, testMeta, id, "Ada King"); return err },
			run:   func(s *Service, id uuid.UUID) error { _, _, err := s.Rename(ctx, testMeta, id, "Ada King"); return err },
		},
		{
			name:    "rename a user another instance deleted",
			other:   func(s *Service, id uuid.UUID) error { _, err := s.DeleteUser(ctx, testMeta, id); return err },
			run:     func(s *Service, id uuid.UUID) error { _, _, err := s.Rename(ctx, testMeta, id, "Ghost"); return err },
			wantErr: ErrUserNotFound,
		},
		{
			name: "log in with a password another instance changed",
			other: func(s *Service, id uuid.UUID) error {
				_, err := s.ChangePassword(ctx, testMeta, id, ada.Password, "new password")
				return err
			},
			run: func(s *Service, _ uuid.UUID) error {
				_, err := s.LogIn(ctx, testMeta, LogIn{Email: ada.Email, Password: "new password"})
				return err
			},
			wantTypes: []events.Type{events.TypeSessionStarted},
		},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			st := newMemStore()
			a, b := newTestService(t, st), newTestService(t, st)
			up := signUp(t, a, ada) // a caches the user
			if err := tc.other(b, up.User.ID); err != nil {
				t.Fatalf("other instance: %v", err)
			}
			before, calls := len(st.snapshot()), st.appendCalls()
			err := tc.run(a, up.User.ID)
			if !errors.Is(err, tc.wantErr) {
				t.Fatalf("error = %v, want %v", err, tc.wantErr)
			}
			var got []events.Type
			for _, e := range st.snapshot()[before:] {
				got = append(got, e.Type)
			}
			if fmt.Sprint(got) != fmt.Sprint(tc.wantTypes) {
				t.Errorf("appended %v, want %v", got, tc.wantTypes)
			}
			// A command that appends decides on the cached state first and lets the stream's
			// expectation catch staleness: at most one refused append, then the fresh state.
			if n := st.appendCalls() - calls; n < len(tc.wantTypes) || n > len(tc.wantTypes)+1 {
				t.Errorf("%d append calls, want %d (plus at most one refused on stale state)", n, len(tc.wantTypes))
			}
		})
	}
}

func TestCachedUserLoadsOnlyNewEvents(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	st := newMemStore()
	s := newTestService(t, st)
	up := signUp(t, s, ada)
	loads, checks := st.loadCalls(), st.versionChecks.Load()
	_, res, err := s.Rename(ctx, testMeta, up.User.ID, ada.Name)
	if err != nil {
		t.Fatal(err)
	}
	if n, c := st.loadCalls()-loads, st.versionChecks.Load()-checks; n != 0 || c != 1 {
		t.Errorf("a no-op command on a cached user made %d loads and %d version checks, want 0 and 1", n, c)
	}
	if res.Seq != up.Seq {
		t.Errorf("Result.Seq = %d, want the sign-up's %d", res.Seq, up.Seq)
	}
}

// TestKeyedReplayNeverReturnsDeadCredentials: replaying a create or log-in after its token was
// revoked or its session ended is refused, not answered with a credential that cannot work.
func TestKeyedReplayNeverReturnsDeadCredentials(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	s := newTestService(t, newMemStore())
	up := signUp(t, s, ada)
	in := CreateToken{Description: "ci", IdempotencyKey: "tok"}
	tok, err := s.CreateToken(ctx, testMeta, up.User.ID, in)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := s.RevokeToken(ctx, testMeta, up.User.ID, tok.Token.ID); err != nil {
		t.Fatal(err)
	}
	if _, err := s.CreateToken(ctx, testMeta, up.User.ID, in); !errors.Is(err, ErrIdempotencyKeyReused) {
		t.Fatalf("replayed create of a revoked token: %v", err)
	}
	login := LogIn{Email: ada.Email, Password: ada.Password, IdempotencyKey: "login"}
	li, err := s.LogIn(ctx, testMeta, login)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := s.EndSession(ctx, testMeta, up.User.ID, li.Session.ID); err != nil {
		t.Fatal(err)
	}
	if _, err := s.LogIn(ctx, testMeta, login); !errors.Is(err, ErrIdempotencyKeyReused) {
		t.Fatalf("replayed log-in of an ended session: %v", err)
	}
}

// TestKeyedReplayAfterExpiry: replaying a keyed log-in, sign-up or token create once the
// credential it created has expired is refused (ErrIdempotencyKeySpent, an
// ErrIdempotencyKeyReused), never answered with the expired token; a new key works.
func TestKeyedReplayAfterExpiry(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	var mu sync.Mutex
	now := time.Date(2030, 1, 1, 0, 0, 0, 0, time.UTC)
	clock := func() time.Time { mu.Lock(); defer mu.Unlock(); return now }
	advance := func(d time.Duration) { mu.Lock(); defer mu.Unlock(); now = now.Add(d) }
	s := newTestService(t, newMemStore(), func(c *ServiceConfig) { c.SessionTTL = time.Minute; c.Now = clock })

	keyedSignUp := ada
	keyedSignUp.IdempotencyKey = "signup"
	up := signUp(t, s, keyedSignUp)
	login := LogIn{Email: ada.Email, Password: ada.Password, IdempotencyKey: "login"}
	first, err := s.LogIn(ctx, testMeta, login)
	if err != nil {
		t.Fatal(err)
	}
	exp := clock().Add(2 * time.Minute)
	tokIn := CreateToken{Description: "ci", ExpiresAt: &exp, IdempotencyKey: "tok"}
	tok, err := s.CreateToken(ctx, testMeta, up.User.ID, tokIn)
	if err != nil {
		t.Fatal(err)
	}

	// Within the TTL a replay is the first answer.
	advance(59 * time.Second)
	if again, err := s.LogIn(ctx, testMeta, login); err != nil || again.Token != first.Token || again.Session.ID != first.Session.ID {
		t.Fatalf("replay within the TTL: %+v, %v", again, err)
	}
	if again, err := s.SignUp(ctx, testMeta, keyedSignUp); err != nil || again.Token != up.Token {
		t.Fatalf("sign-up replay within the TTL: %v", err)
	}

	advance(time.Second) // both sessions end exactly now (expires_at is not before now)
	if out, err := s.LogIn(ctx, testMeta, login); !errors.Is(err, ErrIdempotencyKeySpent) || !errors.Is(err, ErrIdempotencyKeyReused) {
		t.Fatalf("log-in replay after the session expired: token %q, %v; want ErrIdempotencyKeySpent", out.Token, err)
	}
	if out, err := s.SignUp(ctx, testMeta, keyedSignUp); !errors.Is(err, ErrIdempotencyKeySpent) {
		t.Fatalf("sign-up replay after its session expired: token %q, %v; want ErrIdempotencyKeySpent", out.Token, err)
	}
	// A wrong password still answers as a wrong password, not with what the key did.
	bad := login
	bad.Password = "wrong horse"
	if _, err := s.LogIn(ctx, testMeta, bad); !errors.Is(err, ErrInvalidCredentials) {
		t.Fatalf("wrong password with a spent key: %v", err)
	}
	// A new key starts a fresh, live session.
	fresh, err := s.LogIn(ctx, testMeta, LogIn{Email: ada.Email, Password: ada.Password, IdempotencyKey: "login-2"})
	if err != nil || fresh.Token == first.Token || !fresh.Session.ExpiresAt.After(clock()) {
		t.Fatalf("log-in with a new key: %+v, %v", fresh, err)
	}

	if _, err := s.CreateToken(ctx, testMeta, up.User.ID, tokIn); err != nil {
		t.Fatalf("token replay before its expiry: %v", err)
	}
	advance(time.Minute)
	if out, err := s.CreateToken(ctx, testMeta, up.User.ID, tokIn); !errors.Is(err, ErrIdempotencyKeySpent) {
		t.Fatalf("token replay after it expired: secret %q (first %q), %v; want ErrIdempotencyKeySpent", out.Secret, tok.Secret, err)
	}
}
