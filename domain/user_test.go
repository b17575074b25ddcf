package domain

import (
	"errors"
	"reflect"
	"regexp"
	"strings"
	"testing"
	"time"

	"github.com/google/uuid"

	"github.com/identityd/identityd/events"
)

var (
	testUserID = uuid.MustParse("0194f3a2-7c1e-7b3a-9d2e-5f6a7b8c9d0e")
	testToken1 = uuid.MustParse("0194f3a2-0000-7000-8000-000000000001")
	testToken2 = uuid.MustParse("0194f3a2-0000-7000-8000-000000000002")
	testSess1  = uuid.MustParse("0194f3a2-0000-7000-8000-0000000000a1")
	testTime   = time.Date(2025, 3, 14, 15, 9, 26, 0, time.UTC)
	testExpiry = testTime.Add(30 * 24 * time.Hour)
)

var orgSlug = regexp.MustCompile(`^[a-z0-9-]+-[a-z2-7]{12}$`)

// envelopes numbers events as a stream would, starting at first and leaving gaps (other
// aggregates share the stream).
func envelopes(first uint64, evs ...events.Event) []events.Envelope {
	out := make([]events.Envelope, len(evs))
	for i, e := range evs {
		out[i] = events.Envelope{Type: e.EventType(), Data: e, Sequence: first + 3*uint64(i)}
	}
	return out
}

// registeredHistory is the history of a freshly registered user.
func registeredHistory() []events.Event {
	return []events.Event{
		events.UserRegistered{Versioned: events.V(), UserID: testUserID, Email: "ada@example.com",
			Name: "Ada Lovelace", PersonalOrgSlug: "ada-lovelace-abcdefghijkl", RegisteredAt: testTime},
		events.PasswordSet{Versioned: events.V(), UserID: testUserID, PasswordHash: "$argon2id$hash"},
	}
}

func tokenCreated(id uuid.UUID, exp *time.Time) events.TokenCreated {
	return events.TokenCreated{Versioned: events.V(), UserID: testUserID, TokenID: id, Description: "ci",
		Digest: Digest("secret-" + id.String()), CreatedAt: testTime, ExpiresAt: exp}
}

func sessionStarted(id uuid.UUID) events.SessionStarted {
	return events.SessionStarted{Versioned: events.V(), UserID: testUserID, SessionID: id,
		Digest: Digest("session-" + id.String()), StartedAt: testTime, ExpiresAt: testTime.Add(time.Hour)}
}

func userWith(extra ...events.Event) *User {
	return loadUser(testUserID, envelopes(1, append(registeredHistory(), extra...)...))
}

// wantEvents compares raised events; nil and empty both mean "none".
func wantEvents(t *testing.T, got, want []events.Event) {
	t.Helper()
	if len(got) == 0 && len(want) == 0 {
		return
	}
	if !reflect.DeepEqual(got, want) {
		t.Errorf("events:\n got  %#v\n want %#v", got, want)
	}
}

