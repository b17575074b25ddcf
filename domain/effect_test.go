package domain

import (
	"context"
	"testing"

	"github.com/identityd/identityd/events"
)

// Every command's result states its effect on credentials, from the events it emitted, and a
// command that changed nothing (a no-op, a keyed retry) states the effect of the events it
// exists to emit, so the HTTP API waits as long on a retry as on the first answer. The effects
// are those the HTTP handlers waited for when each chose its wait by hand: sign-up, log-in and
// a new token the read model only; rename and admin granted also the credential cache's
// fence; log-out, token revocation, admin revoked and delete the fence or a 503.
func TestCommandResultsStateTheirEffect(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	s := newTestService(t, newMemStore())
	keyed := ada
	keyed.IdempotencyKey = "k"
	up, err := s.SignUp(ctx, testMeta, keyed)
	if err != nil {
		t.Fatal(err)
	}
	grace, err := s.SignUp(ctx, testMeta, SignUp{Email: "grace@example.com", Name: "Grace", Password: "password1"})
	if err != nil {
		t.Fatal(err)
	}
	id := up.User.ID
	var tokenID = func() CreatedToken {
		tok, err := s.CreateToken(ctx, testMeta, id, CreateToken{Description: "ci", IdempotencyKey: "t"})
		if err != nil {
			t.Fatal(err)
		}
		return tok
	}().Token.ID
	type run func() (Result, error)
	for _, tc := range []struct {
		name string
		run  run
		want events.Effect
	}{
		{"sign-up", func() (Result, error) { return grace.Result, nil }, events.EffectAddsCredential},
		{"sign-up replayed", func() (Result, error) { r, err := s.SignUp(ctx, testMeta, keyed); return r.Result, err }, events.EffectAddsCredential},
		{"log in", func() (Result, error) {
			r, err := s.LogIn(ctx, testMeta, LogIn{Email: ada.Email, Password: ada.Password, IdempotencyKey: "l"})
			return r.Result, err
		}, events.EffectAddsCredential},
		{"log in replayed", func() (Result, error) {
			r, err := s.LogIn(ctx, testMeta, LogIn{Email: ada.Email, Password: ada.Password, IdempotencyKey: "l"})
			return r.Result, err
		}, events.EffectAddsCredential},
		{"create token replayed", func() (Result, error) {
			r, err := s.CreateToken(ctx, testMeta, id, CreateToken{Description: "ci", IdempotencyKey: "t"})
			return r.Result, err
		}, events.EffectAddsCredential},
		{"change password", func() (Result, error) {
			return s.ChangePassword(ctx, testMeta, grace.User.ID, "password1", "password2")
		}, events.EffectNone},
		{"rename", func() (Result, error) { _, r, err := s.Rename(ctx, testMeta, id, "Ada King"); return r, err }, events.EffectProfileOnly},
		{"rename to the same name", func() (Result, error) { _, r, err := s.Rename(ctx, testMeta, id, "Ada King"); return r, err }, events.EffectProfileOnly},
		{"grant admin", func() (Result, error) { return s.GrantAdmin(ctx, testMeta, id) }, events.EffectWidensRights},
		{"grant admin again", func() (Result, error) { return s.GrantAdmin(ctx, testMeta, id) }, events.EffectWidensRights},
		{"revoke admin", func() (Result, error) { return s.RevokeAdmin(ctx, testMeta, grace.User.ID, id) }, events.EffectNarrowsRights},
		{"revoke admin again", func() (Result, error) { return s.RevokeAdmin(ctx, testMeta, grace.User.ID, id) }, events.EffectNarrowsRights},
		{"revoke token", func() (Result, error) { return s.RevokeToken(ctx, testMeta, id, tokenID) }, events.EffectNarrowsRights},
		{"revoke token again", func() (Result, error) { return s.RevokeToken(ctx, testMeta, id, tokenID) }, events.EffectNarrowsRights},
		{"log out", func() (Result, error) { return s.EndSession(ctx, testMeta, id, up.Session.ID) }, events.EffectNarrowsRights},
		{"log out again", func() (Result, error) { return s.EndSession(ctx, testMeta, id, up.Session.ID) }, events.EffectNarrowsRights},
		{"delete", func() (Result, error) { return s.DeleteUser(ctx, testMeta, id) }, events.EffectNarrowsRights},
	} {
		res, err := tc.run()
		if err != nil {
			t.Fatalf("%s: %v", tc.name, err)
		}
		if res.Effect != tc.want {
			t.Errorf("%s: effect %v, want %v", tc.name, res.Effect, tc.want)
		}
	}
}
