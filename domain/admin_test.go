package domain

import (
	"context"
	"errors"
	"testing"

	"github.com/identityd/identityd/events"
)

// Administrator rights change only through their events, and a command that changes nothing
// emits nothing.
func TestUserAdminCommands(t *testing.T) {
	t.Parallel()
	granted := events.AdminGranted{Versioned: events.V(), UserID: testUserID}
	revoked := events.AdminRevoked{Versioned: events.V(), UserID: testUserID}
	tests := []struct {
		name      string
		history   []events.Event
		cmd       func(*User)
		want      []events.Event
		wantAdmin bool
	}{
		{"grant to a user", nil, (*User).grantAdmin, []events.Event{granted}, true},
		{"grant to an admin", []events.Event{granted}, (*User).grantAdmin, nil, true},
		{"revoke from an admin", []events.Event{granted}, (*User).revokeAdmin, []events.Event{revoked}, false},
		{"revoke from a user", nil, (*User).revokeAdmin, nil, false},
		{"revoke after a revoke", []events.Event{granted, revoked}, (*User).revokeAdmin, nil, false},
		{"grant after a revoke", []events.Event{granted, revoked}, (*User).grantAdmin, []events.Event{granted}, true},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			u := userWith(tc.history...)
			tc.cmd(u)
			wantEvents(t, u.changes, tc.want)
			if u.View().Admin != tc.wantAdmin {
				t.Errorf("admin = %v, want %v", u.View().Admin, tc.wantAdmin)
			}
		})
	}
	// Deleting the account ends the rights: nothing of them survives in the aggregate.
	u := userWith(granted, events.UserDeleted{Versioned: events.V(), UserID: testUserID})
	if u.admin || ReplayUser(testUserID, envelopes(1, append(registeredHistory(), granted)...), testTime.AddDate(1, 0, 0)).Admin != true {
		t.Error("admin rights must end with the account and show in a snapshot before that")
	}
}

func TestServiceAdminRights(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	st := newMemStore()
	s := newTestService(t, st)
	root := signUp(t, s, ada)
	bob := signUp(t, s, SignUp{Email: "bob@example.com", Name: "Bob", Password: "correct horse"})

	res, err := s.GrantAdmin(ctx, testMeta, root.User.ID)
	if err != nil || res.Seq == 0 || st.count(events.TypeAdminGranted) != 1 {
		t.Fatalf("GrantAdmin = %+v, %v; %d grants stored", res, err, st.count(events.TypeAdminGranted))
	}
	again, err := s.GrantAdmin(ctx, testMeta, root.User.ID)
	if err != nil || again.Seq != res.Seq || st.count(events.TypeAdminGranted) != 1 {
		t.Fatalf("granting again = %+v, %v; want no event and the same version", again, err)
	}
	if v, err := s.User(ctx, root.User.ID); err != nil || !v.Admin {
		t.Fatalf("User = %+v, %v; want an admin", v, err)
	}
	if _, err := s.RevokeAdmin(ctx, testMeta, root.User.ID, root.User.ID); !errors.Is(err, ErrSelfRevocation) {
		t.Fatalf("self-revocation: %v, want ErrSelfRevocation", err)
	}
	if _, err := s.GrantAdmin(ctx, testMeta, bob.User.ID); err != nil {
		t.Fatal(err)
	}
	if _, err := s.RevokeAdmin(ctx, testMeta, bob.User.ID, root.User.ID); err != nil {
		t.Fatalf("an admin revoking another: %v", err)
	}
	if v, _ := s.User(ctx, root.User.ID); v.Admin || st.count(events.TypeAdminRevoked) != 1 {
		t.Fatalf("after revocation: %+v, %d revocations", v, st.count(events.TypeAdminRevoked))
	}
	before := len(st.snapshot())
	if _, err := s.RevokeAdmin(ctx, testMeta, bob.User.ID, root.User.ID); err != nil || len(st.snapshot()) != before {
		t.Fatalf("revoking again: %v, %d events", err, len(st.snapshot())-before)
	}

	// By e-mail: the account holding the address now, never a deleted one.
	if id, err := s.UserIDByEmail(ctx, " BOB@example.com "); err != nil || id != bob.User.ID {
		t.Fatalf("UserIDByEmail = %s, %v; want %s", id, err, bob.User.ID)
	}
	if _, err := s.DeleteUser(ctx, testMeta, bob.User.ID); err != nil {
		t.Fatal(err)
	}
	if _, err := s.UserIDByEmail(ctx, "bob@example.com"); !errors.Is(err, ErrUserNotFound) {
		t.Fatalf("UserIDByEmail of a released address: %v, want ErrUserNotFound", err)
	}
	if _, err := s.GrantAdmin(ctx, testMeta, bob.User.ID); !errors.Is(err, ErrUserNotFound) {
		t.Fatalf("granting a deleted user: %v, want ErrUserNotFound", err)
	}
	mallory := signUp(t, s, SignUp{Email: "bob@example.com", Name: "Mallory", Password: "correct horse"})
	if v, err := s.User(ctx, mallory.User.ID); err != nil || v.Admin || mallory.User.ID == bob.User.ID {
		t.Fatalf("re-registered address: %+v, %v; want a new user without rights", v, err)
	}
}