func TestNewUser(t *testing.T) {
	t.Parallel()
	at := time.Date(2025, 3, 14, 16, 9, 26, 0, time.FixedZone("CET", 3600))
	okReg := registration{id: testUserID, email: "  Ada@Example.COM ", name: "  Ada Lovelace\t", passwordHash: "$argon2id$h", at: at}
	mod := func(f func(*registration)) registration { r := okReg; f(&r); return r }
	tests := []struct {
		name     string
		reg      registration
		wantCode string // ValidationError code, or "error" for a plain error
		slugHead string
	}{
		{name: "valid", reg: okReg, slugHead: "ada-lovelace-"},
		{name: "name without ASCII letters", reg: mod(func(r *registration) { r.name = "日本語" }), slugHead: "user-"},
		{name: "long name", reg: mod(func(r *registration) { r.name = strings.Repeat("Lovelace ", 11) }), slugHead: "lovelace-lovelace-lovelace-lov-"},
		{name: "bad email", reg: mod(func(r *registration) { r.email = "Ada <ada@example.com>" }), wantCode: "invalid_email"},
		{name: "empty name", reg: mod(func(r *registration) { r.name = "  " }), wantCode: "invalid_name"},
		{name: "control in name", reg: mod(func(r *registration) { r.name = "Ada\x07" }), wantCode: "invalid_name"},
		{name: "nil id", reg: mod(func(r *registration) { r.id = uuid.Nil }), wantCode: "error"},
		{name: "no password hash", reg: mod(func(r *registration) { r.passwordHash = "" }), wantCode: "error"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			u, err := newUser(tc.reg)
			switch tc.wantCode {
			case "":
			case "error":
				var ve *ValidationError
				if err == nil || errors.As(err, &ve) || u != nil {
					t.Fatalf("newUser = %v, %v; want a plain error and no user", u, err)
				}
				return
			default:
				if u != nil {
					t.Errorf("newUser returned a user with error %v", err)
				}
				var ve *ValidationError
				if !errors.As(err, &ve) || ve.Code != tc.wantCode {
					t.Fatalf("newUser error = %v, want ValidationError %s", err, tc.wantCode)
				}
				return
			}
			if err != nil {
				t.Fatalf("newUser: %v", err)
			}
			if len(u.changes) != 2 {
				t.Fatalf("newUser raised %d events, want [UserRegistered, PasswordSet]: %#v", len(u.changes), u.changes)
			}
			reg, ok := u.changes[0].(events.UserRegistered)
			if !ok {
				t.Fatalf("first event is %T, want UserRegistered", u.changes[0])
			}
			if !orgSlug.MatchString(reg.PersonalOrgSlug) || !strings.HasPrefix(reg.PersonalOrgSlug, tc.slugHead) {
				t.Errorf("PersonalOrgSlug = %q, want %s<12 base32 chars> matching %s", reg.PersonalOrgSlug, tc.slugHead, orgSlug)
			}
			name, _ := normalizeName(tc.reg.name)
			want := []events.Event{
				events.UserRegistered{Versioned: events.V(), UserID: testUserID, Email: "ada@example.com",
					Name: name, PersonalOrgSlug: reg.PersonalOrgSlug, RegisteredAt: at.UTC()},
				events.PasswordSet{Versioned: events.V(), UserID: testUserID, PasswordHash: tc.reg.passwordHash},
			}
			wantEvents(t, u.changes, want)
			if reg.RegisteredAt.Location() != time.UTC {
				t.Errorf("RegisteredAt in %v, want UTC", reg.RegisteredAt.Location())
			}
			if u.version != 0 || !u.active() || u.pwHash != tc.reg.passwordHash {
				t.Errorf("state after newUser: version %d active %v pwHash %q", u.version, u.active(), u.pwHash)
			}
			if v := u.View(); v != (UserView{ID: testUserID, Email: "ada@example.com", Name: name, PersonalOrgSlug: reg.PersonalOrgSlug}) {
				t.Errorf("View() = %+v", v)
			}
		})
	}
}

func TestPersonalOrgSlugDependsOnID(t *testing.T) {
	t.Parallel()
	a := personalOrgSlug("Ada", testUserID)
	if a != personalOrgSlug("Ada", testUserID) {
		t.Error("personalOrgSlug is not deterministic")
	}
	if !strings.HasPrefix(a, "ada-") || !orgSlug.MatchString(a) {
		t.Errorf("slug %q, want ada-<12 base32 chars>", a)
	}
	// Ids that differ in any of their first 7 bytes give different suffixes.
	for i := range 7 {
		id := testUserID
		id[i] ^= 0x01
		if personalOrgSlug("Ada", id) == a {
			t.Errorf("ids differing in byte %d share the slug %q", i, a)
		}
	}
	seen := map[string]bool{a: true}
	for range 100 {
		s := personalOrgSlug("Ada", uuid.New()) // random (v4) ids
		if !orgSlug.MatchString(s) {
			t.Fatalf("slug %q does not match %s", s, orgSlug)
		}
		if seen[s] {
			t.Fatalf("slug %q repeated for different ids", s)
		}
		seen[s] = true
	}
}

