package domain

import (
	"errors"
	"testing"

	"github.com/google/uuid"

	"github.com/identityd/identityd/events"
)

func TestEmailClaim(t *testing.T) {
	t.Parallel()
	const email = "ada@example.com"
	hash := events.EmailAggregate(email).ID
	alice := uuid.MustParse("0194f3a2-0000-7000-8000-0000000000a1")
	bob := uuid.MustParse("0194f3a2-0000-7000-8000-0000000000b0")
	claimed := func(u uuid.UUID) events.Event {
		return events.EmailClaimed{Versioned: events.V(), EmailHash: hash, UserID: u}
	}
	released := func(u uuid.UUID) events.Event {
		return events.EmailReleased{Versioned: events.V(), EmailHash: hash, UserID: u}
	}
	claim := func(u uuid.UUID) func(*EmailClaim) error { return func(c *EmailClaim) error { return c.claim(u) } }
	release := func(u uuid.UUID) func(*EmailClaim) error {
		return func(c *EmailClaim) error { c.release(u); return nil }
	}
	tests := []struct {
		name      string
		given     []events.Event
		when      []func(*EmailClaim) error
		want      []events.Event
		wantErr   error
		wantOwner uuid.UUID // uuid.Nil: unclaimed
	}{
		{name: "claim fresh", when: []func(*EmailClaim) error{claim(alice)},
			want: []events.Event{claimed(alice)}, wantOwner: alice},
		{name: "claim own", given: []events.Event{claimed(alice)}, when: []func(*EmailClaim) error{claim(alice)},
			wantOwner: alice},
		{name: "claim taken", given: []events.Event{claimed(alice)}, when: []func(*EmailClaim) error{claim(bob)},
			wantErr: ErrEmailTaken, wantOwner: alice},
		{name: "release by owner", given: []events.Event{claimed(alice)}, when: []func(*EmailClaim) error{release(alice)},
			want: []events.Event{released(alice)}},
		{name: "release by another user", given: []events.Event{claimed(alice)}, when: []func(*EmailClaim) error{release(bob)},
			wantOwner: alice},
		{name: "release unclaimed", when: []func(*EmailClaim) error{release(alice)}},
		{name: "claim after release", given: []events.Event{claimed(alice), released(alice)},
			when: []func(*EmailClaim) error{claim(bob)}, want: []events.Event{claimed(bob)}, wantOwner: bob},
		{name: "release then claim in one go", given: []events.Event{claimed(alice)},
			when: []func(*EmailClaim) error{release(alice), claim(bob)},
			want: []events.Event{released(alice), claimed(bob)}, wantOwner: bob},
		{name: "claim twice in one go", when: []func(*EmailClaim) error{claim(alice), claim(alice)},
			want: []events.Event{claimed(alice)}, wantOwner: alice},
		{name: "claim then other claims in one go", when: []func(*EmailClaim) error{claim(alice), claim(bob)},
			want: []events.Event{claimed(alice)}, wantErr: ErrEmailTaken, wantOwner: alice},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			c := loadEmailClaim(email, envelopes(7, tc.given...))
			wantVersion := uint64(0)
			if n := len(tc.given); n > 0 {
				wantVersion = 7 + 3*uint64(n-1)
			}
			if c.version != wantVersion || c.agg != events.EmailAggregate(email) {
				t.Fatalf("loaded claim: version %d agg %v; want %d %v", c.version, c.agg, wantVersion, events.EmailAggregate(email))
			}
			var err error
			for _, f := range tc.when {
				if err = f(c); err != nil {
					break
				}
			}
			if !errors.Is(err, tc.wantErr) {
				t.Errorf("error = %v, want %v", err, tc.wantErr)
			}
			wantEvents(t, c.changes, tc.want)
			if c.claimed != (tc.wantOwner != uuid.Nil) || c.owner != tc.wantOwner {
				t.Errorf("claimed %v owner %s; want owner %s", c.claimed, c.owner, tc.wantOwner)
			}
			if c.version != wantVersion {
				t.Errorf("a command changed version to %d", c.version)
			}
		})
	}
}

func TestEmailClaimHidesAddress(t *testing.T) {
	t.Parallel()
	c := loadEmailClaim("ada@example.com", nil)
	if err := c.claim(testUserID); err != nil {
		t.Fatal(err)
	}
	e, _ := c.changes[0].(events.EmailClaimed)
	if e.EmailHash != Digest("ada@example.com") || e.UserID != testUserID {
		t.Errorf("EmailHash = %q, want the SHA-256 of the normalized address", e.EmailHash)
	}
	if got := events.Subject(e); got != "identity.email."+Digest("ada@example.com")+".claimed" {
		t.Errorf("subject = %q", got)
	}
}