func TestPersonalOrgSlugOfTimeOrderedIDs(t *testing.T) {
	t.Parallel()
	seen := map[string]bool{}
	for range 1000 {
		s := personalOrgSlug("Ada", uuid.Must(uuid.NewV7()))
		if seen[s] {
			t.Fatalf("slug %q repeated for different v7 ids", s)
		}
		seen[s] = true
	}
}

func TestUserCommands(t *testing.T) {
	t.Parallel()
	exp := testExpiry
	expCET := testExpiry.In(time.FixedZone("CET", 3600))
	past := testTime.Add(-time.Second)
	tooFar := testTime.Add(MaxTokenLifetime + time.Hour)
	tests := []struct {
		name     string
		given    []events.Event // after registration
		when     func(u *User) error
		want     []events.Event
		wantErr  error  // checked with errors.Is
		wantCode string // ValidationError code
	}{
		{
			name: "rename to the same name",
			when: func(u *User) error { return u.rename("Ada Lovelace") },
		},
		{
			name: "rename to the same name after trimming",
			when: func(u *User) error { return u.rename("  Ada Lovelace\n") },
		},
		{
			name: "rename",
			when: func(u *User) error { return u.rename("  Countess of Lovelace ") },
			want: []events.Event{events.Renamed(testUserID, "Ada Lovelace", "Countess of Lovelace")},
		},
		{
			name:  "rename after an earlier rename",
			given: []events.Event{events.Renamed(testUserID, "Ada Lovelace", "Ada")},
			when:  func(u *User) error { return u.rename("Ada Lovelace") },
			want:  []events.Event{events.Renamed(testUserID, "Ada", "Ada Lovelace")},
		},
		{
			name: "rename only changing case",
			when: func(u *User) error { return u.rename("ada lovelace") },
			want: []events.Event{events.Renamed(testUserID, "Ada Lovelace", "ada lovelace")},
		},
		{name: "rename to empty", when: func(u *User) error { return u.rename(" ") }, wantCode: "invalid_name"},
		{name: "rename with control char", when: func(u *User) error { return u.rename("Ada\tL") }, wantCode: "invalid_name"},
		{name: "rename to 101 runes", when: func(u *User) error { return u.rename(strings.Repeat("x", 101)) }, wantCode: "invalid_name"},
		{name: "rename to invalid UTF-8", when: func(u *User) error { return u.rename("Ada\xff") }, wantCode: "invalid_name"},
		{
			name: "set password",
			when: func(u *User) error { u.setPassword("$argon2id$new"); return nil },
			want: []events.Event{events.PasswordSet{Versioned: events.V(), UserID: testUserID, PasswordHash: "$argon2id$new"}},
		},
		{
			name: "create token without expiry",
			when: func(u *User) error { return u.createToken(testToken1, "ci", "digest", testTime, nil) },
			want: []events.Event{events.TokenCreated{Versioned: events.V(), UserID: testUserID, TokenID: testToken1,
				Description: "ci", Digest: "digest", CreatedAt: testTime}},
		},
		{
			name: "create token with expiry in another zone",
			when: func(u *User) error {
				return u.createToken(testToken1, "", "digest", testTime.In(expCET.Location()), &expCET)
			},
			want: []events.Event{events.TokenCreated{Versioned: events.V(), UserID: testUserID, TokenID: testToken1,
				Digest: "digest", CreatedAt: testTime, ExpiresAt: &exp}},
		},
		{
			name: "create token with a long description",
			when: func(u *User) error {
				return u.createToken(testToken1, strings.Repeat("d", 201), "digest", testTime, nil)
			},
			wantCode: "invalid_description",
		},
		{
			name:     "create token with a control char in description",
			when:     func(u *User) error { return u.createToken(testToken1, "ci\n", "digest", testTime, nil) },
			wantCode: "invalid_description",
		},
		{
			name:     "create token expiring in the past",
			when:     func(u *User) error { return u.createToken(testToken1, "ci", "digest", testTime, &past) },
			wantCode: "invalid_expires_at",
		},
		{
			name:     "create token expiring now",
			when:     func(u *User) error { t := testTime; return u.createToken(testToken1, "ci", "digest", testTime, &t) },
			wantCode: "invalid_expires_at",
		},
		{
			name:     "create token expiring too late",
			when:     func(u *User) error { return u.createToken(testToken1, "ci", "digest", testTime, &tooFar) },
			wantCode: "invalid_expires_at",
		},
		{
			name:    "revoke unknown token",
			given:   []events.Event{tokenCreated(testToken1, nil)},
			when:    func(u *User) error { return u.revokeToken(testToken2) },
			wantErr: ErrTokenNotFound,
		},
		{
			name:  "revoke token",
			given: []events.Event{tokenCreated(testToken1, nil), tokenCreated(testToken2, nil)},
			when:  func(u *User) error { return u.revokeToken(testToken2) },
			want:  []events.Event{events.TokenRevoked{Versioned: events.V(), UserID: testUserID, TokenID: testToken2}},
		},
		{
			name: "revoke revoked token",
			given: []events.Event{tokenCreated(testToken1, nil),
				events.TokenRevoked{Versioned: events.V(), UserID: testUserID, TokenID: testToken1}},
			when: func(u *User) error { return u.revokeToken(testToken1) },
		},
		{
			name: "start session",
			when: func(u *User) error {
				u.startSession(testSess1, "sd", testTime.In(expCET.Location()), 2*time.Hour)
				return nil
			},
			want: []events.Event{events.SessionStarted{Versioned: events.V(), UserID: testUserID, SessionID: testSess1,
				Digest: "sd", StartedAt: testTime, ExpiresAt: testTime.Add(2 * time.Hour)}},
		},
		{
			name:    "end unknown session",
			when:    func(u *User) error { return u.endSession(testSess1) },
			wantErr: ErrSessionNotFound,
		},
		{
			name:    "end session whose id is a token id",
			given:   []events.Event{tokenCreated(testToken1, nil)},
			when:    func(u *User) error { return u.endSession(testToken1) },
			wantErr: ErrSessionNotFound,
		},
		{
			name:  "end session",
			given: []events.Event{sessionStarted(testSess1)},
			when:  func(u *User) error { return u.endSession(testSess1) },
			want:  []events.Event{events.SessionEnded{Versioned: events.V(), UserID: testUserID, SessionID: testSess1}},
		},
		{
			name: "end ended session",
			given: []events.Event{sessionStarted(testSess1),
				events.SessionEnded{Versioned: events.V(), UserID: testUserID, SessionID: testSess1}},
			when: func(u *User) error { return u.endSession(testSess1) },
		},
		{
			name:  "remove",
			given: []events.Event{tokenCreated(testToken1, nil), sessionStarted(testSess1)},
			when:  func(u *User) error { u.remove(); return nil },
			want:  []events.Event{events.UserDeleted{Versioned: events.V(), UserID: testUserID}},
		},
		{
			name: "revoke a token of a deleted user",
			given: []events.Event{tokenCreated(testToken1, nil),
				events.UserDeleted{Versioned: events.V(), UserID: testUserID}},
			when:    func(u *User) error { return u.revokeToken(testToken1) },
			wantErr: ErrTokenNotFound,
		},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			u := userWith(tc.given...)
			before := u.version
			err := tc.when(u)
			switch {
			case tc.wantCode != "":
				var ve *ValidationError
				if !errors.As(err, &ve) || ve.Code != tc.wantCode {
					t.Fatalf("error = %v, want ValidationError %s", err, tc.wantCode)
				}
			case tc.wantErr != nil:
				if !errors.Is(err, tc.wantErr) {
					t.Fatalf("error = %v, want %v", err, tc.wantErr)
				}
			case err != nil:
				t.Fatalf("unexpected error: %v", err)
			}
			wantEvents(t, u.changes, tc.want)
			if u.version != before {
				t.Errorf("a command changed version from %d to %d; only stored events do", before, u.version)
			}
			// Raised events are applied: replaying history plus the changes gives the same state.
			replayed := userWith(append(append([]events.Event(nil), tc.given...), u.changes...)...)
			replayed.version, replayed.changes = u.version, u.changes
			if !reflect.DeepEqual(u, replayed) {
				t.Errorf("state after the command differs from replaying its events:\n got  %+v\n want %+v", u, replayed)
			}
		})
	}
}

func TestUserCommandsTwice(t *testing.T) {
	t.Parallel()
	tests := []struct {
		name    string
		given   []events.Event
		cmd     func(u *User) error
		wantTyp events.Type
	}{
		{"revoke token", []events.Event{tokenCreated(testToken1, nil)},
			func(u *User) error { return u.revokeToken(testToken1) }, events.TypeTokenRevoked},
		{"end session", []events.Event{sessionStarted(testSess1)},
			func(u *User) error { return u.endSession(testSess1) }, events.TypeSessionEnded},
		{"rename", nil, func(u *User) error { return u.rename("Grace") }, events.TypeUserRenamed},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			u := userWith(tc.given...)
			for i := range 2 {
				if err := tc.cmd(u); err != nil {
					t.Fatalf("call %d: %v", i+1, err)
				}
			}
			if len(u.changes) != 1 || u.changes[0].EventType() != tc.wantTyp {
				t.Errorf("two calls raised %#v, want one %s", u.changes, tc.wantTyp)
			}
		})
	}
}

func TestUserRemoveClearsState(t *testing.T) {
	t.Parallel()
	u := userWith(tokenCreated(testToken1, nil), sessionStarted(testSess1))
	if len(u.tokens) != 1 || len(u.sessions) != 1 || !u.active() {
		t.Fatalf("setup: tokens %d sessions %d active %v", len(u.tokens), len(u.sessions), u.active())
	}
	u.remove()
	if len(u.tokens) != 0 || len(u.sessions) != 0 {
		t.Errorf("after remove: %d tokens, %d sessions; want none", len(u.tokens), len(u.sessions))
	}
	if u.active() || !u.exists || !u.deleted {
		t.Errorf("after remove: active %v exists %v deleted %v; want a deleted, inactive user", u.active(), u.exists, u.deleted)
	}
	if err := u.endSession(testSess1); !errors.Is(err, ErrSessionNotFound) {
		t.Errorf("endSession after remove: %v, want ErrSessionNotFound", err)
	}
}

func TestLoadUser(t *testing.T) {
	t.Parallel()
	exp := testExpiry
	tests := []struct {
		name        string
		history     []events.Envelope
		wantVersion uint64
		wantExists  bool
		wantActive  bool
		wantName    string
		wantTokens  map[uuid.UUID]bool // id -> revoked
		wantSess    map[uuid.UUID]bool // id -> ended
	}{
		{name: "no history"},
		{
			name:        "registered",
			history:     envelopes(5, registeredHistory()...),
			wantVersion: 8, wantExists: true, wantActive: true, wantName: "Ada Lovelace",
		},
		{
			name: "a full life",
			history: envelopes(10, append(registeredHistory(),
				events.Renamed(testUserID, "Ada Lovelace", "Ada"),
				tokenCreated(testToken1, &exp),
				tokenCreated(testToken2, nil),
				events.TokenRevoked{Versioned: events.V(), UserID: testUserID, TokenID: testToken1},
				events.TokenRevoked{Versioned: events.V(), UserID: testUserID, TokenID: uuid.New()}, // unknown: ignored
				sessionStarted(testSess1),
				events.SessionEnded{Versioned: events.V(), UserID: testUserID, SessionID: testSess1},
				events.SessionEnded{Versioned: events.V(), UserID: testUserID, SessionID: uuid.New()}, // unknown: ignored
			)...),
			wantVersion: 10 + 3*9, wantExists: true, wantActive: true, wantName: "Ada",
			wantTokens: map[uuid.UUID]bool{testToken1: true, testToken2: false},
			wantSess:   map[uuid.UUID]bool{testSess1: true},
		},
		{
			name: "deleted",
			history: envelopes(1, append(registeredHistory(), tokenCreated(testToken1, nil), sessionStarted(testSess1),
				events.UserDeleted{Versioned: events.V(), UserID: testUserID})...),
			wantVersion: 13, wantExists: true, wantName: "Ada Lovelace",
		},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			u := loadUser(testUserID, tc.history)
			if u.id != testUserID || u.version != tc.wantVersion || u.exists != tc.wantExists ||
				u.active() != tc.wantActive || u.name != tc.wantName {
				t.Errorf("loadUser: id %s version %d exists %v active %v name %q; want %s %d %v %v %q",
					u.id, u.version, u.exists, u.active(), u.name, testUserID, tc.wantVersion, tc.wantExists, tc.wantActive, tc.wantName)
			}
			if len(u.changes) != 0 {
				t.Errorf("loadUser left %d pending changes", len(u.changes))
			}
			if len(u.tokens) != len(tc.wantTokens) {
				t.Errorf("%d tokens, want %d", len(u.tokens), len(tc.wantTokens))
			}
			for id, revoked := range tc.wantTokens {
				if tok, ok := u.tokens[id]; !ok || tok.revoked != revoked {
					t.Errorf("token %s: %+v, want revoked=%v", id, tok, revoked)
				}
			}
			if len(u.sessions) != len(tc.wantSess) {
				t.Errorf("%d sessions, want %d", len(u.sessions), len(tc.wantSess))
			}
			for id, ended := range tc.wantSess {
				if s, ok := u.sessions[id]; !ok || s.ended != ended {
					t.Errorf("session %s: %+v, want ended=%v", id, s, ended)
				}
			}
		})
	}
}

func TestLoadUserViews(t *testing.T) {
	t.Parallel()
	exp := testExpiry
	u := userWith(tokenCreated(testToken1, &exp), sessionStarted(testSess1))
	if got, want := u.tokenView(testToken1), (TokenView{ID: testToken1, Description: "ci", CreatedAt: testTime, ExpiresAt: &exp}); !reflect.DeepEqual(got, want) {
		t.Errorf("tokenView = %+v, want %+v", got, want)
	}
	if got, want := u.sessionView(testSess1), (SessionView{ID: testSess1, CreatedAt: testTime, ExpiresAt: testTime.Add(time.Hour)}); got != want {
		t.Errorf("sessionView = %+v, want %+v", got, want)
	}
	if u.tokens[testToken1].digest != Digest("secret-"+testToken1.String()) || u.sessions[testSess1].digest != Digest("session-"+testSess1.String()) {
		t.Error("digests not kept from the events")
	}
}

// unknownEvent is an event type the User aggregate does not handle.
type unknownEvent struct{ UserID uuid.UUID }

func (unknownEvent) EventType() events.Type        { return "identityd.user.unknown" }
func (e unknownEvent) Aggregate() events.Aggregate { return events.UserAggregate(e.UserID) }

func TestApplyIgnoresUnhandledEvents(t *testing.T) {
	t.Parallel()
	tests := []struct {
		name string
		e    events.Event
	}{
		{"unknown type", unknownEvent{UserID: testUserID}},
		{"email event", events.EmailClaimed{Versioned: events.V(), EmailHash: "h", UserID: testUserID}},
		{"pointer to a known event", &events.UserRenamed{Versioned: events.V(), UserID: testUserID, Name: "Other"}},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			u := userWith(tokenCreated(testToken1, nil), sessionStarted(testSess1))
			want := userWith(tokenCreated(testToken1, nil), sessionStarted(testSess1))
			u.apply(tc.e)
			if !reflect.DeepEqual(u, want) {
				t.Errorf("apply(%T) changed the state:\n got  %+v\n want %+v", tc.e, u, want)
			}
		})
	}
}
